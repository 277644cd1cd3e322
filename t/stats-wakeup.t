#!/usr/bin/perl
# The cross-worker wake-up (issue 2) seen through stats: with subscribers held by both workers,
# publishes handled by either worker reach every subscriber, and the per-worker counters
# (wakeups, entries_read) and the zone's delivered/subscribers counters move accordingly.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp);

my $t = ChannelsTest->new(workers => 2, start => 0, conf => <<'CONF');
    channel_zone zone=events:1m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
        location ~ ^/pub/(?<ch>[\w.:-]+)$    { publish_channel $ch; }
        location = /stats                    { channel_stats; }
    }
CONF
my ($ok, $out) = $t->test_config;
if (!$ok && $out =~ /unknown directive "(sse_channel)"/) {
    $t->skip_log_check;
    plan skip_all => "$1 not implemented yet";
}
$t->start;

sub workers { my $z = $t->zone_stats('/stats', 'events') || {}; return { map { $_->{pid} => $_ } @{ $z->{workers} || [] } } }

# Open streams until both workers hold at least one (reuseport spreads connections).
my @streams;
my $both = 0;
for (1 .. 40) {
    my $s = $t->sse_open('/events/wake');
    is($s->status, 200, 'subscriber connected') if @streams == 0;
    push @streams, $s;
    my $n = @streams;
    $t->wait_for(sub { my $w = workers(); my $sum = 0; $sum += $_->{subscribers} for values %$w; $sum >= $n }, timeout => 5);
    my $w = workers();
    if ((grep { $_->{subscribers} > 0 } values %$w) == 2) { $both = 1; last }
}
ok($both, 'both workers hold subscribers (' . scalar(@streams) . ' streams opened)');
my $S = @streams;
ok($t->wait_for(sub { ($t->zone_stats('/stats', 'events')->{subscribers} // 0) == $S }, timeout => 5),
   "stats subscribers = $S connections");

my $w0 = workers();
my $z0 = $t->zone_stats('/stats', 'events');
my @ids;
for my $i (1 .. 20) {
    my $r = $t->http(POST => '/pub/wake', body => "m$i");    # new connection each: both workers publish
    push @ids, $r->{json}{id};
    is($r->{json}{subscribers}, $S, "publish $i reports $S subscribers") if $i == 1;
}

my $all_ok = 1;
for my $k (0 .. $#streams) {
    my @got;
    while (@got < 20) {
        my $e = $streams[$k]->next_event(timeout => 5) or last;
        push @got, $e if defined $e->{data};
    }
    my $good = @got == 20 && join(',', map { $_->{id} } @got) eq join(',', @ids)
            && join(',', map { $_->{data} } @got) eq join(',', map { "m$_" } 1 .. 20);
    $all_ok &&= $good;
    diag("stream $k got " . scalar(@got) . " events") unless $good;
}
ok($all_ok, "every one of the $S streams got the 20 messages, in id order, whichever worker published");

my $w1;
ok($t->wait_for(sub { $w1 = workers(); !grep { ($w1->{$_}{entries_read} // 0) - ($w0->{$_}{entries_read} // 0) < 20 } keys %$w0 },
                timeout => 5), 'each worker read the 20 publish-log entries')
    or diag explain { before => $w0, after => $w1 };
my $wake = 0;
$wake += ($w1->{$_}{wakeups} // 0) - ($w0->{$_}{wakeups} // 0) for keys %$w0;
cmp_ok($wake, '>', 0, 'cross-worker wake-ups were received');
ok($t->wait_for(sub { $t->zone_stats('/stats', 'events')->{delivered} - $z0->{delivered} == 20 * $S }, timeout => 5),
   "delivered grew by 20 x $S");

$_->close for @streams;
ok($t->wait_for(sub { $t->zone_stats('/stats', 'events')->{subscribers} == 0 }, timeout => 5),
   'subscribers back to 0 after the clients closed');

done_testing;
