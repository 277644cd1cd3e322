#!/usr/bin/perl
# Parked long-poll requests (issue 13, src/ngx_http_channels_longpoll_park.h): a waiting
# request gives up its nginx request and gets it back to answer. Everything a client, a log
# reader or stub_status sees must be what an unparked waiter gives.
#
# Two nginx with the same configuration, one worker each: A parks every waiter at once
# (CHANNELS_PARK_AFTER=0), B never parks (CHANNELS_PARK_AFTER=10^13 ms). The test-only
# variable also makes each park and re-creation log an info line, which A's cases await
# (and B's log must never show). The same steps run on both and the answers are compared as
# text (status, every header but Date in order, body; message ids and $request_id replaced
# by placeholders), as are the access log lines:
#   json (with add_header: variables set before parking, regex captures, $uri, $args, a
#   request header, an Origin echo), raw with Event-Type, multi-channel, a rewritten URI,
#   410 on DELETE, 204 at longpoll_timeout, a 6 KB header line, pipelined requests (bytes
#   behind the request, and bytes sent while parked), garbage sent while parked (the 400
#   after the answer), keep-alive (the next request on the connection), client close and
#   half-close while parked (499 in the access log, "client prematurely closed connection"),
#   stub_status counters, and reload (204 at once).
# A also: $request_time covers the wait; $request_id evaluated before parking is the one
# logged; TLS (HTTP/1.1 with curl, keep-alive: one TLS connection); 2,000 park/close cycles
# give worker memory back; a client flooding a parked connection costs the worker nothing
# (the bytes stay in the kernel) and is answered.
# C (CHANNELS_PARK_AFTER=1000, the default delay): first polls and polls from an old cursor
# park at once; a poll from a fresh cursor parks after a second, and one answered sooner
# never parks.
# M (the default delay, 5,000 waiters): worker PSS per parked waiter (smaps_rollup) at most
# 4.5 KB (an unparked one costs about 10 KB).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use IO::Select;
use POSIX ();
use Socket qw(SHUT_WR);
use ChannelsTest qw(id_cmp json_decode);
use Jwt qw(openssl_token);

my $PSS_PER_WAITER_KB = 4.5;   # measured about 1.5 KB; an unparked waiter is about 10 KB
my $CYCLE_PSS_KB = 1024;       # 2,000 park/close cycles: back within this of the baseline
my $FLOOD_PSS_KB = 512;        # 1 MB sent to a parked connection: worker growth at most this

