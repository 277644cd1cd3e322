#!/usr/bin/perl
# Review finding: in a full zone, eviction takes messages that live subscribers have not
# received yet before the oldest messages of the zone (README "Publishing" "the oldest messages of the
# zone are evicted first"; README "SSE": "every subscriber gets every message of its channels once").
#
# A message that history trims out of its channel stays in the publish log, on the zone's
# `trimmed` list, while a worker holding subscribers of its channel has not read it: "its live
# subscribers still get it" (Zone::trim_head). But Zone::evict_one() takes the head of
# `trimmed` first, before the oldest entry of the log: exactly the messages some worker still
# owes its live subscribers, however much older retained data the zone holds. A worker that
# lags (here: stopped for a moment; in production: busy fanning out to many subscribers, or
# descheduled) loses most of what was published meanwhile on a busy, short-history channel,
# and its subscribers get `channel-gap` instead of messages, while older messages of other
# channels stay retained.
#
# Control: the same lag with room in the zone loses nothing.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_cmp publish_server);

my $LIVE = 50;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF' . publish_server());
    channel_zone zone=small:1m history=2 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_channel $ch; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'small', port => 1) }

my $s = $t->sse_open('/events/live');
is($s->status, 200, 'a subscriber of "live"');
my $holder;
$t->wait_for(sub {
    my ($w) = grep { $_->{subscribers} > 0 } @{ zone()->{workers} };
    $holder = $w && $w->{pid};
}, timeout => 5);
ok($holder, "its worker is $holder");

my $payload = 'p' x 900;

# A keep-alive connection the other worker accepted: publishes on it never wait for the
# stopped one (a new connection may be queued for it).
my $pub = $t->client_of_other_worker($holder);
ok($pub, 'a publishing connection served by the other worker');

# The subscriber's worker is stopped while $LIVE messages are published to "live" by the
# other worker, then resumed; returns the messages and gap notices the subscriber gets.
sub lagging_round {
    my ($tag) = @_;
    kill 'STOP', $holder;
    my @ids;
    my $ok = eval {
        push @ids, $t->publish('live', sprintf("%s-%02d:%s", $tag, $_, $payload), client => $pub) for 1 .. $LIVE;
        1;
    };
    kill 'CONT', $holder;
    die $@ unless $ok;
    my (@got, $gaps);
    while (my $e = $s->next_event(timeout => 3)) {
        if (($e->{event} // '') eq 'channel-gap') { $gaps++; next }
        push @got, $1 if ($e->{data} // '') =~ /^\Q$tag\E-(\d+):/;
        last if @got && $got[-1] == $LIVE;
    }
    return (scalar @got, $gaps // 0);
}

# ---- control: the zone has room
{
    my ($n, $gaps) = lagging_round('roomy');
    is($n, $LIVE, "with room in the zone, a lagging worker's subscriber gets all $LIVE messages");
    is($gaps, 0, 'and no gap');
}

# ---- fill the zone with older messages of other channels (two per channel: history=2)
my $i = 0;
$i++ while $t->publish(sprintf('old%04d', int($i / 2)), "old $i $payload") && ($i < 20 || zone()->{evicted} == 0) && $i < 5000;
$t->publish(sprintf('old%04d', int(($i + $_) / 2)), "old more $_ $payload") for 1 .. 20;
my $full = zone();
ok($full->{evicted} > 0, "the zone is full: $full->{messages} messages retained, $full->{evicted} evicted so far");
my $oldest = $t->http(GET => '/pub/old0200', port => 1)->{json};

{
    my ($n, $gaps) = lagging_round('full');
    my $after = zone();
    my $old_left = $t->http(GET => '/pub/old0200', port => 1)->{json};
    note(sprintf('full zone: the subscriber got %d of %d live messages and %d gap notices; the zone evicted %d more '
                 . 'messages and still retains %d, e.g. old0200 (published before every live message): %s',
                 $n, $LIVE, $gaps, $after->{evicted} - $full->{evicted}, $after->{messages},
                 $old_left ? "$old_left->{messages} messages, oldest $old_left->{oldest_event_id}" : 'gone'));
    is($n, $LIVE, "in a full zone, a lagging worker's subscriber still gets all $LIVE messages (older messages are evicted first)");
    is($gaps, 0, 'and no gap');
}

done_testing;
