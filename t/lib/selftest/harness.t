#!/usr/bin/perl
# Self-test of t/lib/ChannelsTest.pm against plain nginx (no module) and a tiny Perl backend:
# process control, HTTP helpers (Content-Length, chunked, keep-alive), SSE parsing, the log check.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use Test::More;
use IO::Socket::INET;
use Time::HiRes ();
use POSIX ();
use ChannelsTest qw(id_cmp id_parse);

# ---- a backend that writes SSE in awkward fragments (to exercise the parser through nginx's chunking)
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16, Proto => 'tcp', ReuseAddr => 1)
    or die "listen: $!";
my $bport = $listen->sockport;
my $backend = fork // die;
if (!$backend) {
    # One child per connection: a held stream (/hold) must not keep the others waiting.
    my @kids;
    $SIG{TERM} = sub { kill 'TERM', @kids; POSIX::_exit(0) };
    $SIG{CHLD} = 'IGNORE';
    while (1) {
        my $c = $listen->accept or next;
        my $kid = fork // die;
        if ($kid) { push @kids, $kid; close $c; next }
        $SIG{TERM} = 'DEFAULT';
        my $req = '';
        while ($req !~ /\r\n\r\n/) { my $n = sysread($c, $req, 4096, length $req); last unless $n }
        my ($path) = $req =~ m{^GET (\S+)};
        $path //= '';
        syswrite $c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
        if ($path eq '/frag') {
            # Pauses only split the bytes into separate reads; no assertion depends on them.
            for my $piece (": hello\r\n", "data: a\r", "\ndata:  two spaces\r\n", "id: 7\r\n\r",
                           "\n", "event: e1\rdata\rdata: x\r\r", "retry: 900\n\n", ":ping\n\n", "retry: 1500\n",
                           "weird\nid: 8\n\n", "data: incomplete-at-eof\n") {
                syswrite $c, $piece;
                Time::HiRes::sleep(0.03);
            }
        } elsif ($path eq '/hold') {
            syswrite $c, "id: 1\ndata: first\n\n";
            my $x;
            sysread($c, $x, 1);   # until the client goes away
        }
        close $c;
        POSIX::_exit(0);
    }
}
close $listen;
END { kill 'TERM', $backend if $backend && $$ != $backend; }

