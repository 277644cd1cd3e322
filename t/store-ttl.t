#!/usr/bin/perl
# ttl (README "channel_zone"): no message is kept longer than ttl; a channel with no messages and no
# subscribers is removed after ttl; expiry happens without further requests to the channel.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;
use Time::HiRes ();

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:1m history=100 ttl=1s;
    channel_zone zone=keep:1m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$  { publish_channel $ch zone=events; }
        location ~ ^/keep/(?<ch>[^/]+)$ { publish_channel $ch zone=keep; }
        location = /stats               { channel_stats zone=events; }
        location = /stats/keep          { channel_stats zone=keep; }
    }
CONF

my $t0 = Time::HiRes::time();
my @ids = map { $t->http(POST => '/pub/t1', body => "m$_")->{json}{id} } 1 .. 3;
my $r = $t->http(GET => '/pub/t1');
my $elapsed = Time::HiRes::time() - $t0;
is($r->{json}{messages}, 3, 'messages retained right after publishing')
    or diag "after ${elapsed}s";
$t->http(POST => '/keep/k', body => 'long-lived');

# Expiry seen through the channel info: messages drop to 0 (or the channel is already gone).
my $gone = $t->wait_for(sub {
    my $x = $t->http(GET => '/pub/t1');
    $x->{status} == 404 || ($x->{status} == 200 && $x->{json}{messages} == 0);
}, timeout => 10);
ok($gone, 'ttl=1s: the messages expire');
my $took = Time::HiRes::time() - $t0;
cmp_ok($took, '>=', 0.9, "not before the ttl ($took s)");

# An empty channel without subscribers is removed after ttl.
ok($t->wait_for(sub { $t->http(GET => '/pub/t1')->{status} == 404 }, timeout => 10),
   'the empty channel is removed');

# Expiry without touching the channel: only stats are read.
$t->http(POST => '/pub/t2', body => 'x') for 1 .. 5;
my $st = $t->zone_stats('/stats', 'events');
is($st->{messages}, 5, 'stats: 5 messages just published');
ok($t->wait_for(sub { my $z = $t->zone_stats('/stats', 'events'); $z->{messages} == 0 && $z->{channels} == 0 },
                timeout => 10), 'stats: messages and channels collected without requests to the channel');
$st = $t->zone_stats('/stats', 'events');
is($st->{published}, 8, 'published counter is not reduced by expiry');
is($st->{evicted}, 0, 'expiry is not eviction');

# The other zone (ttl=1h) keeps its message all along.
is($t->http(GET => '/keep/k')->{json}{messages}, 1, 'a zone with ttl=1h keeps its message');

done_testing;
