#!/usr/bin/perl
# Issue 11, finding 1 (README "channel_zone", "What one client can cost": the zone): a channel flood
# from subscribers.
#
# A 1m zone holds 100 messages on `news`. Anonymous subscribers name 64 random channels each
# (channels that do not exist). Subscribers never evict or trim a published message and never
# make a publish fail; what channels without messages cost (with their subscribers' records)
# is capped at 1/8 of the zone, past which such subscribers get 503 with Retry-After while
# subscribers of existing channels are still served; and channels a subscriber brought into
# the zone are freed as soon as its last subscriber leaves (stats `channels` back to the real
# count at once, not after ttl).
#
# Two variants, as in the issue: 80 subscribers closed at once, and subscribers held open.
#
# Before the fix: subscribing created and pinned a Channel per name and eviction freed
# messages before idle channels. Closed at once: messages 100 -> 0, evicted 100, GET /pub/news
# 404, ~4,000 empty channels left for ttl. Held: publishes 507, real subscribers 503.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;
use Attack qw(rand_ids);

srand(11);
my $ZONE = 1024 * 1024;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:1m history=100 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /events                   { sse_channel $arg_ch; }
        location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'events', port => 1) }
sub news_messages { my $r = $t->http(GET => '/pub/news', port => 1); $r->{status} == 200 ? $r->{json}{messages} : "status $r->{status}" }

# Opens a 64-channel subscriber of random new names; returns the stream (header read).
sub flood_one {
    my @ids = rand_ids(64, 4);
    return $t->sse_open('/events?ch=' . join(',', @ids), timeout => 10);
}

# 503 with Retry-After and a one-line body: the only refusal a flood may get.
sub refused_properly {
    my $s = shift;
    return $s->status == 503 && defined $s->header('retry-after') && $s->header('retry-after') =~ /^\d+$/
        && ($s->body // '') =~ /^[^\n]*\n?$/;
}

for my $i (1 .. 100) { $t->publish('news', sprintf('news %03d ', $i) . ('n' x 500)) }
my $z0 = zone();
is($z0->{messages}, 100, '100 messages retained on news');
is($z0->{channels}, 1, 'one channel');

# ================================================================ closed at once
{
    my (%status, $bad);
    for my $i (1 .. 80) {
        my $s = flood_one();
        $status{ $s->status }++;
        $bad //= "request $i: status " . $s->status . ' ' . ($s->body // '') if $s->status != 200 && !refused_properly($s);
        $s->close;
    }
    note('closed at once: statuses ' . join(', ', map { "$_ x$status{$_}" } sort keys %status));
    ok(!$bad, 'every flood request answered 200, or 503 with Retry-After') or diag $bad;
    ok($status{200}, 'flood requests are served while the cap allows');
    my $z = zone();
    note("closed at once: messages $z->{messages}, evicted +" . ($z->{evicted} - $z0->{evicted})
       . ", channels $z->{channels}, used $z->{used} of $z->{size}");
    is($z->{messages}, 100, 'closed at once: no message lost (stats messages still 100)');
    is($z->{evicted} - $z0->{evicted}, 0, 'closed at once: nothing evicted');
    is(news_messages(), 100, 'closed at once: GET /pub/news still shows 100 messages');
    my $back = $t->wait_for(sub { zone()->{channels} == 1 }, timeout => 3);
    note('closed at once: channels 3 s later: ' . zone()->{channels});
    ok($back, 'closed at once: the flood channels are gone as soon as their subscribers left (channels back to 1)')
        or diag 'channels: ' . zone()->{channels};
}

# ================================================================ held open
{
    my $used0 = zone()->{used};
    my (@held, %status, $first_refusal, $bad);
    for my $i (1 .. 400) {
        my $s = flood_one();
        $status{ $s->status }++;
        if ($s->status == 200) {
            push @held, $s;
            next;
        }
        $bad //= "request $i: status " . $s->status . ' ' . ($s->body // '') unless refused_properly($s);
        $first_refusal //= $i;
        last if $status{503} && $status{503} >= 5;
    }
    note('held: statuses ' . join(', ', map { "$_ x$status{$_}" } sort keys %status)
       . '; first refusal at request ' . ($first_refusal // 'none'));
    ok(!$bad, 'held: every flood request answered 200, or 503 with Retry-After') or diag $bad;
    ok($first_refusal, 'held: past the cap, subscribers of new channels are refused (503)');

    my $z = zone();
    my $grew = $z->{used} - $used0;
    note("held: zone used $used0 -> $z->{used} (+$grew bytes) with " . scalar(@held) . ' flood subscribers');
    cmp_ok($grew, '<=', $ZONE / 8 + 16 * 4096, 'held: channels without messages take at most 1/8 of the zone (+ 16 pages)');
    is($z->{messages}, 100, 'held: no message lost');
    is($z->{evicted} - $z0->{evicted}, 0, 'held: nothing evicted');
    is(news_messages(), 100, 'held: GET /pub/news still shows 100 messages');

    my $real = $t->sse_open('/events/news');
    is($real->status, 200, 'held: a subscriber of an existing channel is still served');
    my (%pub, $pubfail);
    for my $i (1 .. 100) {
        my $r = $t->http(POST => '/pub/news', port => 1, body => "more $i " . ('m' x 500));
        $pub{ $r->{status} }++;
        $pubfail //= "publish $i: $r->{status} $r->{body}" if $r->{status} != 201;
    }
    note('held: publishes ' . join(', ', map { "$_ x$pub{$_}" } sort keys %pub));
    ok(!$pubfail, 'held: 100 more publishes to news all answered 201') or diag $pubfail;
    my $r = $t->http(POST => '/pub/fresh', port => 1, body => 'a new channel by a publisher');
    is($r->{status}, 201, 'held: a publish creating a new channel answered 201');
    my $e = $real->next_event(timeout => 5);
    like($e && $e->{data}, qr/^more 1 /, 'held: the real subscriber receives');
    is(zone()->{evicted} - $z0->{evicted}, 0, 'held: still nothing evicted after the publishes');

    my $s = flood_one();
    ok(refused_properly($s), 'held: another flood subscriber is refused with 503 + Retry-After')
        or diag 'status ' . $s->status;
    $s->close;

    $_->close for @held, $real;
    my $back = $t->wait_for(sub { my $zz = zone(); $zz->{channels} == 2 && $zz->{subscribers} == 0 }, timeout => 5);
    ok($back, 'held: once the flood subscribers left, channels back to 2 (news, fresh) at once')
        or diag explain zone();
    my $s2 = flood_one();
    is($s2->status, 200, 'held: after they left, a new 64-channel subscriber is served again');
    $s2->close;
}

done_testing;
