#!/usr/bin/perl
# A worker killed while publishes are in flight (README "Errors and failures"): the master replaces
# it, the zone stays consistent (ids unique and increasing, counters agree with what the channel
# holds), publishing goes on.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use ChannelsTest qw(id_cmp);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=1000 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch; }
        location = /stats              { channel_stats; }
    }
CONF
$t->allow_log(qr/worker process \d+ exited on signal 9/);

my $PER = 150;
my @kids;
for my $p (1 .. 2) {
    pipe(my $rd, my $wr) or die;
    my $pid = fork // die;
    if (!$pid) {
        close $rd;
        my $out = '';
        for my $i (1 .. $PER) {
            my $r = $t->http(POST => '/pub/crash', body => "p$p-$i", timeout => 5);
            $out .= $r->{status} == 201 ? "$r->{json}{id}\n" : "FAIL $r->{status}\n";
        }
        print $wr $out;
        close $wr;
        POSIX::_exit(0);
    }
    close $wr;
    push @kids, [ $pid, $rd ];
}

# Kill one worker once publishing is under way.
ok($t->wait_for(sub { my $z = $t->zone_stats('/stats', 'events'); $z && $z->{published} >= 20 }, timeout => 10),
   'publishing under way');
my @before = $t->worker_pids;
my $victim = $before[0];
ok(kill('KILL', $victim), "kill -9 worker $victim");
ok($t->wait_for(sub { my @w = $t->worker_pids; @w == 2 && !grep { $_ == $victim } @w }, timeout => 10),
   'the master started a replacement worker');

my (@ok_ids, $failed);
for my $k (@kids) {
    my ($pid, $fh) = @$k;
    local $/;
    my $text = <$fh> // '';
    waitpid $pid, 0;
    my @lines = split /\n/, $text;
    is(scalar(@lines), $PER, "publisher $pid: an answer (or failure) for each request");
    my @ids = grep { !/^FAIL/ } @lines;
    $failed += @lines - @ids;
    my $disorder = grep { id_cmp($ids[$_ - 1], $ids[$_]) >= 0 } 1 .. $#ids;
    is($disorder, 0, "publisher $pid: ids strictly increase");
    push @ok_ids, @ids;
}
note("$failed publishes failed while the worker died (connections it held)");
cmp_ok($failed, '<=', 10, 'only requests in flight on the killed worker failed');

my %seen;
is(scalar(grep { $seen{$_}++ } @ok_ids), 0, 'ids unique');

# Consistency: what the channel holds agrees with stats, and every 201 is retained.
my $info = $t->http(GET => '/pub/crash')->{json};
my $z = $t->zone_stats('/stats', 'events');
my @sorted = sort { id_cmp($a, $b) } @ok_ids;
cmp_ok($info->{messages}, '>=', scalar(@ok_ids), 'every acknowledged message is retained');
cmp_ok($info->{messages}, '<=', 2 * $PER, 'and no more than were sent');
is($z->{messages}, $info->{messages}, 'stats messages = channel messages');
is($z->{published}, $info->{messages}, 'stats published = messages retained (history not reached)');
ok(id_cmp($info->{last_event_id}, $sorted[-1]) >= 0, 'newest retained id is at least the newest acknowledged');

# Publishing continues normally, on both workers.
my $after_ok = 0;
my $prev = $info->{last_event_id};
my $mono = 1;
for (1 .. 40) {
    my $r = $t->http(POST => '/pub/crash', body => 'after');
    next unless $r->{status} == 201;
    $after_ok++;
    $mono = 0 if id_cmp($r->{json}{id}, $prev) <= 0;
    $prev = $r->{json}{id};
}
is($after_ok, 40, 'publishing after the crash: all 201');
ok($mono, 'ids keep increasing after the crash');
is($t->http(GET => '/pub/crash')->{json}{messages}, $info->{messages} + 40, 'all retained');

# The stats worker list forgets the dead worker.
my $pids = sub { join ' ', sort { $a <=> $b } map { $_->{pid} } @{ $t->zone_stats('/stats', 'events')->{workers} || [] } };
ok($t->wait_for(sub { $pids->() eq join(' ', $t->worker_pids) }, timeout => 5), 'stats workers = live workers')
    or diag 'stats: ' . $pids->() . '; live: ' . join(' ', $t->worker_pids);

done_testing;
