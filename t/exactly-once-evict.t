#!/usr/bin/perl
# Issue 12, finding 2: a subscriber's arrival never evicts or trims a message (README
# "channel_zone", "What one client can cost": subscribers never evict or trim a published message
# nor make a publish fail).
#
# A small zone is filled by publishes to four channels until it evicts; what it retains is read back
# (long-poll with a cursor answers at once and attaches nothing) and must be a suffix of the zone's
# publish order. Then subscribers arrive: SSE and long-poll on the existing channels, SSE on
# hundreds of new channels (64 per request). Those of new channels may be refused with 503 (the cap
# of README "What one client can cost"), those of existing channels never. Afterwards the zone's
# `evicted` and `messages`, every channel's info and the read-back retained set are exactly as
# before, and a publish still succeeds.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=small:1m history=10000 ttl=1h;
    longpoll_timeout 60s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_ping 0; sse_channel $ch; }
        location = /multi                   { sse_ping 0; sse_channel $arg_ch; }
        location ~ ^/poll/(?<ch>[\w.-]+)$   { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
        location = /stats                   { channel_stats; }
    }
CONF

my @channels = map { "full$_" } 1 .. 4;
my @published;   # [id, channel, data] in publish (= id) order

sub zone { $t->zone_stats('/stats', 'small', port => 1) }

# Fill: ~3 KB messages (one slab page each) round-robin until the zone has evicted, then more.
my ($i, $extra) = (0, 0);
while ($extra < 40 && $i < 5000) {
    my $ch = $channels[ $i % @channels ];
    my $data = sprintf('%s-%05d:', $ch, $i) . ('x' x 3000);
    push @published, [ $t->publish($ch, $data), $ch, $data ];
    $i++;
    $extra++ if $extra || ($i % 20 == 0 && zone()->{evicted} > 0);
}
my $before = zone();
ok($before->{evicted} > 0, "the zone filled up and evicted ($before->{evicted} of $i messages)");

sub infos {
    my %info;
    for my $ch (@channels) {
        my $r = $t->http(GET => "/pub/$ch", port => 1);
        $info{$ch} = $r->{json} ? join(' ', map { $_ // 'null' } @{ $r->{json} }{qw(messages oldest_event_id last_event_id)})
                                : "status $r->{status}";
    }
    return \%info;
}

# Everything a channel retains, read with long-polls from the start (each answers at once).
sub read_back {
    my %ids;
    for my $ch (@channels) {
        my ($cursor, @got) = ('0-0');
        for (1 .. 100) {
            my $r = $t->poll("/poll/$ch", cursor => $cursor, timeout => 10);
            last unless $r->{status} == 200 && $r->{json};
            push @got, map { $_->{id} } @{ $r->{json}{messages} };
            $cursor = $r->{json}{last_event_id};
            last if $cursor eq $published[-1][0] || $cursor eq (grep { $_->[1] eq $ch } @published)[-1][0];
        }
        $ids{$_} = 1 for @got;
    }
    return \%ids;
}

# The retained set is a suffix of the zone's publish order: no message kept after an older
# one of any channel was evicted.
sub suffix_problem {
    my $kept = shift;
    my $seen_kept;
    for my $p (@published) {
        if ($kept->{ $p->[0] }) { $seen_kept = $p->[0]; next }
        return "message $p->[0] ($p->[1]) is gone though the older $seen_kept is kept" if $seen_kept;
    }
    return undef;
}

my $info_before = infos();
my $kept_before = read_back();
is(suffix_problem($kept_before), undef, 'before subscribers: the retained set is a suffix of publish order');
my $nkept = keys %$kept_before;
ok($nkept > 0 && $nkept < @published, "$nkept of " . scalar(@published) . ' messages retained');
is(zone()->{evicted}, $before->{evicted}, 'reading back evicted nothing');

# Subscribers arrive.
my (@streams, @polls, %status);
for my $ch (@channels) {
    for (1 .. 3) {
        my $s = $t->sse_open("/events/$ch");
        $status{existing}{ $s->status }++;
        push @streams, $s;
    }
    # one resuming from its channel's oldest retained message: a replay that is not read
    my ($oldest) = grep { $kept_before->{ $_->[0] } && $_->[1] eq $ch } @published;
    my $s = $t->sse_open("/events/$ch", headers => { 'Last-Event-ID' => $oldest->[0] }, rcvbuf => 4096);
    $status{existing}{ $s->status }++;
    push @streams, $s;
    push @polls, $t->poll_start("/poll/$ch") for 1 .. 2;
}
my $n = 0;
for my $r (1 .. 10) {
    my $list = join ',', map { 'new' . $n++ } 1 .. 64;
    my $s = $t->sse_open("/multi?ch=$list");
    $status{new}{ $s->status }++;
    push @streams, $s;
}
for (1 .. 60) {
    my $s = $t->sse_open('/events/new' . $n++);
    $status{new}{ $s->status }++;
    push @streams, $s;
}
is_deeply([ keys %{ $status{existing} } ], [200], 'subscribers of existing channels are all served (200)')
    or diag explain $status{existing};
ok(!grep({ $_ != 200 && $_ != 503 } keys %{ $status{new} }), 'subscribers of new channels: 200, or 503 past the cap')
    or diag explain $status{new};
ok($t->wait_for(sub { $t->subscribers($channels[-1]) >= 6 }, timeout => 10), 'the long-polls wait');

my $after = zone();
is($after->{evicted}, $before->{evicted}, 'no message evicted by subscribers arriving')
    or diag("evicted went from $before->{evicted} to $after->{evicted}");
is($after->{messages}, $before->{messages}, 'the zone still retains as many messages');
is_deeply(infos(), $info_before, 'every channel retains the same messages (GET info)');
my $kept_after = read_back();
is_deeply([ sort keys %$kept_after ], [ sort keys %$kept_before ], 'the read-back retained set is unchanged');
is(suffix_problem($kept_after), undef, 'and still a suffix of publish order');

# Publishing still works, and reaches the subscribers of existing channels.
my $id = $t->publish($channels[0], 'after the subscribers');
ok($id, 'a publish succeeds with the subscribers in place');
my $got = 0;
for my $s (grep { ($_->header('content-type') // '') =~ /event-stream/ } @streams[0 .. 2]) {
    my $ev = $s->next_event(timeout => 10);
    $got++ if $ev && ($ev->{id} // '') eq $id;
}
is($got, 3, 'the live subscribers of that channel get it');
$_->close for @streams;
$_->close for @polls;

done_testing;