my $CONF = <<'CONF';
    channel_zone zone=events:8m history=100 ttl=1h;
    longpoll_timeout 3s;
    large_client_header_buffers 4 8k;
    log_format park '$connection $connection_requests $pipe $status $body_bytes_sent $request_length '
                    '"$request" "$uri" "$args" "$http_user_agent" "$seen" $request_id $request_time';
    server {
        listen 127.0.0.1:%%PORT_0%%;
        server_name park.test;
        access_log logs/park.log park;
        location ~ ^/poll/(?<ch>[\w.-]+)$ {
            set $seen "$ch:$request_id";
            add_header X-Seen "$seen $1 $uri $args $http_x_probe $cookie_k" always;
            add_header Access-Control-Allow-Origin $http_origin always;
            add_header Vary Origin always;
            longpoll_channel $ch;
        }
        location ~ ^/raw/(?<ch>[\w.-]+)$  { add_header X-Raw "$ch" always; longpoll_channel $ch format=raw; }
        location = /m                     { longpoll_channel $arg_ch; }
        location /rw/                     { rewrite ^/rw/(.*)$ /poll/$1 last; }
        location = /status                { stub_status; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$  { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% ssl;
        ssl_certificate     %%PREFIX%%/cert.pem;
        ssl_certificate_key %%PREFIX%%/key.pem;
        access_log logs/tls.log park;
        location ~ ^/poll/(?<ch>[\w.-]+)$ { set $seen "$ch"; longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_3%%;
        channel_auth jwt;
        channel_jwt_key %%PREFIX%%/ec256.pub;
        location ~ ^/poll/(?<ch>[\w.-]+)$ { longpoll_channel $ch; }
    }
CONF

my $PARKED = qr/long-poll request parked/;
my $RECREATED = qr/parked long-poll request re-created/;

sub instance {
    my ($name, $after, %o) = @_;
    local $ENV{CHANNELS_PARK_AFTER} = $after;
    my $t = ChannelsTest->new(workers => 1, start => 0, main_conf => 'env CHANNELS_PARK_AFTER;',
                              conf => $o{conf} // $CONF, worker_connections => $o{connections} // 4096);
    my $p = $t->prefix;
    my $out = `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost -keyout $p/key.pem -out $p/cert.pem 2>&1`
            . `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $p/ec256.pem 2>&1`
            . `openssl pkey -in $p/ec256.pem -pubout -out $p/ec256.pub 2>&1`;
    die "openssl: $out" unless $? == 0 && -s "$p/ec256.pub";
    chmod 0644, "$p/ec256.pub";
    $t->start;
    $t->{name} = $name;
    $t->{parks} = $name eq 'A';
    return $t;
}

my $A = instance('A', 0);
my $B = instance('B', 10_000_000_000_000);

sub slurp { my $f = shift; open my $fh, '<:raw', $f or return ''; local $/; my $c = <$fh>; $c // '' }
sub count_log { my ($t, $re, $mark) = @_; my @n = $t->log_since($mark // 0) =~ /$re/g; scalar @n }
sub access_lines { my ($t, $file) = @_; [ split /\n/, slurp($t->prefix . '/logs/' . ($file // 'park.log')) ] }

sub norm {
    my $s = shift // '';
    $s =~ s/\b\d{10,20}-\d{1,10}\b/ID/g;    # message ids (time-based: differ between A and B)
    $s =~ s/\b[0-9a-f]{32}\b/RID/g;          # $request_id
    return $s;
}

# A response as text: status, the headers in order (Date left out), the body.
sub canon {
    my $r = shift;
    return "no response: " . ($r->{error} // '?') unless $r->{status};
    my @h = map { "$_->[0]: $_->[1]" } grep { lc $_->[0] ne 'date' } @{ $r->{header_list} };
    return norm(join "\n", "status $r->{status}", @h, '', $r->{body});
}

# An access log line without what differs between two servers or runs.
sub canon_log {
    my $l = norm(shift);
    $l =~ s/^\d+ /C /;              # $connection
    $l =~ s/ [\d.]+$/ T/;           # $request_time
    return $l;
}

# Waits until the instance holds n waiters of the channel: counted by the store, and on A
# also parked (the info line, after the mark).
sub waiting {
    my ($t, $ch, $n, $mark, $parks) = @_;
    my $ok = $t->wait_for(sub { $t->subscribers($ch) == $n }, timeout => 10);
    if ($t->{parks}) {
        $parks //= $n;
        $ok &&= $t->wait_for(sub { count_log($t, $PARKED, $mark) >= $parks }, timeout => 10);
    }
    return $ok;
}

sub publish { my ($t, $ch, $data, %h) = @_; $t->publish($ch, $data, headers => \%h) }

my %probe = ('User-Agent' => 'park-test/1', 'X-Probe' => 'probe value', Origin => 'https://app.example',
             Cookie => 'a=1; k=cookie-k; z=2');

# ---- the cases: each returns its answers (and notes), run on A and B alike

# A waiter woken by a message, then the next request on the same connection.
sub case_message {
    my ($t, $path, $ch, %o) = @_;
    my $c0 = publish($t, $ch, 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    my $q = $path =~ /\?/ ? '&' : '?';
    $cl->send_request(GET => "$path${q}last_event_id=$c0", headers => { %probe, %{ $o{headers} || {} } });
    ok(waiting($t, $ch, 1, $mark), "$t->{name} $path: waiting") or return ();
    publish($t, $ch, $o{data} // 'one', %{ $o{pub_headers} || {} });
    my $r1 = $cl->read_response(timeout => 10);
    my $r2 = $cl->request(GET => "$path${q}last_event_id=$c0", headers => \%probe);   # keep-alive: at once
    $cl->close;
    return (canon($r1), canon($r2));
}

# HTTP/1.0: answered with Content-Length, then the connection closes.
sub case_http10 {
    my ($t) = @_;
    my $c0 = publish($t, 'h10', 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    $cl->send_request(GET => '/poll/h10', version => '1.0', headers => { %probe, 'Last-Event-ID' => $c0 });
    ok(waiting($t, 'h10', 1, $mark), "$t->{name} HTTP/1.0: waiting") or return ();
    publish($t, 'h10', 'one');
    my $r = $cl->read_response(timeout => 10);
    my $closed = defined $cl->fill(Time::HiRes::time() + 5) && $cl->closed;
    $cl->close;
    return (canon($r), $closed ? 'closed' : 'still open');
}

sub case_delete {
    my ($t) = @_;
    my $c0 = publish($t, 'del', 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    $cl->send_request(GET => '/poll/del', headers => { %probe, 'Last-Event-ID' => $c0 });
    ok(waiting($t, 'del', 1, $mark), "$t->{name} delete: waiting") or return ();
    is($t->http(DELETE => '/pub/del', port => 1)->{status}, 200, "$t->{name}: DELETE");
    my $r = $cl->read_response(timeout => 10);
    $cl->close;
    return (canon($r));
}

sub case_timeout {
    my ($t) = @_;
    my $c0 = publish($t, 'quiet', 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    my $t0 = Time::HiRes::time();
    $cl->send_request(GET => '/poll/quiet', headers => { %probe, 'Last-Event-ID' => $c0 });
    ok(waiting($t, 'quiet', 1, $mark), "$t->{name} timeout: waiting") or return ();
    my $r = $cl->read_response(timeout => 10);
    my $dt = Time::HiRes::time() - $t0;
    ok($dt > 2.5 && $dt < 6, sprintf('%s: 204 at longpoll_timeout (3 s): %.2f s', $t->{name}, $dt));
    my $r2 = $cl->request(GET => '/poll/quiet', headers => { %probe, 'Last-Event-ID' => '1-0' });
    $cl->close;
    return (canon($r), canon($r2));
}

# Two requests in one write: the second waits in the header buffer behind the parked one.
sub case_pipelined {
    my ($t) = @_;
    my $c0 = publish($t, 'pipe', 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    my $req = "GET /poll/pipe?n=1 HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: $c0\r\n\r\n"
            . "GET /poll/pipe?n=2 HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: $c0\r\nX-Probe: second\r\n\r\n";
    $cl->send_raw($req);
    ok(waiting($t, 'pipe', 1, $mark), "$t->{name} pipelined: the first waits") or return ();
    publish($t, 'pipe', 'one');
    my $r1 = $cl->read_response(timeout => 10);
    my $r2 = $cl->read_response(timeout => 10);
    $cl->close;
    return (canon($r1), canon($r2));
}

# A request sent while the previous one is parked: left in the kernel, served after.
sub case_pipelined_late {
    my ($t) = @_;
    my $c0 = publish($t, 'late', 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    $cl->send_raw("GET /poll/late?n=1 HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: $c0\r\n\r\n");
    ok(waiting($t, 'late', 1, $mark), "$t->{name} late pipelined: waiting") or return ();
    $cl->send_raw("GET /poll/late?n=2 HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: $c0\r\n\r\n"
                . "GARBAGE\r\n\r\n");
    Time::HiRes::sleep(0.2);   # (the bytes reach the server; nothing must happen until the publish)
    ok(!IO::Select->new($cl->socket)->can_read(0), "$t->{name}: bytes sent while waiting get no answer yet");
    is($t->subscribers('late'), 1, "$t->{name}: ... and the waiter is still there");
    publish($t, 'late', 'one');
    my @r = map { $cl->read_response(timeout => 10) } 1 .. 3;
    $cl->close;
    return map { canon($_) } @r;
}

sub case_big_header {
    my ($t) = @_;
    return case_message($t, '/poll/big', 'big', headers => { 'X-Big' => 'b' x 6000 });
}

# The client goes away while waiting: FIN, then a half-close (shutdown(SHUT_WR)).
sub case_close {
    my ($t, $how) = @_;
    my $ch = "close$how";
    my $c0 = publish($t, $ch, 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    $cl->send_request(GET => "/poll/$ch", headers => { %probe, 'Last-Event-ID' => $c0 });
    ok(waiting($t, $ch, 1, $mark), "$t->{name} $how: waiting") or return ();
    if ($how eq 'half') {
        shutdown($cl->socket, SHUT_WR);
    } else {
        $cl->close;
    }
    ok($t->wait_for(sub { $t->subscribers($ch) == 0 }, timeout => 10), "$t->{name} $how: the waiter is forgotten");
    ok($t->wait_for_log(qr/client prematurely closed connection/, since => $mark, timeout => 10),
       "$t->{name} $how: client prematurely closed connection (info)");
    my $answer = $how eq 'half' ? $cl->read_response(timeout => 5) : { status => 0, error => 'closed' };
    $cl->close;
    return (canon($answer));
}

sub status_counts {
    my $t = shift;
    my $r = $t->http(GET => '/status');
    return $r->{body} =~ /Reading: (\d+) Writing: (\d+)/ ? "reading $1 writing $2" : "no status: $r->{status}";
}

sub case_stub_status {
    my ($t) = @_;
    my $c0 = publish($t, 'stub', 'zero');
    my $mark = $t->log_mark;
    my @cl = map { my $c = $t->client; $c->send_request(GET => '/poll/stub', headers => { 'Last-Event-ID' => $c0 }); $c } 1 .. 3;
    ok(waiting($t, 'stub', 3, $mark), "$t->{name} stub_status: 3 waiting") or return ();
    my $during = status_counts($t);
    publish($t, 'stub', 'one');
    $_->read_response(timeout => 10) for @cl;
    $_->close for @cl;
    $t->wait_for(sub { $t->subscribers('stub') == 0 }, timeout => 10);
    my $after = status_counts($t);
    return ("during: $during", "after: $after");
}

sub case_reload {
    my ($t) = @_;
    my $c0 = publish($t, 'reload', 'zero');
    my $cl = $t->client;
    my $mark = $t->log_mark;
    $cl->send_request(GET => '/poll/reload', headers => { %probe, 'Last-Event-ID' => $c0 });
    ok(waiting($t, 'reload', 1, $mark), "$t->{name} reload: waiting") or return ();
    my $t0 = Time::HiRes::time();
    ok($t->reload, "$t->{name}: reload (old worker exits)");
    my $r = $cl->read_response(timeout => 10);
    cmp_ok(Time::HiRes::time() - $t0, '<', 2.5, "$t->{name}: answered at the reload, not at the timeout");
    $cl->close;
    return (canon($r));
}

my @cases = (
    [ 'json message', sub { case_message($_[0], '/poll/j', 'j') } ],
    [ 'raw message', sub { case_message($_[0], '/raw/r', 'r', data => "raw\x00bytes", pub_headers => {
        'Event-Type' => 'kind', 'Content-Type' => 'application/octet-stream' }) } ],
    [ 'multi-channel', sub { publish($_[0], 'mb', 'b'); case_message($_[0], '/m?ch=ma,mb', 'ma') } ],
    [ 'rewritten URI', sub { case_message($_[0], '/rw/w', 'w') } ],
    [ '6 KB header line', \&case_big_header ],
    [ 'HTTP/1.0', \&case_http10 ],
    [ '410 on DELETE', \&case_delete ],
    [ '204 at the timeout', \&case_timeout ],
    [ 'pipelined in one write', \&case_pipelined ],
    [ 'pipelined while parked, then garbage', \&case_pipelined_late ],
    [ 'client closes', sub { case_close($_[0], 'fin') } ],
    [ 'client half-closes', sub { case_close($_[0], 'half') } ],
    [ 'stub_status', \&case_stub_status ],
);

for my $case (@cases) {
    my ($name, $run) = @$case;
    my @a = $run->($A);
    my @b = $run->($B);
    ok(@a && @a == @b, "$name: as many answers parked as unparked");
    for my $i (0 .. $#b) {
        is($a[$i], $b[$i], "$name: answer " . ($i + 1) . ' parked = unparked');
    }
}

# ---- the access logs: one line per request, the same on both, with the wait in $request_time
{
    my $la = access_lines($A);
    my $lb = access_lines($B);
    is(scalar @$la, scalar @$lb, 'access log: as many lines parked as unparked (' . scalar(@$lb) . ')');
    is_deeply([ map { canon_log($_) } @$la ], [ map { canon_log($_) } @$lb ], 'access log lines: the same');
    my @mismatch = grep { /"[^"]*:([0-9a-f]{32})" ([0-9a-f]{32}) / && $1 ne $2 } @$la;
    is(scalar @mismatch, 0, '$request_id evaluated before parking is the one logged') or diag explain \@mismatch;
    my ($timeout_line) = grep { m{^\d+ \d+ \. 204 \d+ \d+ "GET /poll/quiet } } @$la;
    ok($timeout_line && $timeout_line =~ / ([\d.]+)$/ && $1 >= 2.9 && $1 < 6,
       '$request_time of a parked request covers its wait (204 after 3 s)') or diag $timeout_line;
    my @statuses = map { (split / /)[3] } @$la;
    is(scalar(grep { $_ eq '499' } @statuses), 2, 'the two clients that left are logged 499');
    cmp_ok(count_log($A, $PARKED), '>=', 12, 'A parked its waiters');
    is(count_log($A, $PARKED), count_log($A, $RECREATED), 'A re-created every parked request');
    is(count_log($B, $PARKED), 0, 'B never parked');
}

# ---- a JWT-authorized waiter keeps its request (its token's expiry bounds its wait)
{
    my $key = $A->prefix . '/ec256.pem';
    my $tok = openssl_token('ES256', $key, {}, { sub => 'u', exp => int(time) + 60, channels => { subscribe => ['*'] } });
    my $c0 = publish($A, 'jwt', 'zero');
    my $cl = $A->client(port => 3);
    my $mark = $A->log_mark;
    $cl->send_request(GET => '/poll/jwt', headers => { Authorization => "Bearer $tok", 'Last-Event-ID' => $c0 });
    ok($A->wait_for(sub { $A->subscribers('jwt') == 1 }, timeout => 10), 'JWT: waiting');
    publish($A, 'jwt', 'granted');
    my $r = $cl->read_response(timeout => 10);
    is($r->{json} && $r->{json}{messages}[0]{data}, 'granted', 'JWT: answered');
    is(count_log($A, $PARKED, $mark), 0, 'JWT: never parked (the token is the request\'s)');
    $cl->close;
}

# ---- TLS (curl, HTTP/1.1): parked, answered, then the next request on the same connection
{
    my $c0 = publish($A, 'tls', 'zero');
    my $url = 'https://127.0.0.1:' . $A->port(2) . "/poll/tls?last_event_id=$c0";
    my $out = $A->prefix . '/curl.out';
    my $mark = $A->log_mark;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $out or POSIX::_exit(2);
        open STDERR, '>&', \*STDOUT;
        exec('curl', '-sk', '--http1.1', '--max-time', '20', '-w', '\n%{http_code} %{num_connects}\n', $url, $url)
            or POSIX::_exit(127);
    }
    ok(waiting($A, 'tls', 1, $mark), 'TLS: waiting, parked');
    publish($A, 'tls', 'over tls');
    my $done = $A->wait_for(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, timeout => 15);
    ok($done, 'TLS: curl done');
    kill 'KILL', $pid unless $done;
    my $text = slurp($out);
    my @answers = $text =~ /(\{"messages".*?\})\n+(\d{3}) (\d+)\n/sg;
    is(scalar @answers, 6, 'TLS: two answers') or diag $text;
    is(json_decode($answers[0] // '{}')->{messages}[0]{data}, 'over tls', 'TLS: the message, after parking');
    is("$answers[1] $answers[2]", '200 1', 'TLS: 200 on a new connection');
    is("$answers[4] $answers[5]", '200 0', 'TLS: the next request on the same connection (keep-alive)');
    my @l = @{ access_lines($A, 'tls.log') };
    ok(@l == 2 && (split / /, $l[0])[0] eq (split / /, $l[1])[0] && $l[0] =~ /^\d+ 1 / && $l[1] =~ /^\d+ 2 /,
       'TLS: two access log lines, one connection, requests 1 and 2') or diag explain \@l;
    ok(count_log($A, $RECREATED, $mark) >= 1, 'TLS: the request was re-created');
}

# ---- worker memory: 2,000 park/close cycles, and a client flooding a parked connection
sub pss_kb {
    my $t = shift;
    my $sum = 0;
    for my $pid ($t->worker_pids) {
        open my $fh, '<', "/proc/$pid/smaps_rollup" or next;
        while (<$fh>) { $sum += $1 if /^Pss:\s+(\d+)/ }
    }
    return $sum;
}

my $sanitized = $ENV{CHANNELS_SANITIZE} || ($ENV{NGINX_BIN} // '') =~ /asan|san\b/;

sub park_and_close {
    my ($t, $n) = @_;
    my $mark = $t->log_mark;
    my @cl = map { my $c = $t->client; $c->send_request(GET => '/poll/cycle'); $c } 1 .. $n;
    my $ok = $t->wait_for(sub { count_log($t, $PARKED, $mark) >= $n }, timeout => 20);
    $_->close for @cl;
    $ok &&= $t->wait_for(sub { $t->subscribers('cycle') == 0 }, timeout => 20);
    return $ok;
}

SKIP: {
    skip 'PSS says nothing under a sanitizer', 3 if $sanitized;
    ok(park_and_close($A, 100), 'warm-up: 100 waiters parked, then closed');
    my $pss0 = pss_kb($A);
    my $all = 1;
    $all &&= park_and_close($A, 100) for 1 .. 20;
    ok($all, '2,000 waiters parked and closed (20 rounds of 100)');
    # The heap is trimmed a second after parks: await it.
    my $pss1;
    $A->wait_for(sub { ($pss1 = pss_kb($A)) - $pss0 <= $CYCLE_PSS_KB }, timeout => 5);
    cmp_ok($pss1 - $pss0, '<=', $CYCLE_PSS_KB,
           sprintf('after 2,000 park/close cycles: worker PSS back to its baseline (%+d KiB, tolerance %d KiB)',
                   $pss1 - $pss0, $CYCLE_PSS_KB));
}

SKIP: {
    skip 'PSS says nothing under a sanitizer', 4 if $sanitized;
    my $c0 = publish($A, 'flood', 'zero');
    my $cl = $A->client;
    my $mark = $A->log_mark;
    $cl->send_request(GET => '/poll/flood', headers => { 'Last-Event-ID' => $c0 });
    ok(waiting($A, 'flood', 1, $mark), 'flood: waiting');
    my $pss0 = pss_kb($A);
    my $sent = 0;
    my $sel = IO::Select->new($cl->socket);
    my $chunk = 'x' x 65536;
    my $deadline = Time::HiRes::time() + 5;
    while ($sent < 1_000_000 && Time::HiRes::time() < $deadline) {
        last unless $sel->can_write(0.2);
        my $n = syswrite($cl->socket, $chunk);
        $sent += $n if $n;
    }
    note("flood: $sent bytes sent before the socket filled");
    my $pss1 = pss_kb($A);
    cmp_ok($pss1 - $pss0, '<=', $FLOOD_PSS_KB,
           sprintf('flood: the worker does not read the bytes (%+d KiB for %d bytes sent)', $pss1 - $pss0, $sent));
    is($A->subscribers('flood'), 1, 'flood: the waiter is still there');
    publish($A, 'flood', 'answered anyway');
    my $r = $cl->read_response(timeout => 10);
    is($r->{json} && $r->{json}{messages}[0]{data}, 'answered anyway', 'flood: answered');
    $cl->close;
}

# ---- reload last (new workers): answered 204 at once on both, the same
{
    my @a = case_reload($A);
    my @b = case_reload($B);
    is($a[0], $b[0], 'reload: the 204 parked = unparked') if @a && @b;
    like($a[0] // '', qr/^status 204\n/, 'reload: 204');
}

# ---- C: the default delay (1 s)
{
    my $C = instance('C', 1000);
    my $id = publish($C, 'c1', 'zero');
    my $mark = $C->log_mark;
    my $cl = $C->client;
    my $t0 = Time::HiRes::time();
    $cl->send_request(GET => '/poll/cfresh', headers => { 'Last-Event-ID' => $id });   # a fresh cursor, no message after
    ok($C->wait_for_log($PARKED, since => $mark, timeout => 5), 'a fresh cursor: parked');
    my $dt = Time::HiRes::time() - $t0;
    cmp_ok($dt, '>=', 0.9, sprintf('... after a second (%.2f s)', $dt));
    $cl->close;

    $mark = $C->log_mark;
    $cl = $C->client;
    $t0 = Time::HiRes::time();
    $cl->send_request(GET => '/poll/cnew');                                            # a first poll
    ok($C->wait_for_log($PARKED, since => $mark, timeout => 5), 'a first poll: parked');
    cmp_ok(Time::HiRes::time() - $t0, '<', 0.8, '... at once');
    $cl->close;

    $mark = $C->log_mark;
    $cl = $C->client;
    $t0 = Time::HiRes::time();
    $cl->send_request(GET => '/poll/cold', headers => { 'Last-Event-ID' => '1000-0' }); # an old cursor
    ok($C->wait_for_log($PARKED, since => $mark, timeout => 5), 'an old cursor: parked');
    cmp_ok(Time::HiRes::time() - $t0, '<', 0.8, '... at once');
    $cl->close;

    $id = publish($C, 'cbusy', 'zero');
    $mark = $C->log_mark;
    $cl = $C->client;
    $cl->send_request(GET => '/poll/cbusy', headers => { 'Last-Event-ID' => $id });
    ok($C->wait_for(sub { $C->subscribers('cbusy') == 1 }, timeout => 5), 'a fresh cursor: waiting');
    publish($C, 'cbusy', 'soon');
    my $r = $cl->read_response(timeout => 5);
    is($r->{json} && $r->{json}{messages}[0]{data}, 'soon', 'answered within the second');
    is(count_log($C, $PARKED, $mark), 0, '... never parked');
    $cl->close;
}

# ---- M: 5,000 parked waiters, worker PSS per waiter
SKIP: {
    skip 'PSS says nothing under a sanitizer', 4 if $sanitized;
    my $N = 5000;
    (my $conf = $CONF) =~ s/longpoll_timeout 3s;/longpoll_timeout 120s;/;
    my $M = instance('M', 1000, connections => $N + 500, conf => $conf);
    my $pss0 = pss_kb($M);   # (one-time allocations for the channel count against the waiters)
    my $id = publish($M, 'idle', 'zero');
    my $mark = $M->log_mark;
    my @cl;
    for my $i (1 .. $N) {
        my $c = eval { $M->client } or last;
        # Fresh cursors: these wait a second before parking (the delayed path, with the trim).
        $c->send_request(GET => '/poll/idle', headers => { 'Last-Event-ID' => $id });
        push @cl, $c;
    }
    is(scalar @cl, $N, "M: $N waiters connected");
    ok($M->wait_for(sub { count_log($M, $PARKED, $mark) >= $N }, timeout => 60), "M: $N parked");
    my $per;
    $M->wait_for(sub { $per = (pss_kb($M) - $pss0) / $N; $per <= $PSS_PER_WAITER_KB }, timeout => 5);
    cmp_ok($per, '<=', $PSS_PER_WAITER_KB, sprintf('M: worker PSS per parked waiter %.2f KiB (at most %.1f)', $per, $PSS_PER_WAITER_KB));
    is($M->subscribers('idle'), $N, "M: all $N still waiting");
    $_->close for @cl;
}

done_testing;
