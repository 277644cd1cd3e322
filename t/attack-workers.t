#!/usr/bin/perl
# Issue 11, finding 11 (README "What one client can cost": failures stay local): more worker
# processes than the zone had records for.
#
# Every worker process serves subscribers, however many there are: with
# `worker_processes 70`, and after a reload while the old workers are still alive (held by
# requests whose bodies have not arrived), so that old and new workers together are more than
# 64. Subscribers are spread over the workers with `reuseport`; the answer names the worker
# (`add_header X-Worker $pid`). None is refused, and a held stream on each worker receives a
# publish.
#
# Before the fix: the zone had 64 worker records; the 65th live worker logged an [alert] at
# start and answered every subscriber 503 for its life.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use ChannelsTest;

sub conf {
    return <<'CONF';
    channel_zone zone=events:8m history=10 ttl=1h;
    sse_ping 0;
    client_body_timeout 60s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        add_header X-Worker $pid always;
        location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF
}

# Opens SSE streams until one is held on every worker of @want (or $max tries); returns
# (\%held by pid, \%status counts).
sub cover_workers {
    my ($t, $want, $max) = @_;
    my %want = map { $_ => 1 } @$want;
    my (%held, %status);
    for my $i (1 .. $max) {
        my $s = $t->sse_open('/events/all', timeout => 10);
        $status{ $s->status }++;
        my $pid = $s->header('x-worker') // '?';
        if ($s->status == 200 && $want{$pid} && !$held{$pid}) {
            $held{$pid} = $s;
        } else {
            $status{"extra $s->{status} from a worker outside the set"}++ if !$want{$pid};
            $s->close;
        }
        last if keys %held == @$want;
    }
    return (\%held, \%status);
}

sub no_alert {
    my $t = shift;
    my @bad = grep { /live worker processes|\[alert\]/ } split /\n/, $t->error_log;
    ok(!@bad, 'no worker logged that it has no record, no [alert]') or diag join "\n", @bad[0 .. ($#bad < 4 ? $#bad : 4)];
}

sub check_delivery {
    my ($t, $held, $label) = @_;
    my $id = $t->publish('all', "to every worker ($label)");
    my $got = 0;
    for my $s (values %$held) {
        my $e = $s->next_event(timeout => 10);
        $got++ if $e && $e->{id} eq $id;
    }
    is($got, scalar keys %$held, "$label: the held stream on each of the " . scalar(keys %$held) . ' workers receives a publish');
    $_->close for values %$held;
}

# ================================================================ worker_processes 70
{
    my $t = ChannelsTest->new(workers => 70, conf => conf());
    my @w = $t->worker_pids;
    is(scalar @w, 70, '70 workers running');
    my ($held, $status) = cover_workers($t, \@w, 3000);
    note('70 workers: answers ' . join(', ', map { "$_ x$status->{$_}" } sort keys %$status));
    is(scalar keys %$held, 70, 'a subscriber is served on every one of the 70 workers');
    ok(!$status->{503}, 'no subscriber refused with 503');
    check_delivery($t, $held, '70 workers');
    no_alert($t);
    $t->finish;
}

# ================================================================ reload while old workers live on
{
    my $t = ChannelsTest->new(workers => 36, conf => conf());
    my @old = $t->worker_pids;
    is(scalar @old, 36, '36 workers running');
    # Requests whose bodies never finish keep the old workers alive through the reload.
    my @slow;
    for my $i (1 .. 400) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port(1), Proto => 'tcp')
            or die "connect: $!";
        syswrite($s, "POST /pub/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx");
        push @slow, $s;
    }
    ok($t->reload(wait_old => 0), 'reload: 36 new workers');
    my @new = $t->worker_pids;
    my %is_new = map { $_ => 1 } @new;
    my @old_alive = grep { !$is_new{$_} } $t->all_worker_pids;
    note(scalar(@old_alive) . ' old workers still alive after the reload');
    cmp_ok(scalar(@old_alive) + scalar(@new), '>', 64, 'old and new workers together are more than 64');

    my ($held, $status) = cover_workers($t, \@new, 3000);
    note('after the reload: answers ' . join(', ', map { "$_ x$status->{$_}" } sort keys %$status));
    is(scalar keys %$held, scalar @new, 'a subscriber is served on every new worker');
    ok(!$status->{503}, 'no subscriber refused with 503');
    check_delivery($t, $held, 'after the reload');
    no_alert($t);

    close $_ for @slow;
    ok($t->wait_for(sub { !grep { !$is_new{$_} } $t->all_worker_pids }, timeout => 30),
       'the old workers exit once their requests are gone');
}

done_testing;
