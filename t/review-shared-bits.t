#!/usr/bin/perl
# Review finding: with more than 64 worker records in a zone, channels that subscribers left
# are never freed, and the idle-channel cap fills up for good (README "Publishing" "what that costs in the
# zone is freed as soon as its last subscriber leaves"; README "What one client can cost").
#
# Zone::claim_record() gives the 65th record a wake bit already used (`n % 64`). 65 records
# exist with worker_processes 65, and, on any machine with 33 cores or more, during every
# reload (old and new workers overlap). Zone::detach() keeps a channel's wake bit when the bit
# is shared (`if (!bit_shared(rec)) ...`), whether or not the other worker holds that channel;
# and Zone::free_if_unused() frees no channel whose wake_bits are not zero. Nothing clears the
# bit later (reset_counts() keeps the bits of live records). So every channel created by a
# subscriber of a worker whose bit is shared stays in the zone after its last subscriber
# left, counted against the idle cap: once the cap is reached, every subscriber of a new
# channel gets 503, on every worker, until nginx restarts.
#
# The test: 65 workers; subscribers of 64 fresh channels each connect and leave, one after
# the other. Afterwards the zone should hold no channel; it holds the channels of those that
# landed on the two workers sharing bit 0 — and the cap fills.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $WORKERS = 65;

my $t = ChannelsTest->new(workers => $WORKERS, worker_connections => 128, conf => <<'CONF');
    channel_zone zone=events:1m history=10 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /multi { sse_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /stats { channel_stats; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'events', port => 1) }

my $z = zone();
is(scalar @{ $z->{workers} }, $WORKERS, "$WORKERS worker records in the zone");

# Each request names 64 new channels with 40-byte ids (256-byte slab slots: 16 KiB of idle
# memory per request while it is open).
my ($n, $served, $refused) = (0, 0, 0);
sub one {
    my @chs = map { sprintf('c%05d-%02d-', $n, $_) . ('x' x 30) } 1 .. 64;
    $n++;
    my $s = $t->sse_open('/multi?ch=' . join(',', @chs));
    $s->status == 200 ? $served++ : $refused++;
    $s->close;
}

one() for 1 .. 100;
ok($t->wait_for(sub { zone()->{subscribers} == 0 }, timeout => 10), 'every subscriber left');
$z = zone();
note("after 100 subscribers of 64 new channels each came and left: $z->{channels} channels remain, "
     . "idle memory $z->{idle_bytes} of a cap of $z->{idle_cap} bytes");
is($z->{channels}, 0, 'no channel remains in the zone once its subscribers left');

# Go on until the cap is reached (about 8 requests landing on the two workers of bit 0).
one() for 1 .. 700;
$z = zone();
note("after $n such subscribers: $z->{channels} channels remain, idle memory $z->{idle_bytes} of $z->{idle_cap}; "
     . "$refused refused");
is($refused, 0, 'no subscriber of a new channel is refused while nobody holds any channel');

done_testing;
