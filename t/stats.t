#!/usr/bin/perl
# channel_stats (README "Statistics"): per-zone JSON fields and values, zone= selection, worker
# list, and the Prometheus text format (parsed here; `promtool check metrics` runs elsewhere).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:1m history=100 ttl=1h;
    channel_zone zone=other:256k history=5 ttl=10m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$   { publish_channel $ch zone=events; }
        location ~ ^/other/(?<ch>[^/]+)$ { publish_channel $ch zone=other; }
        location = /stats                { channel_stats; }
        location = /stats/events         { channel_stats zone=events; }
    }
CONF

my @FIELDS = qw(name size used channels messages subscribers published delivered evicted dropped_slow);
my @NUMERIC = grep { $_ ne 'name' } @FIELDS;

# ---- JSON at start
my $r = $t->http(GET => '/stats');
is($r->{status}, 200, 'stats: 200');
like($r->{headers}{'content-type'}, qr{^application/json}, 'stats: JSON');
my $j = $r->{json};
ok(ref $j eq 'HASH' && ref $j->{zones} eq 'ARRAY', 'stats: {"zones":[...]}') or diag $r->{body};
is_deeply([sort map { $_->{name} } @{ $j->{zones} }], [qw(events other)], 'all zones listed');
my %z = map { $_->{name} => $_ } @{ $j->{zones} };
for my $f (@FIELDS) {
    ok(exists $z{events}{$f}, "field $f present");
}
for my $f (@NUMERIC) {
    like($r->{body}, qr/"$f"\s*:\s*\d+[,}\s]/, "$f is a JSON integer");
}
is($z{events}{size}, 1024 * 1024, 'size is the configured zone size');
is($z{other}{size}, 256 * 1024, 'size of the other zone');
ok($z{events}{used} > 0 && $z{events}{used} <= $z{events}{size}, "0 < used <= size ($z{events}{used})");
is_deeply([@{ $z{events} }{qw(channels messages subscribers published delivered evicted dropped_slow)}],
          [0, 0, 0, 0, 0, 0, 0], 'counters start at zero');

# ---- values follow publishes
$t->http(POST => '/pub/a', body => "a$_") for 1 .. 3;
$t->http(POST => '/pub/b', body => "b$_") for 1 .. 2;
$t->http(POST => '/other/c', body => "c$_") for 1 .. 7;
%z = map { $_->{name} => $_ } @{ $t->stats('/stats')->{zones} };
is_deeply([@{ $z{events} }{qw(channels messages published subscribers)}], [2, 5, 5, 0], 'events: 2 channels, 5 messages, 5 published');
is_deeply([@{ $z{other} }{qw(channels messages published)}], [1, 5, 7], 'other: history=5 keeps 5 of 7 published');
cmp_ok($z{events}{used}, '>', 0, 'used grew');

my $used_before = $z{events}{used};
$t->http(POST => '/pub/a', body => 'x' x 20000);
cmp_ok($t->zone_stats('/stats', 'events')->{used}, '>=', $used_before + 20000, 'used reflects a 20 KB message');

$t->http(DELETE => '/pub/b');
my $ev = $t->zone_stats('/stats', 'events');
is_deeply([@$ev{qw(channels messages published)}], [1, 4, 6], 'after DELETE: channels and messages drop, published stays');

# ---- zone= shows only that zone
$j = $t->stats('/stats/events');
is_deeply([map { $_->{name} } @{ $j->{zones} }], ['events'], 'channel_stats zone=events shows one zone');

# ---- workers: the live worker processes using the zone
my $wk = sub { my $z = $t->zone_stats('/stats', 'events'); [sort { $a <=> $b } map { $_->{pid} } @{ $z->{workers} || [] }] };
ok($t->wait_for(sub { "@{ $wk->() }" eq join(' ', $t->worker_pids) }, timeout => 5),
   'workers list = the running worker pids') or diag "stats: @{ $wk->() }; running: " . join(' ', $t->worker_pids);
ok($t->reload, 'reload');
ok($t->wait_for(sub { "@{ $wk->() }" eq join(' ', $t->worker_pids) }, timeout => 5),
   'after reload the list holds the new workers only') or diag "stats: @{ $wk->() }; running: " . join(' ', $t->worker_pids);
%z = map { $_->{name} => $_ } @{ $t->stats('/stats')->{zones} };
is_deeply([@{ $z{events} }{qw(channels messages published)}], [1, 4, 6], 'counters survive the reload');

# ---- Prometheus text
$r = $t->http(GET => '/stats?format=prometheus');
is($r->{status}, 200, 'prometheus: 200');
like($r->{headers}{'content-type'}, qr{^text/plain}, 'prometheus: text/plain');
like($r->{headers}{'content-type'}, qr{version=0\.0\.4}, 'prometheus: version=0.0.4');
my (%help, %type, %sample, @bad_lines, @order_bad);
for my $line (split /\n/, $r->{body}) {
    next if $line eq '';
    if ($line =~ /^# HELP (nginx_channels_[a-z_]+) \S.*$/) {
        $help{$1} = 1;
    } elsif ($line =~ /^# TYPE (nginx_channels_[a-z_]+) (gauge|counter)$/) {
        $type{$1} = $2;
    } elsif ($line =~ /^(nginx_channels_[a-z_]+)\{zone="([^"\\\n]*)"\} (\d+(?:\.\d+)?(?:e[+-]?\d+)?)$/) {
        push @order_bad, $1 unless $help{$1} && $type{$1};
        $sample{$1}{$2} = $3;
    } else {
        push @bad_lines, $line;
    }
}
is_deeply(\@bad_lines, [], 'every line is HELP, TYPE or name{zone="..."} value') or diag explain \@bad_lines;
is_deeply(\@order_bad, [], 'HELP and TYPE come before the samples of each metric');
my %want = (
    size_bytes => 'gauge', used_bytes => 'gauge', channels => 'gauge', messages => 'gauge',
    subscribers => 'gauge', published_total => 'counter', delivered_total => 'counter',
    evicted_total => 'counter', dropped_slow_total => 'counter',
);
for my $m (sort keys %want) {
    my $name = "nginx_channels_$m";
    is($type{$name}, $want{$m}, "$name: TYPE $want{$m}");
    ok($help{$name}, "$name: HELP");
    is_deeply([sort keys %{ $sample{$name} || {} }], [qw(events other)], "$name: one sample per zone");
}
for my $name (keys %type) {
    ok(($type{$name} eq 'counter') == ($name =~ /_total$/), "$name: counters and only counters end in _total");
}
%z = map { $_->{name} => $_ } @{ $t->stats('/stats')->{zones} };
for my $zn (qw(events other)) {
    is_deeply([map { $sample{"nginx_channels_$_"}{$zn} } qw(size_bytes channels messages published_total evicted_total)],
              [@{ $z{$zn} }{qw(size channels messages published evicted)}], "$zn: Prometheus values agree with JSON");
}
$r = $t->http(GET => '/stats/events?format=prometheus');
ok($r->{body} !~ /zone="other"/ && $r->{body} =~ /zone="events"/, 'zone=events: Prometheus shows one zone');

done_testing;
