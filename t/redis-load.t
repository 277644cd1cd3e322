#!/usr/bin/perl
# channel_redis under load (README "channel_redis"): 1000 SSE subscribers on host B, 100 messages
# published on host A through the shared Redis. Every subscriber gets every message once, in order.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);
use RedisServer;
use Time::HiRes ();

RedisServer->skip_all_unless_available;

my $N = 1000;
my $M = 100;
my $redis = RedisServer->new;
my $A = $redis->host(prefix => 'rl:');
my $B = $redis->host(prefix => 'rl:');

my $t0 = Time::HiRes::time();
my @subs;
for (1 .. $N) {
    my $s = $B->sse_open('/events/load');
    last unless $s->status == 200;
    push @subs, $s;
}
is(scalar(@subs), $N, "$N SSE subscribers on B");
ok($B->wait_for(sub { ($B->http(GET => '/pub/load', port => 1)->{json}{subscribers} // 0) == $N }, timeout => 10),
   "B counts $N subscribers of the channel");
my $before = $B->zone_stats('/stats', 'events', port => 1);
diag(sprintf('subscribed in %.1f s', Time::HiRes::time() - $t0));

$t0 = Time::HiRes::time();
my $c = $A->client(port => 1);
my @sent;
for my $i (1 .. $M) {
    my $r = $c->request(POST => '/pub/load', body => "load $i");
    last unless $r->{status} == 201;
    push @sent, [ $r->{json}{id}, "load $i" ];
}
$c->close;
is(scalar(@sent), $M, "$M publishes on A answered 201");
diag(sprintf('published in %.2f s', Time::HiRes::time() - $t0));

$t0 = Time::HiRes::time();
my ($complete, @bad) = (0);
for my $k (0 .. $#subs) {
    my @got;
    while (@got < $M) {
        my $e = $subs[$k]->next_event(timeout => 10) or last;
        push @got, [ $e->{id}, $e->{data} ];
    }
    if (@got == $M && !grep { $got[$_][0] ne $sent[$_][0] || $got[$_][1] ne $sent[$_][1] } 0 .. $M - 1) {
        $complete++;
    } else {
        push @bad, $k;
    }
}
is($complete, $N, "every subscriber got all $M messages, in order, with A's ids")
    or diag(scalar(@bad) . " subscribers differ, first: #$bad[0]");
diag(sprintf('read in %.1f s', Time::HiRes::time() - $t0));

# Nothing more (no duplicate) arrives: a marker is the very next event everywhere.
my $end = $A->http(POST => '/pub/load', body => 'load end', port => 1);
is($end->{status}, 201, 'marker published on A');
my $next_ok = grep { my $e = $_->next_event(timeout => 10); $e && $e->{data} eq 'load end' && $e->{id} eq $end->{json}{id} }
    @subs;
is($next_ok, $N, 'the marker is the next event for every subscriber: no duplicates');

# A burst: 100 more, 20 in flight at a time on A's two workers; delivered in id order.
my @burst;
for my $round (0 .. 4) {
    my @p = map { [ "burst $_", $A->request_start(POST => '/pub/load', body => "burst $_", port => 1) ] }
        $round * 20 + 1 .. $round * 20 + 20;
    for (@p) {
        my $r = $_->[1]->response(timeout => 10);
        push @burst, [ $r->{json}{id}, $_->[0] ] if $r->{status} == 201;
    }
}
is(scalar(@burst), $M, "$M concurrent publishes on A answered 201");
@burst = sort { id_cmp($a->[0], $b->[0]) } @burst;
my $burst_ok = 0;
for my $s (@subs) {
    my @got;
    while (@got < $M) {
        my $e = $s->next_event(timeout => 10) or last;
        push @got, [ $e->{id}, $e->{data} ];
    }
    $burst_ok++ if @got == $M && !grep { $got[$_][0] ne $burst[$_][0] || $got[$_][1] ne $burst[$_][1] } 0 .. $M - 1;
}
is($burst_ok, $N, 'every subscriber got the burst once, in id order');

my $after = $B->zone_stats('/stats', 'events', port => 1);
cmp_ok($after->{delivered} - $before->{delivered}, '>=', $N * (2 * $M + 1), "B's stats count the deliveries");
is($after->{subscribers}, $N, "B's stats: $N subscribers");
is(($A->zone_stats('/stats', 'events', port => 1) // {})->{subscribers}, 0, "A's stats: none of its own");
$_->close for @subs;

done_testing;