my $t = ChannelsTest->new(module => 0, workers => 2, conf => <<"CONF");
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /cl      { return 200 "hello"; }
        location = /json    { default_type application/json; return 200 '{"a":[1,2],"s":"x"}'; }
        location = /nc      { return 204; }
        location = /chunked { sub_filter 'x' 'y'; sub_filter_once off; sub_filter_types *; return 200 "xxxx"; }
        location = /conn    { return 200 "\$connection:\$connection_requests"; }
        location = /echo    { client_max_body_size 1k; return 200 "len=\$content_length"; }
        location = /body    { client_max_body_size 1k; proxy_pass http://127.0.0.1:$bport; }
        location = /prefix  { return 200 "%%PREFIX%%"; }
        location /          { proxy_pass http://127.0.0.1:$bport; proxy_buffering off; proxy_http_version 1.1; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location / { return 200 "second"; }
    }
CONF

ok($t->port(0) && $t->port(1) && $t->port(0) != $t->port(1), 'two distinct ports allocated');
like($t->master_pid, qr/^\d+$/, 'master pid known');
is(scalar(my @w = $t->worker_pids), 2, 'two workers running');

my $r = $t->http(GET => '/cl');
is($r->{status}, 200, 'GET status');
is($r->{body}, 'hello', 'Content-Length body');
is($r->{headers}{'content-length'}, 5, 'lowercased header names');

$r = $t->http(GET => '/chunked');
is($r->{headers}{'transfer-encoding'}, 'chunked', 'chunked response') or diag explain $r;
is($r->{body}, 'yyyy', 'chunked body decoded');

$r = $t->http(HEAD => '/cl');
is($r->{status}, 200, 'HEAD status');
is($r->{body}, '', 'HEAD has no body');

is($t->http(GET => '/nc')->{status}, 204, 'status 204');
is($t->http(GET => '/x', port => 1)->{body}, 'second', 'port index selects the server');
is($t->http(GET => '/prefix')->{body}, $t->prefix, '%%PREFIX%% substituted');

$r = $t->http(POST => '/echo', body => 'abc');
is($r->{body}, 'len=3', 'body with Content-Length');
$r = $t->http(POST => '/body', body => 'a' x 2000, chunked => 1, chunk_size => 700);
is($r->{status}, 413, 'chunked request body over client_max_body_size: 413');
$r = $t->http(POST => '/echo', body => 'a' x 5000);
is($r->{status}, 413, '413 read although the body write may fail');

my $c = $t->client;
my $r1 = $c->request(GET => '/conn');
my $r2 = $c->request(GET => '/conn');
my ($c1, $n1) = split /:/, $r1->{body};
my ($c2, $n2) = split /:/, $r2->{body};
ok($c1 == $c2 && $n1 == 1 && $n2 == 2, 'keep-alive client reuses the connection') or diag "$r1->{body} / $r2->{body}";
$c->close;

$r = $t->raw_request("GET /cl HTTP/1.0\r\n\r\n");
is($r->{body}, 'hello', 'raw request');
$r = $t->raw_request("BROKEN\r\n\r\n");
is($r->{status}, 400, 'raw malformed request gets 400');

my $p = $t->poll('/json', cursor => '5-1');
is($p->{status}, 200, 'poll status');
is_deeply($p->{json}, { a => [1, 2], s => 'x' }, 'poll decodes JSON');
my $ps = $t->poll_start('/nc');
is($ps->result(timeout => 5)->{status}, 204, 'poll_start / result');

# ---- SSE parsing through nginx (chunked) and directly (read until close)
for my $via (['nginx', sub { $t->sse_open('/frag') }],
             ['direct', sub { ChannelsTest::SSE->open(port => $bport, path => '/frag') }]) {
    my ($name, $open) = @$via;
    my $s = $open->();
    is($s->status, 200, "$name: SSE status");
    is($s->header('Content-Type'), 'text/event-stream', "$name: header access");
    my $e = $s->next_event(timeout => 5);
    is_deeply([$e->{data}, $e->{id}, $e->{event}], ["a\n two spaces", '7', undef],
              "$name: CRLF split across reads, one space stripped");
    is_deeply($e->{comments}, [' hello'], "$name: comment recorded");
    $e = $s->next_event(timeout => 5);
    is_deeply([$e->{event}, $e->{data}], ['e1', "\nx"], "$name: CR line ends, empty data line");
    $e = $s->next_event(timeout => 5);
    is_deeply([$e->{retry}, $e->{id}, $e->{data}], ['900', undef, undef], "$name: a retry-only block is an event");
    $e = $s->next_event(timeout => 5);
    is_deeply([$e->{retry}, $e->{id}, $e->{data}], ['1500', '8', undef], "$name: retry, unknown field, no data");
    is_deeply($e->{comments}, ['ping'], "$name: comment-only block attached to the next event");
    is($s->next_event(timeout => 5), undef, "$name: incomplete event at EOF discarded");
    ok($s->eof && !$s->timed_out, "$name: eof");
    ok($s->clean_end, "$name: nginx ended the chunked stream") if $name eq 'nginx';
    is($s->last_id, '8', "$name: last id");
    is($s->retry, '1500', "$name: last retry value kept");
}

# ---- many streams read as bytes come (sse_start / read / pump)
{
    my @s = ($t->sse_start('/frag'), ChannelsTest::SSE->start(port => $bport, path => '/frag'), $t->sse_start('/hold'));
    ok(!grep({ $_->started } @s), 'sse_start: nothing read yet');
    ok(ChannelsTest::SSE::pump(\@s, sub { $s[0]->eof && $s[1]->eof && @{ $s[2]->received } }, 10),
       'pump until both /frag streams ended and /hold has its event');
    is_deeply([ map { $_->status } @s ], [ 200, 200, 200 ], 'started: status of each');
    for my $i (0, 1) {
        is_deeply([ map { [ $_->{id}, $_->{event}, $_->{data} ] } @{ $s[$i]->received } ],
                  [ [ '7', undef, "a\n two spaces" ], [ undef, 'e1', "\nx" ] ],
                  "stream $i: received only the events with data, fragments joined");
        is($s[$i]->last_id, '8', "stream $i: last id");
    }
    ok($s[0]->clean_end && !$s[1]->clean_end, 'clean_end: the chunked terminator (nginx), not a close');
    is($s[2]->received->[0]{data}, 'first', 'a held stream: its first event');
    is_deeply([ ChannelsTest::SSE::read_ready(\@s, 0.2) ], [], 'read_ready: nothing more to read');
    $_->close for @s;
}

my $s = $t->sse_open('/hold');
is($s->next_event(timeout => 5)->{data}, 'first', 'held stream: first event');
my $t0 = Time::HiRes::time();
is($s->next_event(timeout => 0.3), undef, 'no event within the timeout');
ok($s->timed_out && !$s->eof, 'timed out, not at EOF');
cmp_ok(Time::HiRes::time() - $t0, '>=', 0.29, 'timeout honoured');
$s->close;

# ---- reload / restart / stop
my @old = $t->worker_pids;
ok($t->reload, 'reload');
my @new = $t->worker_pids;
is(scalar(@new), 2, 'two workers after reload');
ok(!grep({ my $o = $_; grep { $_ == $o } @new } @old), 'new worker pids');
is($t->http(GET => '/cl')->{body}, 'hello', 'serves after reload');

ok($t->reload(conf => "server { listen 127.0.0.1:%%PORT_0%%; location / { return 200 changed; } }\n"
                    . "server { listen 127.0.0.1:%%PORT_1%%; location / { return 200 second; } }"),
   'reload with new conf');
is($t->http(GET => '/cl')->{body}, 'changed', 'new conf active');

my $m = $t->master_pid;
ok($t->restart, 'restart');
isnt($t->master_pid, $m, 'new master after restart');
is($t->http(GET => '/cl')->{body}, 'changed', 'serves after restart');

my $mark = $t->log_mark;
$t->http(GET => '/missing', port => 1);
ok($t->wait_for(sub { 1 }), 'wait_for returns a true value');
is($t->wait_for(sub { 0 }, timeout => 0.2), undef, 'wait_for times out');

ok(id_cmp('1732290000123-0', '1732290000123-1') < 0 && id_cmp('999-5', '1000-0') < 0
   && id_cmp('5-10', '5-9') > 0 && id_cmp('7-7', '7-7') == 0, 'id_cmp');
is_deeply([id_parse('12-3')], [12, 3], 'id_parse');
is_deeply([id_parse('12-')], [], 'id_parse rejects');

# ---- the log check catches a bad line
my $t2 = ChannelsTest->new(module => 0, conf => "server { listen 127.0.0.1:%%PORT_0%%; }");
open my $fh, '>>', $t2->prefix . '/logs/error.log' or die;
print $fh "2024/01/01 00:00:00 [alert] 1#1: planted line\n";
close $fh;
my @bad = $t2->log_problems;
is(scalar(@bad), 1, 'log_problems finds a planted [alert]');
$t2->allow_log(qr/planted line/);
is(scalar($t2->log_problems), 0, 'allow_log tolerates it');
my $m2 = $t2->master_pid;
ok($t2->stop, 'stop');
ok(!kill(0, $m2), 'master gone after stop');

# ---- start failure is reported
my $t3 = ChannelsTest->new(module => 0, start => 0,
                           conf => "server { listen 127.0.0.1:%%PORT_0%%; bogus_directive; }");
my ($okc, $out) = $t3->test_config;
ok(!$okc, 'nginx -t fails on a bad config');
like($out, qr/unknown directive "bogus_directive"/, 'nginx -t output');
ok(!$t3->try_start, 'try_start fails');
like($t3->startup_error, qr/unknown directive/, 'startup error explains');
$t3->skip_log_check;

done_testing;
