#!/usr/bin/perl
# SSE over TLS + HTTP/2 (README "Deployment and security": HTTP/2; "SSE"; issue 3), read with `curl
# --http2 -k -N` against a `listen ... ssl` + `http2 on` server with a self-signed certificate made
# here with openssl: the header, events (multi-line, UTF-8, typed), a client that goes away
# (subscriber count back to 0), DELETE ending one stream (END_STREAM) while another stream
# multiplexed on the same connection goes on, one stream of a connection reset (RST_STREAM) while
# the other goes on, a slow HTTP/2 reader cut off after 1 MiB, and a reload ending the streams
# cleanly.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use POSIX ();
use ChannelsTest qw(id_cmp json_decode slurp);

my $curl_v = `curl -V 2>&1`;
plan skip_all => 'curl not found' unless $? == 0;
plan skip_all => "this curl has no HTTP/2 support:\n$curl_v" unless $curl_v =~ /^Features:.*\bHTTP2\b/m;

my $t = ChannelsTest->new(workers => 2, start => 0, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    log_format h2 '$connection $server_protocol "$request_uri" $status';
    server {
        listen 127.0.0.1:%%PORT_0%% ssl;
        http2 on;
        ssl_certificate     %%PREFIX%%/cert.pem;
        ssl_certificate_key %%PREFIX%%/key.pem;
        access_log logs/h2.log h2;
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
        location = /m                      { sse_channel $arg_ch; }
    }
    server {
        # a small socket send buffer: what a slow client does not take stays in nginx
        listen 127.0.0.1:%%PORT_2%% ssl sndbuf=32k;
        http2 on;
        ssl_certificate     %%PREFIX%%/cert.pem;
        ssl_certificate_key %%PREFIX%%/key.pem;
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_body_buffer_size 64k;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

my $P = $t->prefix;
my $ssl = `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost -keyout $P/key.pem -out $P/cert.pem 2>&1`;
ok($? == 0 && -s "$P/cert.pem" && -s "$P/key.pem", 'self-signed certificate made with openssl') or diag $ssl;
$t->start;

my $base = 'https://127.0.0.1:' . $t->port(0);

sub zone_subscribers { ($t->zone_stats('/stats', 'events', port => 1) || {})->{subscribers} // -1 }

# Starts curl in the background; returns its pid. @pairs: [url, output file] ...
my $n = 0;
sub curl {
    my (@pairs) = @_;
    $n++;
    my @cmd = ('curl', '--http2', '-k', '-N', '-sS', '--max-time', '60');
    push @cmd, '-Z' if @pairs > 1;    # waits for the first connection, then multiplexes
    for my $p (@pairs) {
        push @cmd, '-D', "$p->[1].head", '-o', $p->[1], $p->[0];
    }
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$P/curl$n.out";
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    return $pid;
}

# Waits for the process to exit; returns its exit code or undef on timeout.
sub wait_exit {
    my ($pid, $timeout) = @_;
    my $code;
    $t->wait_for(sub { my $r = waitpid($pid, POSIX::WNOHANG()); $code = $? >> 8 if $r == $pid; $r == $pid }, timeout => $timeout);
    return $code;
}

# The events in an SSE text, parsed as the WHATWG parser does.
sub events {
    my $text = shift;
    my (@ev, %cur);
    for my $line (split /\r\n|\r|\n/, $text, -1) {
        if ($line eq '') {
            push @ev, {%cur} if exists $cur{data} || exists $cur{event} || exists $cur{id};
            %cur = ();
            next;
        }
        next if $line =~ /^:/;
        my ($k, $v) = $line =~ /^([^:]*):? ?(.*)$/s;
        if ($k eq 'data') { $cur{data} = exists $cur{data} ? "$cur{data}\n$v" : $v }
        else { $cur{$k} = $v }
    }
    return @ev;
}

sub wait_events {
    my ($file, $count) = @_;
    my @ev;
    $t->wait_for(sub { @ev = events(slurp($file)); @ev >= $count }, timeout => 10);
    return @ev;
}

# ---- a stream over HTTP/2
{
    my $out = "$P/s1.txt";
    my $pid = curl([ "$base/events/h2a", $out ]);
    ok($t->wait_for(sub { $t->subscribers('h2a') == 1 }, timeout => 10), 'curl --http2 subscribed')
        or diag slurp("$P/curl$n.out");
    ok($t->wait_for(sub { slurp("$out.head") =~ /\r?\n\r?\n/ }, timeout => 10),
       'the response header arrived before anything was published');
    my $head = slurp("$out.head");
    like($head, qr{^HTTP/2 200\b}m, 'HTTP/2 200');
    like($head, qr{^content-type: text/event-stream; charset=utf-8\r?$}mi, 'Content-Type');
    like($head, qr{^cache-control: no-cache\r?$}mi, 'Cache-Control');
    like($head, qr{^x-accel-buffering: no\r?$}mi, 'X-Accel-Buffering');
    my @want = (
        [ $t->publish('h2a', 'hello h2'), undef, 'hello h2' ],
        [ $t->publish('h2a', "two\r\nlines\rand\nmore"), undef, "two\nlines\nand\nmore" ],
        [ $t->publish('h2a', "unicode \xe2\x9c\x93 \xf0\x9f\x98\x80"), undef, "unicode \xe2\x9c\x93 \xf0\x9f\x98\x80" ],
        [ $t->publish('h2a', '42', headers => { 'Event-Type' => 'answer' }), 'answer', '42' ],
        [ $t->publish('h2a', 'B' x 50000), undef, 'B' x 50000 ],
    );
    my @ev = wait_events($out, scalar @want);
    is(scalar @ev, scalar @want, 'all events arrived over HTTP/2');
    for my $i (0 .. $#want) {
        my ($id, $type, $data) = @{ $want[$i] };
        is($ev[$i]{id}, $id, "event $i: id");
        is($ev[$i]{event}, $type, "event $i: type");
        is($ev[$i]{data}, $data, "event $i: data");
    }
    # The client goes away.
    kill 'TERM', $pid;
    waitpid $pid, 0;
    ok($t->wait_for(sub { $t->subscribers('h2a') == 0 && zone_subscribers() == 0 }, timeout => 10),
       'curl killed: channel info and stats subscribers back to 0');
}

# ---- two streams on one HTTP/2 connection; DELETE ends one, the other goes on
{
    my ($o1, $o2) = ("$P/m1.txt", "$P/m2.txt");
    my $pid = curl([ "$base/events/h2del", $o1 ], [ "$base/m?ch=h2keep,h2other", $o2 ]);
    ok($t->wait_for(sub { $t->subscribers('h2del') == 1 && $t->subscribers('h2keep') == 1 }, timeout => 10),
       'two parallel streams subscribed') or diag slurp("$P/curl$n.out");
    $t->publish('h2del', 'd1');
    $t->publish('h2keep', 'k1');
    is($t->http(DELETE => '/pub/h2del', port => 1)->{status}, 200, 'DELETE h2del');
    my @ev1 = wait_events($o1, 2);
    is(join(' ', map { ($_->{event} // '-') . '/' . $_->{data} } @ev1), '-/d1 channel-deleted/{"channel":"h2del"}',
       'stream 1: d1, then channel-deleted');
    $t->publish('h2other', 'o1');
    my @ev2 = wait_events($o2, 2);
    is(join(' ', map { ($_->{event} // '-') . '/' . $_->{data} } @ev2), 'h2keep/k1 h2other/o1',
       'stream 2 on the same connection goes on');
    ok($t->wait_for(sub { $t->subscribers('h2keep') == 1 && zone_subscribers() == 1 }, timeout => 10),
       'after the DELETE: one subscriber left (stream 2)');
    kill 'TERM', $pid;
    waitpid $pid, 0;
    ok($t->wait_for(sub { zone_subscribers() == 0 }, timeout => 10), 'curl killed: 0 subscribers');
    my @log = grep { m{"/events/h2del"|"/m\?ch=h2keep,h2other"} } split /\n/, slurp("$P/logs/h2.log");
    is(scalar @log, 2, 'both streams are in the access log') or diag explain \@log;
    my %conn = map { (split ' ', $_)[0] => 1 } @log;
    is(scalar keys %conn, 1, 'logged on one connection (multiplexed)');
    is(scalar(grep { / HTTP\/2\.0 / } @log), 2, 'as HTTP/2.0');
}

# ---- one stream of a connection reset by the client (RST_STREAM), the other goes on
{
    $n++;
    my ($o1, $o2) = ("$P/r1.txt", "$P/r2.txt");
    # Two transfers multiplexed on one connection; the second gives up after 2s. curl then
    # answers the next DATA frame on that stream with RST_STREAM.
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', "$P/curl$n.out"; open STDERR, '>&', \*STDOUT;
        exec 'curl', '-sS', '-Z', '--http2', '-k', '-N', '--max-time', '60', '-o', $o1, "$base/events/h2stay",
             '--next', '--http2', '-k', '-N', '--max-time', '2', '-o', $o2, "$base/events/h2reset"
            or POSIX::_exit(127);
    }
    ok($t->wait_for(sub { $t->subscribers('h2stay') == 1 && $t->subscribers('h2reset') == 1 }, timeout => 10),
       'two multiplexed streams subscribed');
    my $gave_up = $t->wait_for(sub { slurp("$P/curl$n.out") =~ /timed out/ }, timeout => 10);
    ok($gave_up, 'curl gave up on the second transfer');
    my $mark = $t->log_mark;
    $t->publish('h2reset', 'provokes RST_STREAM');
    ok($t->wait_for(sub { $t->subscribers('h2reset') == 0 }, timeout => 10),
       'after RST_STREAM the reset stream is no subscriber any more');
    like($t->log_since($mark), qr/\[info\].*(?:terminated stream|prematurely closed)/, 'an info line for the reset stream');
    is($t->subscribers('h2stay'), 1, 'the other stream of the connection is still subscribed');
    my $id = $t->publish('h2stay', 'still flowing');
    my @ev = wait_events($o1, 1);
    is($ev[0] && $ev[0]{id}, $id, 'and still receives');
    kill 'TERM', $pid;
    waitpid $pid, 0;
    ok($t->wait_for(sub { zone_subscribers() == 0 }, timeout => 10), 'curl killed: 0 subscribers');
}

# ---- DELETE of a single-channel stream: curl sees the end of the stream and exits 0
{
    my $out = "$P/end.txt";
    my $pid = curl([ "$base/events/h2end", $out ]);
    ok($t->wait_for(sub { $t->subscribers('h2end') == 1 }, timeout => 10), 'subscribed');
    is($t->http(DELETE => '/pub/h2end', port => 1)->{status}, 200, 'DELETE');
    my $code = wait_exit($pid, 10);
    is($code, 0, 'curl exits 0 by itself: the stream ended (END_STREAM)') or diag slurp("$P/curl$n.out");
    kill 'KILL', $pid unless defined $code;
    my @ev = events(slurp($out));
    is($ev[-1]{event}, 'channel-deleted', 'last event: channel-deleted');
}

# ---- a slow HTTP/2 reader (curl --limit-rate) is cut off after 1 MiB unsent; a fast one is not
{
    my $sbase = 'https://127.0.0.1:' . $t->port(2);
    my $z0 = $t->zone_stats('/stats', 'events', port => 1);
    $n++;
    my $slow_n = $n;
    my $slow = fork // die "fork: $!";
    if (!$slow) {
        open STDOUT, '>', "$P/curl$n.out"; open STDERR, '>&', \*STDOUT;
        exec 'curl', '--http2', '-k', '-N', '-sS', '--max-time', '60', '--limit-rate', '2k', '-o', "$P/slow.txt",
             "$sbase/events/h2slow" or POSIX::_exit(127);
    }
    my $fast = curl([ "$sbase/events/h2slow", "$P/fast.txt" ]);
    ok($t->wait_for(sub { $t->subscribers('h2slow') == 2 }, timeout => 10), 'a slow and a fast HTTP/2 reader subscribed');
    my $c = $t->client(port => 1);
    my $last;
    for my $i (1 .. 60) {    # 60 x 24 KiB = 1.4 MiB
        my $r = $c->request(POST => '/pub/h2slow', body => sprintf('%02d', $i) . ('s' x (24 * 1024 - 2)));
        $last = $r->{json}{id} if $r->{status} == 201;
    }
    $c->close;
    ok($t->wait_for(sub { $t->subscribers('h2slow') == 1 }, timeout => 10), 'the slow reader was cut off');
    my $z1 = $t->zone_stats('/stats', 'events', port => 1);
    is($z1->{dropped_slow} - $z0->{dropped_slow}, 1, 'stats: dropped_slow + 1');
    my @ev = wait_events("$P/fast.txt", 60);
    is(scalar @ev, 60, 'the fast reader on the same listener got all 60');
    is($ev[-1]{id}, $last, 'up to the last one');
    kill 'TERM', $fast, $slow;
    waitpid $_, 0 for $fast, $slow;
    ok($t->wait_for(sub { zone_subscribers() == 0 }, timeout => 10), '0 subscribers');
}

# ---- reload: HTTP/2 streams end cleanly, the client can resume
{
    my $out = "$P/reload.txt";
    my $pid = curl([ "$base/events/h2rl", $out ]);
    ok($t->wait_for(sub { $t->subscribers('h2rl') == 1 }, timeout => 10), 'subscribed');
    my $id = $t->publish('h2rl', 'before reload');
    wait_events($out, 1);
    ok($t->reload(timeout => 15), 'reload: old workers exited');
    my $code = wait_exit($pid, 10);
    is($code, 0, 'curl exits 0: the stream ended cleanly on reload') or diag slurp("$P/curl$n.out");
    kill 'KILL', $pid unless defined $code;
    my $id2 = $t->publish('h2rl', 'after reload');
    my $out2 = "$P/reload2.txt";
    # resume with the last id
    my $pid2 = do {
        $n++;
        my $p = fork // die;
        if (!$p) {
            open STDOUT, '>', "$P/curl$n.out"; open STDERR, '>&', \*STDOUT;
            exec 'curl', '--http2', '-k', '-N', '-sS', '--max-time', '60', '-H', "Last-Event-ID: $id", '-o', $out2,
                 "$base/events/h2rl" or POSIX::_exit(127);
        }
        $p;
    };
    my @ev = wait_events($out2, 1);
    is(join(',', map { $_->{data} } @ev), 'after reload', 'resumed over HTTP/2 with Last-Event-ID: the message published meanwhile');
    kill 'TERM', $pid2;
    waitpid $pid2, 0;
    ok($t->wait_for(sub { zone_subscribers() == 0 }, timeout => 10), '0 subscribers at the end');
}

done_testing;
