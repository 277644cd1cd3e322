#!/usr/bin/perl
# history=N (README "channel_zone"): a channel keeps at most N messages, the oldest go first; per
# channel, per zone.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:2m history=100 ttl=1h;
    channel_zone zone=short:256k history=5;
    channel_zone zone=dflt:1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$   { publish_channel $ch zone=events; }
        location ~ ^/short/(?<ch>[^/]+)$ { publish_channel $ch zone=short; }
        location ~ ^/dflt/(?<ch>[^/]+)$  { publish_channel $ch zone=dflt; }
        location = /stats                { channel_stats; }
    }
CONF

# Publishes n messages on one keep-alive connection; returns (ids, last answer).
sub publish_n {
    my ($path, $n) = @_;
    my $c = $t->client;
    my (@ids, $r, @counts);
    for my $i (1 .. $n) {
        $r = $c->request(POST => $path, body => "message $i");
        last unless $r->{status} == 201;
        push @ids, $r->{json}{id};
        push @counts, $r->{json}{messages};
    }
    $c->close;
    return (\@ids, $r, \@counts);
}

my ($ids, $r, $counts) = publish_n('/pub/h', 150);
is(scalar(@$ids), 150, '150 publishes answered 201') or diag explain $r;
is_deeply([@$counts[0, 49, 98, 99, 100, 149]], [1, 50, 99, 100, 100, 100],
          'the 201 answer reports the messages retained: growing to 100, then staying');
my $info = $t->http(GET => '/pub/h')->{json};
is($info->{messages}, 100, 'history=100: 100 messages retained after 150 publishes');
is($info->{oldest_event_id}, $ids->[50], 'the oldest retained is the 51st published');
is($info->{last_event_id}, $ids->[149], 'the newest retained is the last published');

# Another channel of the same zone is not affected by h's trimming.
my ($ids2) = publish_n('/pub/other', 3);
my $i2 = $t->http(GET => '/pub/other')->{json};
is_deeply([@$i2{qw(messages oldest_event_id last_event_id)}], [3, $ids2->[0], $ids2->[2]], 'other channel: its own 3');
is($t->http(GET => '/pub/h')->{json}{messages}, 100, 'h unchanged');

# history=5 in another zone.
my ($ids3) = publish_n('/short/s', 12);
my $i3 = $t->http(GET => '/short/s')->{json};
is_deeply([@$i3{qw(messages oldest_event_id last_event_id)}], [5, $ids3->[7], $ids3->[11]],
          'history=5: the newest 5 of 12 retained');

# Default history (100) when the zone does not say.
my ($ids4) = publish_n('/dflt/d', 105);
my $i4 = $t->http(GET => '/dflt/d')->{json};
is_deeply([@$i4{qw(messages oldest_event_id)}], [100, $ids4->[5]], 'default history is 100');

# Zone-wide counters agree.
my $st = $t->stats('/stats');
my %z = map { $_->{name} => $_ } @{ $st->{zones} };
is($z{events}{messages}, 103, 'stats: events zone retains 100 + 3');
is($z{events}{published}, 153, 'stats: events zone published 153');
is($z{short}{messages}, 5, 'stats: short zone retains 5');
is($z{events}{evicted} + $z{short}{evicted}, 0, 'history trimming is not counted as eviction');

# ids trimmed away are the oldest: after trimming, a new publish still goes to the end.
$r = $t->http(POST => '/pub/h', body => 'one more');
ok(id_cmp($r->{json}{id}, $ids->[149]) > 0, 'publishing after trimming appends');
$info = $t->http(GET => '/pub/h')->{json};
is($info->{oldest_event_id}, $ids->[51], 'and trims exactly one more from the front');

done_testing;
