#!/usr/bin/perl
# Long-poll across reload and shutdown (README "channel_zone", "Long polling", issue 4): on `nginx
# -s reload` every waiting request (json, raw, multi-channel, with and without a cursor, on both
# workers) is answered 204 at once (not at the 30 s longpoll_timeout) with its cursor, and the old
# workers exit; re-polling the new workers with that cursor gets what was published meanwhile,
# nothing lost or doubled; messages kept in the zone survive the reload and ids keep increasing. A
# publish racing the reload is received either in the old worker's answer or by the re-poll, exactly
# once. On `nginx -s quit`, waiting requests get 204 at once and nginx exits promptly.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_cmp json_decode);

my $CONF = <<'CONF';
    channel_zone zone=events:4m history=100 ttl=1h;
    longpoll_timeout 30s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/poll/(?<ch>[^/]+)$    { longpoll_channel $ch; }
        location ~ ^/raw/(?<ch>[^/]+)$     { longpoll_channel $ch format=raw; }
        location = /m                      { longpoll_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF
my $t = ChannelsTest->new(workers => 2, conf => $CONF);

sub zone { $t->zone_stats('/stats', 'events', port => 1) || {} }

# Ids a (json or raw) answer delivered.
sub ids_of {
    my $r = shift;
    return () unless $r->{status} == 200;
    if (($r->{headers}{'content-type'} // '') =~ /json/) {
        my $j = json_decode($r->{body}) || {};
        return map { $_->{id} } @{ $j->{messages} || [] };
    }
    return ($r->{headers}{'last-event-id'});
}

# Starts waiters until both workers hold some; returns [pending, path, cursor] entries.
sub start_waiters {
    my ($cursor, @kinds) = @_;
    my @w;
    my $i = 0;
    my $z;
    for my $round (1 .. 10) {
        for my $k (@kinds) {
            my ($path, $with_cursor) = @$k;
            my $p = $t->poll_start($path, $with_cursor ? (cursor => $cursor) : ());
            push @w, { p => $p, path => $path, cursor => $with_cursor ? $cursor : undef };
        }
        $t->wait_for(sub { $z = zone(); ($z->{subscribers} // 0) == @w }, timeout => 10) or last;
        last if 2 == grep { $_->{subscribers} > 0 } @{ $z->{workers} || [] };
    }
    is($z->{subscribers}, scalar @w, scalar(@w) . ' requests waiting');
    is(scalar(grep { $_->{subscribers} > 0 } @{ $z->{workers} || [] }), 2, 'on both workers');
    return @w;
}

my @kinds = (['/poll/r1', 1], ['/raw/r1', 1], ['/m?ch=r1,r2', 1], ['/poll/r1', 0], ['/m?ch=r2,r1', 0]);
my $old = $t->publish('r1', 'kept across the reload');
my $c = $t->publish('r2', 'cursor');

# ---- reload while waiting: 204 at once with the cursor, old workers exit
{
    my @w = start_waiters($c, @kinds);
    my @old_workers = $t->worker_pids;
    my $t0 = Time::HiRes::time();
    ok($t->reload, 'reload completes: new workers up, every old worker exited');
    my $dt = Time::HiRes::time() - $t0;
    cmp_ok($dt, '<', 10, sprintf('old workers gone %.1f s after the reload (waiters did not hold them)', $dt));
    my (%status, $cursor_ok, $no_cursor_ok) = ();
    my $cc_ok = 0;
    for my $w (@w) {
        my $r = $w->{p}->result(timeout => 10);
        $status{ $r->{status} }++;
        $w->{r} = $r;
        $cc_ok++ if ($r->{headers}{'cache-control'} // '') eq 'no-cache';
        my $lei = $r->{headers}{'last-event-id'};
        if (defined $w->{cursor}) {
            $cursor_ok++ if $r->{status} == 204 && ($lei // '') eq $c;
        } else {
            $no_cursor_ok++ if $r->{status} == 204 && defined $lei && id_cmp($lei, $c) >= 0;
        }
        $w->{cursor} = $lei;
    }
    is_deeply(\%status, { 204 => scalar @w }, 'every waiter: 204');
    my $with = grep { $_->[1] } @kinds;
    is($cursor_ok, $with * @w / @kinds, 'those with a cursor: Last-Event-ID is their cursor');
    is($no_cursor_ok, (@kinds - $with) * @w / @kinds, 'those without: a Last-Event-ID not before the newest message');
    is($cc_ok, scalar @w, 'Cache-Control: no-cache on each');
    cmp_ok((sort { $b <=> $a } map { $_->{r}{elapsed} } @w)[0], '<', $dt + 2,
           'answered during the reload, not at the 30 s timeout');
    my @new_workers = $t->worker_pids;
    ok(!grep({ my $o = $_; grep { $_ == $o } @new_workers } @old_workers), 'the workers are new');

    # published meanwhile, then the re-poll on the new workers
    my @m = ($t->publish('r1', 'meanwhile 1'), $t->publish('r2', 'meanwhile 2'), $t->publish('r1', 'meanwhile 3'));
    cmp_ok(id_cmp($m[0], $c), '>', 0, 'ids keep increasing across the reload');
    my $good = 0;
    for my $w (@w) {
        my @want = $w->{path} =~ /^\/m/ ? @m : @m[0, 2];
        my @got;
        my $cur = $w->{cursor};
        while (@got < @want) {    # json: one answer; raw: one answer per message
            my $r = $t->poll($w->{path}, cursor => $cur, timeout => 10);
            last unless $r->{status} == 200;
            push @got, ids_of($r);
            $cur = $r->{headers}{'last-event-id'};
        }
        if ("@got" eq "@want") { $good++ } else { diag "$w->{path}: got [@got], want [@want]" }
    }
    is($good, scalar @w, 're-polls on the new workers: exactly what was published meanwhile, in order');

    # the zone survived
    my $r = $t->poll('/poll/r1', cursor => '1-0');
    my @all = ids_of($r);
    is($all[0], $old, 'a message published before the reload is still retained');
    ok($t->wait_for(sub { zone()->{subscribers} == 0 }), 'no subscriber left');
}

# ---- a publish racing the reload: received once, in the old answer or by the re-poll
{
    my $c2 = $t->publish('r1', 'before race');
    my @w = start_waiters($c2, ['/poll/r1', 1], ['/m?ch=r1,r2', 1]);
    ok($t->reload(wait_old => 0), 'reload (not waiting for the old workers)');
    my $m1 = $t->publish('r1', 'race 1');
    my $good = 0;
    my %first;
    for my $w (@w) {
        my $r = $w->{p}->result(timeout => 10);
        $first{ $r->{status} }++;
        my @got = ids_of($r);
        my $cur = $r->{headers}{'last-event-id'} // $c2;
        if (!@got) {
            my $r2 = $t->poll($w->{path}, cursor => $cur, timeout => 10);
            push @got, ids_of($r2);
        }
        if ("@got" eq $m1) { $good++ } else { diag "$w->{path}: got [@got], want [$m1] (first answer $r->{status})" }
    }
    note('first answers: ' . join(', ', map { "$_ x $first{$_}" } sort keys %first));
    ok(!grep({ $_ != 200 && $_ != 204 } keys %first), 'each waiter was answered 200 or 204');
    is($good, scalar @w, 'each waiter got the racing message exactly once');
    ok($t->wait_for(sub { my @all = $t->all_worker_pids; @all == 2 }, timeout => 15), 'the old workers exit');
}

# ---- graceful shutdown while waiting: 204 at once, nginx exits
{
    my $c3 = $t->publish('r1', 'before quit');
    my @w = start_waiters($c3, ['/poll/r1', 1], ['/raw/r1', 1]);
    my $t0 = Time::HiRes::time();
    ok($t->stop(graceful => 1, timeout => 10), 'nginx -s quit: nginx exits with requests waiting');
    my $dt = Time::HiRes::time() - $t0;
    cmp_ok($dt, '<', 10, sprintf('within %.1f s', $dt));
    my $ok = 0;
    for my $w (@w) {
        my $r = $w->{p}->result(timeout => 5);
        $ok++ if $r->{status} == 204 && ($r->{headers}{'last-event-id'} // '') eq $c3;
    }
    is($ok, scalar @w, 'every waiter: 204 with its cursor');
}

done_testing;
