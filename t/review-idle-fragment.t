#!/usr/bin/perl
# Review finding: in a zone that is full of messages of mixed sizes (the steady state of a
# busy zone), a subscriber of a new channel is refused with 503 "channel zone is full" while
# the idle-channel memory is far below its cap (README "What one client can cost": only past the cap of 1/8 of the
# zone are subscribers of channels without messages refused).
#
# The cap is kept by accounting (Shared::message_budget = 7/8 of the pages, counted in slab
# slot sizes), but nothing keeps free *pages* for the idle channels: messages of several slab
# classes leave pages partly used, the slab allocator runs out of free pages while
# message_bytes is still under the budget, and publishes evict only until their own
# allocation succeeds (Zone::alloc_evicting). Zone::create_for_subscriber() then calls
# ngx_slab_alloc_locked(), which finds no slot of its class and no free page: no_memory,
# answered 503 (and logged at error level: "channel zone is full").
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;
use Attack qw(pipeline_publish);

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=small:1m history=100000 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        keepalive_requests 1000000;
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
        location = /stats                   { channel_stats; }
    }
CONF
$t->allow_log(qr/channel zone is full/);

sub zone { $t->zone_stats('/stats', 'small', port => 1) }

# Messages of the 256-byte slab class, alternately on channels a* and b*, fill most of the
# zone; the a* channels are deleted (an administrator's DELETE), which leaves every such page
# half used; then page-sized messages are published: they take the free pages, then evict
# only until their own allocation succeeds. message_bytes is now about half the budget.
my @msgs = map { [ ($_ % 2 ? 'a' : 'b') . ($_ % 20), sprintf('%05d', $_) . ('s' x 145) ] } 1 .. 3200;
my $st = pipeline_publish($t, \@msgs);
is($st->{201}, scalar @msgs, 'small messages published');
is($t->http(DELETE => "/pub/a$_", port => 1)->{status}, 200, "a$_ deleted") for grep { $_ % 2 } 1 .. 19;
$st = pipeline_publish($t, [ map { [ 'big', ('B' x 3000) . $_ ] } 1 .. 200 ]);
is($st->{201}, 200, 'page-sized messages published');
my $z = zone();
note("zone: $z->{messages} messages, $z->{evicted} evicted, used $z->{used} of $z->{size}; "
     . "idle memory $z->{idle_bytes} of a cap of $z->{idle_cap} bytes");

# 200 subscribers, each of a new channel with a 200-byte id (a 512-byte slab slot each: 100 KiB
# of idle memory in all, under the cap of 1/8 of the zone), held open together.
my (@open, @refused);
for my $i (1 .. 200) {
    my $s = $t->sse_open(sprintf('/events/n%03d', $i) . ('x' x 196));
    if ($s->status == 200) { push @open, $s } else { push @refused, $s->status; $s->close }
}
$z = zone();
note(sprintf('%d served, %d refused (%s); idle memory now %d of a cap of %d bytes', scalar @open, scalar @refused,
             join(',', sort { $a <=> $b } keys %{{ map { $_ => 1 } @refused }}) || '-', $z->{idle_bytes}, $z->{idle_cap}));
is(scalar @refused, 0, 'every subscriber of a new channel is served while idle memory stays under its cap');
$_->close for @open;

done_testing;
