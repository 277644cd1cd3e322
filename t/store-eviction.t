#!/usr/bin/perl
# Eviction under a small zone (README "channel_zone"): when the zone is full the oldest messages of
# the whole zone go first, publishing keeps answering 201, stats count evictions, and nothing is
# logged above info (a "no memory" line from the slab allocator would be [crit]: the harness' log
# check fails on it).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=small:256k history=1000 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        client_max_body_size 1m;
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch; }
        location = /stats              { channel_stats; }
    }
CONF

my $CHANNELS = 10;
my $c = $t->client;
my (%ids_of, @all, $status_bad);
my $n = 0;

sub publish_one {
    my ($ch, $body) = @_;
    my $r = $c->request(POST => "/pub/$ch", body => $body);
    $c = $t->client if $c->closed;
    if ($r->{status} != 201) {
        $status_bad //= "publish $n to $ch: $r->{status} " . ($r->{error} // $r->{body});
        return undef;
    }
    push @{ $ids_of{$ch} }, $r->{json}{id};
    push @all, $r->{json}{id};
    return $r;
}

my $st0 = $t->zone_stats('/stats', 'small');
is($st0->{evicted}, 0, 'no evictions at start');

# Publish 1000-byte messages round-robin until the zone evicts (a 256k zone cannot hold 3000 of them).
my $evicted_at;
while ($n < 3000) {
    my $ch = 'ev' . ($n % $CHANNELS);
    publish_one($ch, sprintf('%06d', $n) . ('x' x 994)) or last;
    $n++;
    if ($n % 10 == 0) {
        my $z = $t->zone_stats('/stats', 'small');
        if ($z->{evicted} > 0) { $evicted_at = $n; last }
    }
}
ok(!$status_bad, 'every publish answered 201 while filling the zone') or diag $status_bad;
ok($evicted_at, "stats show evictions once the zone is full (after $n publishes)");

# Publishing keeps working after evictions started.
my $more_ok = 0;
for (1 .. 200) {
    my $ch = 'ev' . ($n % $CHANNELS);
    $more_ok++ if publish_one($ch, sprintf('%06d', $n) . ('y' x 994));
    $n++;
}
is($more_ok, 200, '200 more publishes after eviction began: all 201') or diag $status_bad;

my $z = $t->zone_stats('/stats', 'small');
cmp_ok($z->{used}, '<=', $z->{size}, 'used <= size');
is($z->{published} - $st0->{published}, scalar(@all), 'published counts every message');
cmp_ok($z->{evicted}, '>', 0, 'evicted > 0');
is($z->{messages} + $z->{evicted}, scalar(@all), 'messages retained + evicted = published (history and ttl not reached)');

# The retained set is exactly the newest K messages of the zone (oldest evicted first, across channels).
my @sorted = sort { id_cmp($a, $b) } @all;
my $K = $z->{messages};
my $threshold = $sorted[-$K];
my ($sum, $mismatch) = (0, 0);
for my $i (0 .. $CHANNELS - 1) {
    my $ch = "ev$i";
    my $info = $t->http(GET => "/pub/$ch")->{json};
    my @kept = grep { id_cmp($_, $threshold) >= 0 } @{ $ids_of{$ch} };
    $sum += $info->{messages};
    my $want = [ scalar(@kept), @kept ? ($kept[0], $kept[-1]) : (undef, undef) ];
    my $got  = [ @$info{qw(messages oldest_event_id last_event_id)} ];
    is_deeply($got, $want, "$ch keeps exactly its messages among the zone's newest $K")
        or $mismatch++;
}
is($sum, $K, 'the channels together hold what stats report');

# A large message that fits in an empty zone (but not now) evicts as much as needed and is accepted.
my $before = $t->zone_stats('/stats', 'small');
my $r = $c->request(POST => '/pub/big', body => 'B' x (64 * 1024));
is($r->{status}, 201, 'a 64 KiB message in a full 256 KiB zone: 201 (evicts instead of 507)');
my $after = $t->zone_stats('/stats', 'small');
cmp_ok($after->{evicted}, '>', $before->{evicted} + 10, 'it evicted older messages to make room');
is($t->http(GET => '/pub/big')->{json}{messages}, 1, 'the large message is retained');
my $ok_after = 0;
for (1 .. 20) {
    $ok_after++ if publish_one('ev0', 'z' x 1000);
}
is($ok_after, 20, 'small publishes continue after the large one');
$c->close;

done_testing;
