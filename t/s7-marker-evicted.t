#!/usr/bin/perl
# The S7 divergence of the model test (seed 300133, tiny zone): a DELETE's marker evicted
# before the worker of a live SSE subscriber read it. README "Publishing": the marker stays
# "as long as a message would (ttl, or until evicted)"; README "SSE": messages lost before
# the subscriber's worker delivered them are told as `channel-gap` (oldest_event_id null)
# "before anything published after them". So the stream must get channel-gap for the
# deleted channel before the next message — never silently go on without either notice.
#
# The worker holding the subscriber is stopped (SIGSTOP) while the other worker deletes
# "gone", then publishes enough to a third channel to evict everything up to and past the
# marker in the 1 MB zone; then it is resumed.
#
# Control: the same with room in the zone: channel-deleted comes, no gap.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(json_decode publish_server);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF' . publish_server());
    channel_zone zone=tiny:1m history=1000 ttl=1h;
    sse_ping 0;
    client_max_body_size 1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /multi { sse_channel $arg_ch; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'tiny', port => 1) }

# One round: a stream on keep.R and gone.R; its worker stopped while gone.R is deleted and
# $fill bytes are published to fill.R; then a message to keep.R. Returns the events seen
# after the subscriber's first message, up to that last one.
sub round {
    my ($tag, $fill) = @_;
    my ($keep, $gone) = ("keep.$tag", "gone.$tag");
    $t->publish($gone, "g0");
    my $s = $t->sse_open("/multi?ch=$keep,$gone");
    is($s->status, 200, "$tag: stream on $keep,$gone");
    $t->wait_subscribers($keep, 1, port => 1);
    my $first = $t->publish($keep, 'k1');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{id}, $first, "$tag: it is live");
    my ($holder) = map { $_->{pid} } grep { $_->{subscribers} > 0 } @{ zone()->{workers} };
    ok($holder, "$tag: its worker is $holder");
    my $pub = $t->client_of_other_worker($holder);
    ok($pub, "$tag: a publishing connection of the other worker");
    my $ev0 = zone()->{evicted};
    kill 'STOP', $holder;
    my ($del, $last);
    my $ok = eval {
        $del = $t->http(DELETE => "/pub/$gone", client => $pub);
        my $chunk = 'f' x 65536;
        $t->publish("fill.$tag", $chunk, client => $pub) for 1 .. int($fill / 65536);
        $last = $t->publish($keep, 'k2', client => $pub);
        1;
    };
    kill 'CONT', $holder;
    die $@ unless $ok;
    is($del->{status}, 200, "$tag: DELETE $gone");
    my @ev;
    while (my $e = $s->next_event(timeout => 5)) {
        push @ev, $e;
        last if defined $e->{id} && $e->{id} eq $last;
    }
    note("$tag: evicted " . (zone()->{evicted} - $ev0) . '; stream: '
         . join(' | ', map { ($_->{event} // 'message') . ' ' . ($_->{data} // '') } @ev));
    # does the stream still hold the deleted channel? (a publish brings the channel back)
    my $back = $t->publish($gone, 'g-back', client => $pub);
    $t->publish($keep, 'k3', client => $pub);
    my @more;
    while (my $e = $s->next_event(timeout => 5)) {
        push @more, $e->{data} // '';
        last if ($e->{data} // '') eq 'k3';
    }
    $s->close;
    return ($last, \@more, @ev);
}

{
    my ($last, $more, @ev) = round('roomy', 0);
    is(scalar(grep { ($_->{event} // '') eq 'channel-deleted' } @ev), 1, 'room in the zone: channel-deleted for gone');
    is(scalar(grep { ($_->{event} // '') eq 'channel-gap' } @ev), 0, 'and no gap');
    is($ev[-1]{id}, $last, 'then k2');
    is("@$more", 'k3', 'the stream left gone: not its later message');
}
{
    my ($last, $more, @ev) = round('full', 1_600_000);
    my ($gap) = grep { ($_->{event} // '') eq 'channel-gap' && (json_decode($_->{data}) // {})->{channel} eq 'gone.full' } @ev;
    my $deleted = grep { ($_->{event} // '') eq 'channel-deleted' } @ev;
    # 1.6 MB through a 1 MB zone while the worker is stopped: the marker cannot survive
    ok($gap, 'marker evicted before the worker read it: channel-gap for gone');
    is($deleted, 0, 'and no channel-deleted (the marker is gone)');
    ok(@ev && $ev[-1]{id} eq $last && $ev[-2] && $ev[-2] == $gap, 'the gap came before k2, right after k1');
    is($gap && json_decode($gap->{data})->{oldest_event_id}, undef, 'told live: oldest_event_id null');
    is("@$more", 'g-back k3', 'not told of the deletion, the stream stays on gone: it gets its next message');
}

done_testing;
