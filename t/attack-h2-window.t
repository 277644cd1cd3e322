#!/usr/bin/perl
# Issue 11, finding 2 (README "What one client can cost": worker memory): HTTP/2 readers that never
# read.
#
# An h2c client (t/lib/H2.pm) advertises SETTINGS_INITIAL_WINDOW_SIZE=0 and opens 10 SSE
# streams on one channel, then never grants a window: nginx can send none of their DATA.
# 5,000 one-byte publishes follow. The worker must hold no more than about 1 MiB per stream
# plus a small fixed cost, counting the memory really held (HTTP/2 copies each frame into
# buffers of its own), not only the event bytes; a stream past that is closed and counted in
# `dropped_slow`. Meanwhile a reading HTTP/2 subscriber of the same channel gets every message.
#
# Before the fix: each queued frame (~30 bytes) was copied into its own >= 4 KiB buffer while
# only frame bytes counted toward the 1 MiB limit, so 10 streams grew the worker from 7 to
# 210 MiB with no `dropped_slow`.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest;
use H2;
use Attack qw(anon_kb settle_kb sanitized);

my $STREAMS = 10;
my $SMALL = 5000;
my $FIXED_KB = 8 * 1024;                  # fixed cost allowed on top of 1 MiB per stream

# ---- the client's own decoder, checked first (RFC 7541 C.4.1: "www.example.com")
is(H2::huffman_decode(pack('H*', 'f1e3c2e5f23a6ba0ab90f4ff')), 'www.example.com',
   'H2.pm: Huffman decoding of the RFC 7541 example');
my $all = join '', map { chr } 0 .. 255;
is(H2::huffman_decode(H2::huffman_encode($all)), $all, 'H2.pm: Huffman round trip of every byte');

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:16m history=10000 ttl=1h;
    send_timeout 60s;                       # only the memory bound may cut the streams
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;  # h2c, prior knowledge
        http2 on;
        location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        keepalive_requests 100000;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

my ($worker) = $t->worker_pids;
sub zone { $t->zone_stats('/stats', 'events', port => 1) }

# ---- a reading HTTP/2 subscriber (the witness), which also checks the client end to end
my $reader = H2->new(port => $t->port(0));
my $rsid = $reader->request(GET => '/events/slow', headers => [accept => 'text/event-stream']);
my $rh = $reader->response($rsid, timeout => 5);
is($rh && $rh->{status}, 200, 'reader: 200 over h2c');
like($rh && $rh->{headers}{'content-type'}, qr{^text/event-stream}, 'reader: Content-Type decoded (HPACK)');

# ---- the stalled client: window 0, 10 streams, never reads
my $stall = H2->new(port => $t->port(0), settings => { initial_window_size => 0 }, auto_window => 0);
my @sids = map { $stall->request(GET => '/events/slow', headers => [accept => 'text/event-stream']) } 1 .. $STREAMS;
my $heads = 0;
for my $sid (@sids) { my $h = $stall->response($sid, timeout => 5); $heads++ if $h && $h->{status} == 200 }
is($heads, $STREAMS, "stalled client: $STREAMS streams answered 200 (headers are not flow-controlled)");
ok($t->wait_for(sub { $t->subscribers('slow') == $STREAMS + 1 }, timeout => 5),
   'channel counts the reader and the stalled streams') or diag 'subscribers: ' . $t->subscribers('slow');

my $dropped0 = zone()->{dropped_slow};
my $base_kb = settle_kb(sub { anon_kb($worker) });

# ---- 5,000 one-byte publishes
my $pub = $t->client(port => 1);
my $read_ids = 0;
my $t0 = Time::HiRes::time();
for my $i (1 .. $SMALL) {
    $t->publish('slow', 'x', client => $pub);
    $reader->pump(timeout => 0) if $i % 200 == 0;
}
note(sprintf('%d publishes in %.1fs', $SMALL, Time::HiRes::time() - $t0));
my $count_ids = sub { my $n = () = $reader->stream($rsid)->{data} =~ /^id: /mg; $n };
ok($reader->wait(sub { $count_ids->() >= $SMALL }, timeout => 20),
   "reader got all $SMALL messages while the stalled streams held theirs")
    or diag 'reader got ' . $count_ids->();

my $after_kb = settle_kb(sub { anon_kb($worker) });
my $grew = $after_kb - $base_kb;
my $dropped = zone()->{dropped_slow} - $dropped0;
note("worker RssAnon: $base_kb KiB before, $after_kb KiB after $SMALL one-byte messages "
   . "(+$grew KiB for $STREAMS stalled streams); dropped_slow +$dropped");
SKIP: {
    skip 'memory figures mean nothing under a sanitizer', 1 if sanitized();
    cmp_ok($grew, '<=', $STREAMS * 1024 + $FIXED_KB,
           "worker grew by at most ~1 MiB per stalled stream + fixed cost ($grew KiB <= "
         . ($STREAMS * 1024 + $FIXED_KB) . ' KiB)');
}

# ---- more data until every stalled stream must be past 1 MiB however it is counted
my $big = 'y' x 1024;
my $sent = 0;
for my $i (1 .. 3000) {
    $t->publish('slow', $big, client => $pub);
    $sent++;
    $reader->pump(timeout => 0) if $i % 50 == 0;
    last if $i % 100 == 0 && zone()->{dropped_slow} - $dropped0 >= $STREAMS;
}
my $dropped_end = zone()->{dropped_slow} - $dropped0;
note("after $sent more 1 KiB messages: dropped_slow +$dropped_end");
ok($dropped_end >= 1 && $dropped_end <= $STREAMS, "the stalled streams were cut off for not reading (dropped_slow +$dropped_end)");
ok($stall->wait(sub {
        $stall->closed || (grep { defined $stall->stream($_)->{reset} || $stall->stream($_)->{ended} } @sids) == $STREAMS
    }, timeout => 10),
   'the stalled streams were ended (RST_STREAM, END_STREAM or the connection closed)');
ok($t->wait_for(sub { $t->subscribers('slow') == 1 }, timeout => 5), 'only the reader is left subscribed');

my $end_kb = settle_kb(sub { anon_kb($worker) });
note("worker RssAnon at the end: $end_kb KiB (+" . ($end_kb - $base_kb) . ' KiB)');
SKIP: {
    skip 'memory figures mean nothing under a sanitizer', 1 if sanitized();
    cmp_ok($end_kb - $base_kb, '<=', $STREAMS * 1024 + $FIXED_KB, 'worker memory still bounded at the end');
}

ok($reader->wait(sub { $count_ids->() >= $SMALL + $sent }, timeout => 20),
   'reader got every message, the big ones too') or diag 'reader got ' . $count_ids->();
ok(!defined $reader->stream($rsid)->{reset} && !$reader->closed, 'reader stream still open');
is_deeply([$t->worker_pids], [$worker], 'the worker is still the same process');

done_testing;
