#!/usr/bin/perl
# Review finding (low): a worker that lost messages of more than 16 channels tells every one
# of its subscribers a channel-gap for every channel, including channels that lost nothing
# (SPEC §4: channel-gap says messages *of that channel* after the cursor are gone).
#
# A WorkerRecord keeps 16 LossNotices (kLossNotices); past that, Zone::note_loss() raises the
# record's lost_upto, "every channel is told". announce_losses() then calls on_lost(i, all_lost)
# for every active link of every subscriber of the worker, and SseStream::on_lost() sends a
# gap for each link whose last seen id is below all_lost: any channel that had no message
# since. Here the losses come from review-evict-trimmed.t's case (a lagging worker in a full
# zone); a Redis zone's mark_gap() does the same by design.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=small:1m history=1 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /multi { sse_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$ { publish_channel $ch; }
        location = /stats                { channel_stats; }
    }
CONF
sub zone { $t->zone_stats('/stats', 'small', port => 1) }
my @busy = map { "x$_" } 1 .. 20;
$t->publish('quiet', 'the only message of quiet');
my $s = $t->sse_open('/multi?ch=' . join(',', 'quiet', @busy) . '&last_event_id=0-0');
my $first = $s->next_event(timeout => 5);
is($first && $first->{data}, 'the only message of quiet', 'a stream of quiet and 20 busy channels');
my $holder;
$t->wait_for(sub { my ($w) = grep { $_->{subscribers} > 0 } @{ zone()->{workers} }; $holder = $w && $w->{pid} }, timeout => 5);
my $payload = 'p' x 900;
my $i = 0;
$i++ while $t->publish(sprintf('old%04d', $i), "old $payload") && (zone()->{evicted} == 0 || $i % 50) && $i < 5000;
kill 'STOP', $holder;
eval { for my $round (1 .. 3) { $t->publish($_, "$_ $round $payload") for @busy } };
kill 'CONT', $holder;
my %gap;
while (my $e = $s->next_event(timeout => 3)) {
    next unless ($e->{event} // '') eq 'channel-gap';
    my $d = eval { JSON::PP::decode_json($e->{data}) } or next;
    $gap{ $d->{channel} }++;
}
note('channel-gap received for: ' . join(', ', sort keys %gap));
ok(scalar(grep { $gap{$_} } @busy) > 0, 'gaps for busy channels that lost messages');
ok(!$gap{quiet}, 'no channel-gap for "quiet", which lost nothing');
done_testing;
