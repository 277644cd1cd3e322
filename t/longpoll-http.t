#!/usr/bin/perl
# Long-poll over HTTP/1.1 keep-alive and over HTTP/2 (README "Deployment and security": HTTP/2;
# "Long polling"; issue 4).
# HTTP/1.1: several polls on one connection (an immediate answer, a waiting one woken by a
# publish, a 204 timeout, a HEAD, a 410, then more), all on the same connection by the access
# log's $connection/$connection_requests; two pipelined polls (the second waits until a publish);
# a client closing its keep-alive connection while waiting is forgotten; HTTP/1.0 gets a
# Content-Length answer and the connection closed.
# HTTP/2: `curl --http2 -k` against a TLS listener with a self-signed certificate made here by
# openssl: immediate json, waiting then woken, 204 timeout with the cursor, raw binary, HEAD,
# 410 on DELETE, two waiting streams multiplexed on one connection, and a client that goes away
# (subscriber count back to 0).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use POSIX ();
use ChannelsTest qw(id_cmp json_decode slurp);

my $curl_v = `curl -V 2>&1`;
my $have_h2 = $? == 0 && $curl_v =~ /^Features:.*\bHTTP2\b/m;
my $openssl = `openssl version 2>&1`;
my $have_openssl = $? == 0;

my $t = ChannelsTest->new(workers => 2, start => 0, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    longpoll_timeout 20s;
    log_format conn '$connection $connection_requests $server_protocol "$request_method $uri" $status';
    keepalive_requests 1000;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        access_log logs/ka.log conn;
        location ~ ^/poll/(?<ch>[^/]+)$    { longpoll_channel $ch; }
        location ~ ^/short/(?<ch>[^/]+)$   { longpoll_timeout 1s; longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% ssl;
        http2 on;
        ssl_certificate     %%PREFIX%%/cert.pem;
        ssl_certificate_key %%PREFIX%%/key.pem;
        access_log logs/h2.log conn;
        location ~ ^/poll/(?<ch>[^/]+)$    { longpoll_channel $ch; }
        location ~ ^/short/(?<ch>[^/]+)$   { longpoll_timeout 1s; longpoll_channel $ch; }
        location ~ ^/raw/(?<ch>[^/]+)$     { longpoll_channel $ch format=raw; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

my $P = $t->prefix;
SKIP: {
    skip 'no openssl', 1 unless $have_openssl;
    my $out = `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost -keyout $P/key.pem -out $P/cert.pem 2>&1`;
    ok($? == 0 && -s "$P/cert.pem" && -s "$P/key.pem", 'self-signed certificate made with openssl') or diag $out;
}
$t->start;

sub msg_ids {
    my $j = json_decode($_[0]) || {};
    return [ map { $_->{id} } @{ $j->{messages} || [] } ];
}

# ================================================================ HTTP/1.1 keep-alive
{
    my $c0 = $t->publish('ka', 'zero');
    my $m1 = $t->publish('ka', 'one');
    my $cl = $t->client;
    my @expect;    # [method uri status] per request on this connection

    my $r = $cl->request(GET => '/poll/ka', headers => { 'Last-Event-ID' => $c0 });
    is($r->{status}, 200, 'keep-alive #1: immediate answer');
    is_deeply(msg_ids($r->{body}), [ $m1 ], 'keep-alive #1: the message after the cursor');
    ok(($r->{headers}{connection} // 'keep-alive') !~ /close/i, 'keep-alive #1: the connection stays open');
    push @expect, 'GET /poll/ka 200';

    $cl->send_request(GET => '/poll/ka', headers => { 'Last-Event-ID' => $m1 });
    ok($t->wait_subscribers('ka', 1, timeout => 10), 'keep-alive #2: waits');
    my $m2 = $t->publish('ka', 'two');
    $r = $cl->read_response(timeout => 10);
    is($r->{status}, 200, 'keep-alive #2: woken');
    is_deeply(msg_ids($r->{body}), [ $m2 ], 'keep-alive #2: the new message');
    is($r->{headers}{'last-event-id'}, $m2, 'keep-alive #2: Last-Event-ID');
    push @expect, 'GET /poll/ka 200';

    $r = $cl->request(GET => '/short/ka', headers => { 'Last-Event-ID' => $m2 });
    is($r->{status}, 204, 'keep-alive #3: timeout 204');
    is($r->{headers}{'last-event-id'}, $m2, 'keep-alive #3: cursor unchanged');
    push @expect, 'GET /short/ka 204';

    $r = $cl->request(HEAD => '/poll/ka');
    is($r->{status}, 200, 'keep-alive #4: HEAD 200');
    push @expect, 'HEAD /poll/ka 200';

    $cl->send_request(GET => '/poll/ka-del', headers => { 'Last-Event-ID' => $m2 });
    ok($t->wait_subscribers('ka-del', 1, timeout => 10), 'keep-alive #5: waits on a channel about to be deleted');
    is($t->http(DELETE => '/pub/ka-del', port => 1)->{status}, 200, 'DELETE');
    $r = $cl->read_response(timeout => 10);
    is($r->{status}, 410, 'keep-alive #5: 410');
    is($r->{body}, "channel deleted\n", 'keep-alive #5: body');
    push @expect, 'GET /poll/ka-del 410';

    my $m3 = $t->publish('ka', 'three');
    $r = $cl->request(GET => '/poll/ka', headers => { 'Last-Event-ID' => $m2 });
    is_deeply(msg_ids($r->{body}), [ $m3 ], 'keep-alive #6: after a 410 the connection still serves polls');
    push @expect, 'GET /poll/ka 200';

    # pipelined: the first is answered at once, the second waits for a publish
    my $req = "GET /poll/ka HTTP/1.1\r\nHost: x\r\nLast-Event-ID: $m2\r\n\r\n"
            . "GET /poll/ka HTTP/1.1\r\nHost: x\r\nLast-Event-ID: $m3\r\n\r\n";
    ok($cl->send_raw($req), 'two pipelined polls sent in one write');
    $r = $cl->read_response(timeout => 10);
    is_deeply(msg_ids($r->{body}), [ $m3 ], 'pipelined #1: answered at once');
    push @expect, 'GET /poll/ka 200';
    ok($t->wait_subscribers('ka', 1, timeout => 10), 'pipelined #2: waits');
    my $m4 = $t->publish('ka', 'four');
    $r = $cl->read_response(timeout => 10);
    is($r->{status}, 200, 'pipelined #2: woken');
    is_deeply(msg_ids($r->{body}), [ $m4 ], 'pipelined #2: the new message');
    push @expect, 'GET /poll/ka 200';
    ok(!$cl->closed, 'the connection is still open');

    # closing the keep-alive connection while waiting
    my $mark = $t->log_mark;
    $cl->send_request(GET => '/poll/ka', headers => { 'Last-Event-ID' => $m4 });
    ok($t->wait_subscribers('ka', 1, timeout => 10), 'one more poll waits on the same connection');
    $cl->close;
    ok($t->wait_subscribers('ka', 0, timeout => 10), 'the client closes the connection: no subscriber left');
    ok($t->wait_for_log(qr/\[info\].*client prematurely closed connection/, since => $mark),
       '"client prematurely closed connection" at info');
    push @expect, 'GET /poll/ka 499';

    # the access log: one connection, requests 1..N in order
    my @lines;
    $t->wait_for(sub { @lines = grep { /"\S+ \/(?:poll|short)\/ka/ } split /\n/, slurp("$P/logs/ka.log"); @lines >= @expect });
    my %conns = map { (split / /)[0] => 1 } @lines;
    is(scalar keys %conns, 1, 'all of them on one connection ($connection)');
    is_deeply([ map { (split / /)[1] } @lines ], [ 1 .. @expect ], '$connection_requests 1..' . scalar @expect);
    is_deeply([ map { /"(\S+ \S+)" (\d+)/ ? "$1 $2" : $_ } @lines ], \@expect, 'methods, paths and statuses in order');

    # HTTP/1.0: Content-Length, then the connection closes
    $r = $t->http(GET => '/poll/ka', version => '1.0', headers => { 'Last-Event-ID' => $m3 });
    is($r->{status}, 200, 'HTTP/1.0: 200');
    is($r->{headers}{'content-length'}, length $r->{body}, 'HTTP/1.0: Content-Length');
    is_deeply(msg_ids($r->{body}), [ $m4 ], 'HTTP/1.0: the message');
}

# ================================================================ HTTP/2
SKIP: {
    skip 'curl without HTTP/2 or no openssl', 1 unless $have_h2 && $have_openssl;
    my $base = 'https://127.0.0.1:' . $t->port(2);
    my $n = 0;

    # Runs curl; returns its pid (background) or waits. Each URL: [url, out file, extra args].
    my $curl = sub {
        my ($bg, @jobs) = @_;
        $n++;
        my @cmd = ('curl', '--http2', '-k', '-sS', '--max-time', '30');
        push @cmd, '-Z' if @jobs > 1;    # waits for the first connection, then multiplexes
        for my $j (@jobs) {
            push @cmd, '-D', "$j->[1].head", '-o', $j->[1], '-w', '%{http_version} %{http_code}\n', @{ $j->[2] || [] }, $j->[0];
        }
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>', "$P/curl$n.out";
            open STDERR, '>', "$P/curl$n.err";
            exec @cmd or POSIX::_exit(127);
        }
        return ($pid, "$P/curl$n.out") if $bg eq 'bg';
        waitpid $pid, 0;
        return ($?, slurp("$P/curl$n.out") . slurp("$P/curl$n.err"));
    };
    my $wait_pid = sub {
        my $pid = shift;
        my $st;
        my $done = $t->wait_for(sub { my $r = waitpid($pid, POSIX::WNOHANG()); $st = $?; $r == $pid }, timeout => 15);
        if (!$done) { kill 'KILL', $pid; waitpid $pid, 0; return -1 }
        return $st;
    };
    my $head = sub {
        my %h;
        for (split /\r?\n/, slurp("$_[0].head")) { $h{ lc $1 } = $2 if /^([^:\s]+):\s*(.*?)\s*$/ }
        return \%h;
    };

    # immediate
    my $c0 = $t->publish('h2', 'zero');
    my $m1 = $t->publish('h2', "one \xc3\xa9");
    my ($rc, $out) = $curl->('fg', [ "$base/poll/h2", "$P/h2a", [ '-H', "Last-Event-ID: $c0" ] ]);
    is($rc, 0, 'h2 immediate: curl exit 0') or diag $out;
    like($out, qr/^2 200$/m, 'h2 immediate: HTTP/2, 200');
    my $h = $head->("$P/h2a");
    is($h->{'last-event-id'}, $m1, 'h2 immediate: last-event-id');
    is($h->{'cache-control'}, 'no-cache', 'h2 immediate: cache-control');
    like($h->{'content-type'} // '', qr{^application/json}, 'h2 immediate: content-type');
    is_deeply(msg_ids(slurp("$P/h2a")), [ $m1 ], 'h2 immediate: the message');
    is((json_decode(slurp("$P/h2a")) || {})->{messages}[0]{data}, "one \x{e9}", 'h2 immediate: its data');

    # waiting, then woken
    my ($pid) = $curl->('bg', [ "$base/poll/h2", "$P/h2b", [ '-H', "Last-Event-ID: $m1" ] ]);
    ok($t->wait_subscribers('h2', 1, timeout => 10), 'h2 waiting: subscribed');
    my $m2 = $t->publish('h2', 'two');
    is($wait_pid->($pid), 0, 'h2 waiting: curl finished after the publish');
    is_deeply(msg_ids(slurp("$P/h2b")), [ $m2 ], 'h2 waiting: woken with the message');
    is($head->("$P/h2b")->{'last-event-id'}, $m2, 'h2 waiting: last-event-id');

    # timeout
    ($rc, $out) = $curl->('fg', [ "$base/short/h2", "$P/h2c", [ '-H', "Last-Event-ID: $m2" ] ]);
    like($out, qr/^2 204$/m, 'h2 timeout: 204');
    is($head->("$P/h2c")->{'last-event-id'}, $m2, 'h2 timeout: the cursor unchanged');
    is(slurp("$P/h2c"), '', 'h2 timeout: no body');

    # raw binary
    my $bin = join '', map { chr } 0 .. 255, reverse 0 .. 255;
    my $b1 = $t->publish('h2raw', $bin, headers => { 'Content-Type' => 'application/octet-stream', 'Event-Type' => 'bin' });
    ($rc, $out) = $curl->('fg', [ "$base/raw/h2raw", "$P/h2d", [ '-H', "Last-Event-ID: $c0" ] ]);
    like($out, qr/^2 200$/m, 'h2 raw: 200');
    ok(slurp("$P/h2d") eq $bin, 'h2 raw: the exact bytes');
    $h = $head->("$P/h2d");
    is($h->{'content-type'}, 'application/octet-stream', 'h2 raw: content-type');
    is($h->{'event-type'}, 'bin', 'h2 raw: event-type');
    is($h->{'last-event-id'}, $b1, 'h2 raw: last-event-id');

    # HEAD
    ($rc, $out) = $curl->('fg', [ "$base/poll/h2", "$P/h2e", [ '-I' ] ]);
    like($out, qr/^2 200$/m, 'h2 HEAD: 200');
    is($head->("$P/h2e")->{'cache-control'}, 'no-cache', 'h2 HEAD: cache-control');
    ok($t->wait_subscribers('h2', 0, timeout => 10), 'h2 HEAD: no subscriber left');

    # 410 on DELETE
    my $d0 = $t->publish('h2del', 'x');
    ($pid) = $curl->('bg', [ "$base/poll/h2del", "$P/h2f", [ '-H', "Last-Event-ID: $d0" ] ]);
    ok($t->wait_subscribers('h2del', 1, timeout => 10), 'h2 delete: waiting');
    is($t->http(DELETE => '/pub/h2del', port => 1)->{status}, 200, 'h2 delete: DELETE');
    $wait_pid->($pid);
    like(slurp("$P/curl$n.out"), qr/^2 410$/m, 'h2 delete: 410');
    is(slurp("$P/h2f"), "channel deleted\n", 'h2 delete: body');

    # two waiting streams multiplexed on one connection
    my $x0 = $t->publish('h2x', 'x');
    my $y0 = $t->publish('h2y', 'y');
    my $mark = -s "$P/logs/h2.log" // 0;
    my ($pid2, $outf) = $curl->('bg', [ "$base/poll/h2x", "$P/h2g", [ '-H', "Last-Event-ID: $y0" ] ],
                                      [ "$base/poll/h2y", "$P/h2h", [ '-H', "Last-Event-ID: $y0" ] ]);
    ok($t->wait_subscribers('h2x', 1, timeout => 10) && $t->wait_subscribers('h2y', 1, timeout => 10), 'h2 multiplexed: both streams waiting');
    my $x1 = $t->publish('h2x', 'x1');
    ok($t->wait_for(sub { -s "$P/h2g" }, timeout => 10), 'h2 multiplexed: the first stream is answered');
    is($t->subscribers('h2y'), 1, 'h2 multiplexed: the other stream still waits');
    my $y1 = $t->publish('h2y', 'y1');
    is($wait_pid->($pid2), 0, 'h2 multiplexed: curl finished');
    is_deeply(msg_ids(slurp("$P/h2g")), [ $x1 ], 'h2 multiplexed: stream 1 got its message');
    is_deeply(msg_ids(slurp("$P/h2h")), [ $y1 ], 'h2 multiplexed: stream 2 got its message');
    my @log;
    $t->wait_for(sub { @log = grep { m{/poll/h2[xy]"} } split /\n/, substr(slurp("$P/logs/h2.log"), $mark); @log >= 2 });
    my %conn = map { (split / /)[0] => 1 } @log;
    is(scalar keys %conn, 1, 'h2 multiplexed: one connection in the access log');
    like($log[0] // '', qr/ HTTP\/2\.0 /, 'h2 multiplexed: logged as HTTP/2.0');

    # a client that goes away while waiting
    my $z0 = $t->publish('h2gone', 'x');
    $mark = $t->log_mark;
    ($pid) = $curl->('bg', [ "$base/poll/h2gone", "$P/h2i", [ '-H', "Last-Event-ID: $z0" ] ]);
    ok($t->wait_subscribers('h2gone', 1, timeout => 10), 'h2 abort: waiting');
    kill 'KILL', $pid;
    waitpid $pid, 0;
    ok($t->wait_subscribers('h2gone', 0, timeout => 10), 'h2 abort: curl killed, no subscriber left');
    my $pr = $t->http(POST => '/pub/h2gone', port => 1, body => 'late');
    is($pr->{json} && $pr->{json}{subscribers}, 0, 'h2 abort: a publish finds no subscriber');
    unlike($t->log_since($mark), qr/\[(?:error|crit|alert)\]/, 'h2 abort: nothing above info logged');
}

done_testing;
