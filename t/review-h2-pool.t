#!/usr/bin/perl
# Review finding: an HTTP/2 SSE stream whose client lags grows its request pool for as long
# as it lives (README "What one client can cost" "Worker memory: per subscriber, at most ~1 MiB of unsent data plus a
# small fixed cost").
#
# HTTP/2 streams copy events into their own buffers (FilterOutput::copy_into): 4 KiB, or the
# frame's size, allocated with ngx_palloc() from the request pool. A request pool is 4 KiB,
# so every such buffer is a "large" allocation, and ngx_palloc_large() looks for a free
# ngx_pool_large_t record among the first five of the pool's list only; the newest records
# are at the head, and while a lagging client keeps more than a handful of buffers queued,
# those are all in use. So each new buffer adds a record of 16 bytes to the pool, which only
# the end of the request frees; FilterOutput::free_buffer() gives the buffer back with
# ngx_pfree() (only four are kept for reuse), but not the record. The pool grows by about
# 16 bytes per buffer a lagging stream is sent: ~0.5% of the bytes delivered, without bound.
#
# The test: 16 streams on one h2c connection, whose windows the client grants only after
# each burst of 150 events of 2 KiB was queued (a client that reads in bursts, as a mobile
# one does). The bytes in use in the worker's heap are measured after bursts 20, 40 and 60: they
# should stop growing once the buffers are warm; they grow linearly.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest;
use H2;
use Attack qw(sanitized pipeline_publish);

plan skip_all => 'memory figures mean nothing under sanitizers' if sanitized();
plan skip_all => 'needs gdb' unless `gdb --version 2>/dev/null`;

my $STREAMS = 16;
my $BURST = 150;
my $SIZE = 2100;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:64m history=200 ttl=1h;
    send_timeout 120s;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        http2 on;
        location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        keepalive_requests 1000000;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF
my ($worker) = $t->worker_pids;

my $h = H2->new(port => $t->port(0), settings => { initial_window_size => 0 }, auto_window => 0, timeout => 30);
my @sids = map { $h->request(GET => '/events/feed', headers => [accept => 'text/event-stream']) } 1 .. $STREAMS;
my $ok = grep { my $r = $h->response($_, timeout => 10); $r && $r->{status} == 200 } @sids;
is($ok, $STREAMS, "$STREAMS h2 SSE streams");

my $n = 0;
# One burst: $BURST events queued while the window is shut, then read by granting 64 KiB at
# a time until every stream has them all.
sub burst {
    my @msgs = map { ['feed', sprintf('%08d', $n++) . ('d' x ($SIZE - 8))] } 1 .. $BURST;
    my $st = pipeline_publish($t, \@msgs);
    die "publish failed\n" unless ($st->{201} // 0) == $BURST;
    my %got = map { $_ => 0 } @sids;
    my $deadline = Time::HiRes::time() + 60;
    while (grep { $got{$_} < $BURST } @sids) {
        die "burst not delivered in time\n" if Time::HiRes::time() > $deadline;
        $h->window_update(0, 64 * 1024 * $STREAMS);
        $h->window_update($_, 64 * 1024) for grep { $got{$_} < $BURST } @sids;
        $h->pump(timeout => 0.2);
        for my $sid (@sids) {
            my $st = $h->stream($sid);
            die "stream $sid reset\n" if defined $st->{reset} || $st->{ended};
            $got{$sid} += () = $st->{data} =~ /\n\n/g;   # complete events so far
            $st->{data} =~ s/\A.*\n\n//s;                 # keep only a partial one
        }
    }
}

# Bytes in use in the worker's heap (glibc's mallinfo2, read with gdb): freed buffers stay in
# the heap for reuse, so RSS hides what is still allocated.
sub heap_kb {
    my $out = `gdb -p $worker -batch -ex 'print (long) mallinfo2().uordblks' 2>/dev/null`;
    return $out =~ /^\$1 = (\d+)/m ? int($1 / 1024) : undef;
}

my %kb;
for my $i (1 .. 60) {
    burst();
    $kb{$i} = heap_kb() if $i == 20 || $i == 40 || $i == 60;
}
my $z = $t->zone_stats('/stats', 'events', port => 1);
is($z->{dropped_slow}, 0, 'no stream was cut (each burst is under 1 MiB)');
my ($g1, $g2) = ($kb{40} - $kb{20}, $kb{60} - $kb{40});
note(sprintf('worker heap in use: %d KiB after 20 bursts, %d after 40 (+%d), %d after 60 (+%d); '
             . '%.1f MiB delivered per stream in 20 bursts', $kb{20}, $kb{40}, $g1, $kb{60}, $g2,
             20 * $BURST * $SIZE / 1048576));
cmp_ok($g2, '<', 32, 'the worker stops growing once its buffers are warm (growth over the last 20 bursts < 32 KiB)');

done_testing;
