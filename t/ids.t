#!/usr/bin/perl
# Message ids (README "Publishing"): "<ms>-<counter>", strictly increasing in publish order across
# all channels of a zone, never backwards across `nginx -s reload` (the zone is reused intact) or a
# full stop/start.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_cmp id_parse);

my $conf = <<'CONF';
    channel_zone zone=events:4m history=1000 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch; }
        location = /stats              { channel_stats; }
    }
CONF
my $t = ChannelsTest->new(workers => 2, conf => $conf);

# Strictly increasing? Returns the index of the first offending pair, or -1.
sub first_disorder {
    my @ids = @_;
    for my $i (1 .. $#ids) {
        return $i if !defined $ids[$i] || !defined $ids[$i - 1] || id_cmp($ids[$i - 1], $ids[$i]) >= 0;
    }
    return -1;
}

# ---- format: publish time in ms, a dash, a counter
my $c = $t->client;
my $before = int(Time::HiRes::time() * 1000);
my $id = $t->publish('fmt', 'x', client => $c);
my $after = int(Time::HiRes::time() * 1000);
like($id, qr/^\d+-\d+$/, "id format ($id)");
my ($ms, $n) = id_parse($id);
ok($ms >= $before - 1000 && $ms <= $after + 1000, 'the ms part is the publish time')
    or diag "ms $ms not within [$before, $after]";

# ---- strictly increasing across channels, on one connection and on fresh ones
my @ids;
push @ids, $t->publish('ch' . ($_ % 7), "m$_", client => $c) for 1 .. 300;    # dies unless 201
is(first_disorder(@ids), -1, 'ids strictly increase across 7 channels (keep-alive)');
for my $i (1 .. 30) {
    my $r = $t->http(POST => '/pub/fresh' . ($i % 3), body => 'y');
    push @ids, $r->{json}{id};
}
is(first_disorder(@ids), -1, 'and on new connections (spread over 2 workers)');
my %seen;
is(scalar(grep { $seen{$_}++ } grep { defined } @ids), 0, 'no id repeats');

my $same_ms = grep { (id_parse($ids[$_ - 1]))[0] == (id_parse($ids[$_]))[0] } 1 .. $#ids;
note("$same_ms consecutive publishes shared a millisecond (the counter told them apart)");

my $st = $t->zone_stats('/stats', 'events');
is($st->{last_event_id}, $ids[-1], 'stats last_event_id is the newest id');

# ---- across nginx -s reload: the zone is reused (messages survive) and ids keep increasing
my $info = $t->http(GET => '/pub/ch1')->{json};
my $last = $ids[-1];
$c->close;
ok($t->reload, 'reload');
my $info2 = $t->http(GET => '/pub/ch1')->{json};
is_deeply($info2, $info, 'channel info unchanged by a reload (zone reused intact)');
my $r = $t->http(POST => '/pub/ch1', body => 'after reload');
is($r->{status}, 201, 'publish after reload');
ok(id_cmp($r->{json}{id}, $last) > 0, "id after reload ($r->{json}{id}) > last before ($last)");
is($r->{json}{messages}, $info->{messages} + 1, 'the retained history continues after reload');
$last = $r->{json}{id};

# A reload with a changed configuration (another zone, another location) keeps the zone too.
my $conf2 = <<'CONF';
    channel_zone zone=events:4m history=1000 ttl=1h;
    channel_zone zone=other:64k;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$   { publish_channel $ch zone=events; }
        location ~ ^/other/(?<ch>[^/]+)$ { publish_channel $ch zone=other; }
        location = /stats                { channel_stats zone=events; }
    }
CONF
ok($t->reload(conf => $conf2), 'reload with a changed configuration');
is($t->http(GET => '/pub/ch1')->{json}{messages}, $info->{messages} + 1, 'messages survive a changed-config reload');
$r = $t->http(POST => '/other/x', body => 'z');
is($r->{status}, 201, 'the new zone works');
ok(id_cmp($t->http(POST => '/pub/ch1', body => 'z')->{json}{id}, $last) > 0, 'ids still increase in the old zone');

# ---- several quick reloads while publishing: never backwards
my @around;
for my $round (1 .. 3) {
    push @around, $t->http(POST => '/pub/rl', body => "r$round")->{json}{id};
    ok($t->reload, "reload $round");
    push @around, $t->http(POST => '/pub/rl', body => "r$round b")->{json}{id};
}
is(first_disorder(@around), -1, 'ids increase across three reloads');
$last = $around[-1];

# ---- across a full stop/start (the zone is new; the clock must not go backwards)
my @burst;
$c = $t->client;
push @burst, $t->publish('restart', "b$_", client => $c) for 1 .. 50;
$c->close;
$last = $burst[-1];
ok($t->restart, 'full stop and start');
$r = $t->http(POST => '/pub/restart', body => 'after restart');
is($r->{status}, 201, 'publish after restart');
ok(id_cmp($r->{json}{id}, $last) > 0, "id after restart ($r->{json}{id}) > last before ($last)");

done_testing;
