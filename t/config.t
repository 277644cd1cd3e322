#!/usr/bin/perl
# Configuration (README "Directives"): channel_zone / publish_channel / channel_stats parameters
# that nginx -t must refuse (with an [emerg] naming the offending line where the parser can), ones
# it must accept, and configuration changes on reload (zone resized, history changed) keeping ids
# increasing.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);

my $server = <<'CONF';
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$ { %%PUB%% }
        location = /stats { channel_stats; }
    }
CONF

# $http: the http-level text; the line holding "#BAD" is where nginx should point.
sub check {
    my ($label, $http, $want_ok) = @_;
    my $t = ChannelsTest->new(start => 0, conf => $http);
    my ($ok, $out) = $t->test_config;
    if ($want_ok) {
        ok($ok, "accepted: $label") or diag $out;
        return;
    }
    ok(!$ok, "refused: $label");
    like($out, qr/\[emerg\]/, "$label: [emerg] explains");
    my @lines = split /\n/, $t->conf_text;
    my ($n) = grep { $lines[$_ - 1] =~ /#BAD/ } 1 .. @lines;
    like($out, qr/nginx\.conf:$n\b/, "$label: points at line $n") if $n;
}

sub with_pub {
    my ($zones, $pub) = @_;
    (my $s = $server) =~ s/%%PUB%%/$pub/;
    return "$zones\n$s";
}

# ---- refused
check('zone below 8 pages', with_pub('channel_zone zone=z:16k; #BAD', 'publish_channel $ch;'), 0);
check('no zone= parameter', with_pub('channel_zone history=5; #BAD', 'publish_channel $ch;'), 0);
check('zone without size', with_pub('channel_zone zone=z; #BAD', 'publish_channel $ch;'), 0);
check('zone with an empty name', with_pub('channel_zone zone=:1m; #BAD', 'publish_channel $ch;'), 0);
check('zone with a bad size', with_pub('channel_zone zone=z:lots; #BAD', 'publish_channel $ch;'), 0);
check('history=0', with_pub('channel_zone zone=z:1m history=0; #BAD', 'publish_channel $ch;'), 0);
check('history=-1', with_pub('channel_zone zone=z:1m history=-1; #BAD', 'publish_channel $ch;'), 0);
check('history=abc', with_pub('channel_zone zone=z:1m history=abc; #BAD', 'publish_channel $ch;'), 0);
check('ttl=abc', with_pub('channel_zone zone=z:1m ttl=abc; #BAD', 'publish_channel $ch;'), 0);
check('unknown parameter', with_pub('channel_zone zone=z:1m colour=blue; #BAD', 'publish_channel $ch;'), 0);
check('the same zone twice', with_pub("channel_zone zone=z:1m;\n    channel_zone zone=z:1m; #BAD", 'publish_channel $ch;'), 0);
check('channel_zone inside a server', "server { listen 127.0.0.1:%%PORT_0%%; channel_zone zone=z:1m; #BAD\n }", 0);
check('publish_channel without a channel', with_pub('channel_zone zone=z:1m;', 'publish_channel; #BAD'), 0);
check('publish_channel with two channels', with_pub('channel_zone zone=z:1m;', 'publish_channel $ch $arg_x; #BAD'), 0);
check('publish_channel naming an unknown zone', with_pub('channel_zone zone=z:1m;', 'publish_channel $ch zone=nope;'), 0);
check('publish_channel without zone= while two zones exist',
      with_pub("channel_zone zone=a:1m;\n    channel_zone zone=b:1m;", 'publish_channel $ch;'), 0);
check('publish_channel without any channel_zone', with_pub('', 'publish_channel $ch;'), 0);
check('two handlers in one location', with_pub('channel_zone zone=z:1m;', 'publish_channel $ch; channel_stats; #BAD'), 0);
check('channel_stats naming an unknown zone',
      "channel_zone zone=z:1m;\n server { listen 127.0.0.1:%%PORT_0%%; location / { channel_stats zone=nope; } }", 0);

# ---- accepted
check('zone of exactly 8 pages (32k)', with_pub('channel_zone zone=z:32k;', 'publish_channel $ch;'), 1);
check('zone= left out with exactly one zone', with_pub('channel_zone zone=z:1m history=7 ttl=90s;', 'publish_channel $ch;'), 1);
check('zone= given with two zones',
      with_pub("channel_zone zone=a:1m;\n    channel_zone zone=b:64k history=1 ttl=1d;", 'publish_channel $ch zone=b;'), 1);
check('channel from a variable with text around it', with_pub('channel_zone zone=z:1m;', 'publish_channel user-$ch;'), 1);

# ---- reload with a resized zone: nginx makes a new zone; ids still never go backwards
my $conf = sub {
    my ($size, $history) = @_;
    return with_pub("channel_zone zone=z:$size history=$history;", 'publish_channel $ch;');
};
my $t = ChannelsTest->new(workers => 2, conf => $conf->('1m', 100));
my $last;
$last = $t->http(POST => '/pub/a', body => "m$_")->{json}{id} for 1 .. 20;
ok($last, 'published to the first zone');
ok($t->reload(conf => $conf->('2m', 100)), 'reload with the zone resized');
my $r = $t->http(POST => '/pub/a', body => 'after resize');
is($r->{status}, 201, 'publish after the resize');
ok(id_cmp($r->{json}{id}, $last) > 0, 'id after resizing the zone > last id before');
my $z = $t->zone_stats('/stats', 'z');
is($z->{size}, 2 * 1024 * 1024, 'stats show the new size');

# ---- reload with another history: the new limit applies to the reused zone
$last = $r->{json}{id};
$t->http(POST => '/pub/h', body => "m$_") for 1 .. 20;
is($t->http(GET => '/pub/h')->{json}{messages}, 20, '20 retained with history=100');
ok($t->reload(conf => $conf->('2m', 5)), 'reload with history=5 (same zone size)');
$r = $t->http(POST => '/pub/h', body => 'after');
is($r->{status}, 201, 'publish after the history change');
is($r->{json}{messages}, 5, 'the new history limit applies at the next publish');
ok(id_cmp($r->{json}{id}, $last) > 0, 'ids still increase');

done_testing;
