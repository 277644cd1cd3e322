#!/usr/bin/perl
# Review finding (low): a worker that lost messages of more than 16 channels told every one
# of its subscribers a channel-gap for every channel, including channels that lost nothing
# (README "SSE": channel-gap says messages *of that channel* after the cursor are gone).
#
# A WorkerRecord kept 16 LossNotices (kLossNotices, now 64); past them, Zone::note_loss()
# raises the record's lost_upto and every channel is told. Here a worker is stopped while 20
# busy channels publish more than the zone holds: the oldest entries, the busy channels'
# messages it has not read, are evicted. Its stream must get gaps for those, none for
# "quiet". (Past 64 channels with losses in one worker, every channel is told: documented.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use ChannelsTest qw(publish_server);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF' . publish_server());
    channel_zone zone=small:1m history=1 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /multi { sse_channel $arg_ch; }
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
# A keep-alive connection the other worker accepted: publishes on it never wait for the
# stopped one (a new connection may be queued for it).
my $pub = $t->client_of_other_worker($holder);
die "no connection to the other worker\n" unless $pub;
kill 'STOP', $holder;
# More than the zone holds, so that the busy messages the stopped worker has not read go too.
eval { for my $round (1 .. 80) { $t->publish($_, "$_ $round $payload", client => $pub) for @busy } };
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
