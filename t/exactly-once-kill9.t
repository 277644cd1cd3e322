#!/usr/bin/perl
# Issue 12, finding 7: a worker killed at any moment, even holding the zone lock in the middle of an
# update, leaves a consistent zone (README "Errors and failures": the zone stays consistent), and
# subscribers still get every message once, in order, with `channel-gap` where something was lost
# (README "SSE").
#
#   A. kill -9 storm: hundreds of SIGKILLs to random workers while publishers, resuming SSE
#      and long-poll subscribers and a subscribe/unsubscribe churn load a small zone that
#      evicts; after each kill (once the master replaced the worker) the zone is checked.
#   B. torn updates: CHANNELS_FAULTS=zone_update_kill=N makes a worker SIGKILL itself in the
#      middle of every N-th multi-step zone update; after each such death the zone is
#      checked. Retained messages may be lost then, but resuming and live clients are told
#      (`channel-gap`).
# In both: every subscriber's stream has ids strictly increasing, no message twice, nothing
# unpublished, and every acknowledged message of its channels it did not get is covered by a
# `channel-gap` of that channel (long-poll: "gap":true) sent before the stream moved past
# it; the stats' subscriber count returns to the true number (0) when the clients are gone.
#
# The interfaces used (provided with the fix of the issue):
#   GET <channel_stats location>?check -> 200 {"zones":[{"name","consistent":bool,"problems":[...]}]}
#   env CHANNELS_FAULTS "site=N[,site=N]": fail every N-th hit of a site (here zone_update_kill).
# CHANNELS_KILLS=N changes the number of kills of part A (default 300; bounded to 90 s).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(time);
use ChannelsTest qw(id_cmp json_decode);
use Children;

my $KILLS = $ENV{CHANNELS_KILLS} // 300;
my $STORM_SECONDS = 90;
my $FAULT_SECONDS = 20;
my @CHANNELS = map { "k$_" } 0 .. 3;

my $t = ChannelsTest->new(workers => 4, main_conf => 'env CHANNELS_FAULTS;', conf => <<'CONF');
    channel_zone zone=storm:1m history=200 ttl=1h;
    longpoll_timeout 5s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_ping 1s; sse_channel $ch; }
        location = /multi                   { sse_ping 1s; sse_channel $arg_ch; }
        location ~ ^/poll/(?<ch>[\w.-]+)$   { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
        location = /stats                   { channel_stats; }
    }
CONF
# What killing workers legitimately leaves in the log.
$t->allow_log(qr/worker process \d+ exited on signal 9/, qr/shared memory zone "storm" was locked by \d+/);

# ---------------------------------------------------------------- the zone check

# (consistent?, why not)
sub check_zone {
    # The worker serving the check may itself be the next to die (part B: any zone update
    # can be its last): a connection closed without an answer is asked again.
    my $r;
    for (1 .. 5) {
        $r = $t->http(GET => '/stats?check', port => 1, timeout => 10);
        last if $r->{status};
    }
    return (0, "GET /stats?check: $r->{status} " . ($r->{error} // '')) unless $r->{status} == 200;
    my $j = json_decode($r->{body});
    my ($z) = grep { ($_->{name} // '') eq 'storm' } @{ ($j || {})->{zones} || [] };
    return (0, 'no zone "storm" in the answer') unless $z;
    return (0, 'no consistency report ("consistent" missing; keys: ' . join(',', sort keys %$z) . ')')
        unless exists $z->{consistent};
    return (1, '') if $z->{consistent};   # JSON::PP's true
    return (0, 'inconsistent: ' . join('; ', @{ $z->{problems} || [] }));
}

sub zstat { $t->zone_stats('/stats', 'storm', port => 1) }

sub publish_until_ok {
    my ($ch, $data) = @_;
    for (1 .. 50) {
        my $r = $t->http(POST => "/pub/$ch", port => 1, body => $data, timeout => 5);
        return $r->{json}{id} if $r->{status} == 201 && $r->{json};
        Time::HiRes::sleep(0.05);
    }
    die "could not publish $data to $ch\n";
}

# ---------------------------------------------------------------- the load

sub label { my $d = shift // ''; $d =~ /^([^:]*)/ ? $1 : $d }

# SSE subscriber: resumes with Last-Event-ID on every drop; reports CONN/EV/GAP/DEL lines,
# ends when it has seen STOP on every channel.
sub sse_subscriber {
    my ($path, $chs, $cursor) = @_;
    return sub {
        my $wr = shift;
        my %stop;
        my $deadline = time + $STORM_SECONDS + 120;
        while (keys %stop < @$chs && time < $deadline) {
            my $s = eval { $t->sse_open($path, headers => { 'Last-Event-ID' => $cursor }, timeout => 5) };
            if (!$s || $s->status != 200) { Time::HiRes::sleep(0.02); next }
            print $wr "CONN $cursor\n";
            while (my $e = $s->next_event(timeout => 30)) {
                my $ev = $e->{event} // '';
                if ($ev eq 'channel-gap') {
                    my $j = json_decode($e->{data}) || {};
                    print $wr "GAP " . ($j->{channel} // '?') . "\n";
                    next;
                }
                next unless defined $e->{id};
                $cursor = $e->{id};
                my $ch = @$chs == 1 ? $chs->[0] : $ev;
                if ($ev eq 'channel-deleted') { print $wr "DEL $e->{id}\n"; next }
                my $l = label($e->{data});
                print $wr "EV $e->{id} $ch $l\n";
                $stop{$ch} = 1 if $l eq 'STOP';
                last if keys %stop == @$chs;
            }
            die "no event for 30 s\n" if $s->timed_out;
            $s->close;
        }
        print $wr "DONE\n";
    };
}

# Long-poll subscriber of one channel: each answer is reported as ANS cursor, then its
# messages, then GAP * when it says "gap":true.
sub lp_subscriber {
    my ($ch, $cursor) = @_;
    return sub {
        my $wr = shift;
        my $deadline = time + $STORM_SECONDS + 120;
        while (time < $deadline) {
            my $r = $t->poll("/poll/$ch", cursor => $cursor, timeout => 15);
            next unless $r->{status} == 200 && $r->{json};
            print $wr "CONN $cursor\n";
            print $wr "GAP *\n" if $r->{json}{gap};
            my $stop;
            for my $m (@{ $r->{json}{messages} }) {
                my $l = label($m->{data});
                print $wr "EV $m->{id} $ch $l\n";
                $stop = 1 if $l eq 'STOP';
            }
            $cursor = $r->{json}{last_event_id};
            last if $stop;
        }
        print $wr "DONE\n";
    };
}

sub publisher {
    my ($k, $stopfile) = @_;
    return sub {
        my $wr = shift;
        my $i = 0;
        until (-e $stopfile) {
            my $ch = $CHANNELS[ int rand @CHANNELS ];
            my $l = "p$k-" . ++$i;
            my $r = $t->http(POST => "/pub/$ch", port => 1, timeout => 5,
                             body => "$l:" . ('x' x (int(rand 3) ? int rand 400 : int rand 20000)));
            print $wr "PUB $l $ch " . ($r->{status} == 201 && $r->{json} ? $r->{json}{id} : "FAIL:$r->{status}") . "\n";
            Time::HiRes::sleep(0.002 + rand 0.004);   # a steady load, not a CPU hog on a shared machine
        }
        print $wr "DONE\n";
    };
}

# Subscribers that come and go: attach and detach, on existing and new channels.
sub churner {
    my $stopfile = shift;
    return sub {
        my $wr = shift;
        my $n = 0;
        until (-e $stopfile) {
            my $ch = rand() < 0.5 ? $CHANNELS[ int rand @CHANNELS ] : 'churn' . int(rand 50);
            my $s = eval { $t->sse_open("/events/$ch", timeout => 5) };
            $s->close if $s;
            my $p = eval { $t->poll_start("/poll/$ch") };
            Time::HiRes::sleep(0.01);
            $p->close if $p;
            $n++;
        }
        print $wr "DONE $n\n";
    };
}

# Starts the load; returns (subscribers, publishers, churners, start cursor).
sub start_load {
    my $stopfile = shift;
    unlink $stopfile;
    my $cursor;
    $cursor = publish_until_ok($_, 'START') for @CHANNELS;
    my @subs = (
        (map { my $ch = $CHANNELS[$_]; spawn('sse', sse_subscriber("/events/$ch", [$ch], $cursor)) } 0 .. 3),
        spawn('sse', sse_subscriber('/multi?ch=k0,k1', [qw(k0 k1)], $cursor)),
        spawn('sse', sse_subscriber('/multi?ch=k1,k2,k3', [qw(k1 k2 k3)], $cursor)),
        (map { spawn('lp', lp_subscriber($CHANNELS[$_], $cursor)) } 0, 2),
    );
    $subs[$_]{channels} = [ $CHANNELS[$_] ] for 0 .. 3;
    $subs[4]{channels} = [qw(k0 k1)];
    $subs[5]{channels} = [qw(k1 k2 k3)];
    $subs[6]{channels} = ['k0'];
    $subs[7]{channels} = ['k2'];
    my @pubs = map { spawn('pub', publisher($_, $stopfile)) } 1 .. 2;
    my @churn = (spawn('churn', churner($stopfile)));
    return (\@subs, \@pubs, \@churn, $cursor);
}

sub stop_load {
    my ($stopfile, $subs, $pubs, $churn) = @_;
    open my $fh, '>', $stopfile or die;
    close $fh;
    ok(pump(sub { !grep { !has_line($_, qr/^DONE/) } @$pubs, @$churn }, 60), 'publishers and churn stopped');
    # A STOP can be lost like any message (part B: a worker dying in a later update empties
    # the zone, and subscribers are told with channel-gap): published again every 5 s until
    # every subscriber has one. Each is held to the rules of the other messages (verify).
    my $running = sub { grep { !has_line($_, qr/^(DONE|ERROR)/) } @$subs };
    my @stops;
    my $deadline = time + 120;
    while ($running->() && time < $deadline) {
        push @stops, map { [ $_, publish_until_ok($_, 'STOP') ] } @CHANNELS;
        pump(sub { !$running->() }, 5);
    }
    ok(!$running->(), 'every subscriber reached STOP')
        or diag('still running: ' . join(' ', map { "$_->{kind}:$_->{pid}" } $running->()));
    kill 'KILL', map { $_->{pid} } $running->();
    waitpid($_->{pid}, 0) for @$subs, @$pubs, @$churn;
    return \@stops;
}

# ---------------------------------------------------------------- the verdict

# The publishes: label => {ch, id} (id undef when the answer was lost with a killed worker).
sub published {
    my ($pubs, $stops) = @_;
    my %p = map { ("STOP\@$_->[1]" => { ch => $_->[0], id => $_->[1] }) } @$stops;
    for my $c (@$pubs) {
        for (@{ $c->{lines} }) {
            next unless /^PUB (\S+) (\S+) (\S+)$/;
            my ($label, $ch, $answer) = ($1, $2, $3);
            $p{$label} = { ch => $ch, id => ($answer =~ /^FAIL/ ? undef : $answer) };
        }
    }
    return \%p;
}

# Ids as strings that compare like the ids (ms and counter zero-padded).
sub key { my ($ms, $seq) = split /-/, shift; sprintf '%020s%010s', $ms, $seq }

# Every problem of one subscriber's report, as text lines.
sub verify {
    my ($c, $pub) = @_;
    my @problems;
    my %mine = map { $_ => 1 } @{ $c->{channels} };
    my @acked = sort { $a->[0] cmp $b->[0] } map { [ key($pub->{$_}{id}), $pub->{$_}{id}, $pub->{$_}{ch}, $_ ] }
                grep { defined $pub->{$_}{id} && $mine{ $pub->{$_}{ch} } } keys %$pub;
    my (%got, @conns);
    for (@{ $c->{lines} }) {
        if (/^CONN (\S+)/)              { push @conns, { cursor => $1, items => [] } }
        elsif (/^EV (\S+) (\S+) (\S+)/) { push @{ $conns[-1]{items} }, { id => $1, ch => $2, label => $3 } }
        elsif (/^GAP (\S+)/)            { push @{ $conns[-1]{items} }, { gap => $1 } }
        elsif (/^ERROR (.*)/)           { push @problems, "error: $1" }
    }
    for my $conn (@conns) {
        my $last = key($conn->{cursor});
        my $j = 0;
        $j++ while $j < @acked && $acked[$j][0] le $last;
        my %told;   # channels with a channel-gap so far on this connection
        for my $it (@{ $conn->{items} }) {
            if ($it->{gap}) { $told{ $it->{gap} } = 1; next }
            my $k = key($it->{id});
            push @problems, "$it->{id} after the stream's previous id: ids not increasing" if $k le $last;
            push @problems, "$it->{id} ($it->{label}) twice" if $got{$k}++;
            push @problems, "$it->{id} of channel $it->{ch}, not subscribed" unless $mine{ $it->{ch} };
            my $p = $pub->{ $it->{label} };
            if ($it->{label} !~ /^(START|STOP)$/) {
                if (!$p) { push @problems, "$it->{id} ($it->{label}) was never published" }
                elsif (defined $p->{id} && $p->{id} ne $it->{id}) { push @problems, "$it->{label} arrived as $it->{id}, published as $p->{id}" }
                elsif ($p->{ch} ne $it->{ch}) { push @problems, "$it->{label} of $p->{ch} arrived on $it->{ch}" }
            }
            # what the stream passed over must have been announced before
            for (; $j < @acked && $acked[$j][0] lt $k; $j++) {
                my $m = $acked[$j];
                next if $got{ $m->[0] } || $told{ $m->[2] } || $told{'*'};
                push @problems, "$m->[1] ($m->[3], $m->[2]) skipped without channel-gap";
            }
            $j++ while $j < @acked && $acked[$j][0] le $k;
            $last = $k if $k gt $last;
        }
    }
    return @problems;
}

sub verdict {
    my ($what, $subs, $pubs, $stops) = @_;
    my $pub = published($pubs, $stops);
    my @mine = grep { !/^STOP@/ } keys %$pub;
    my $n = grep { defined $pub->{$_}{id} } @mine;
    note("$what: " . scalar(@mine) . " publishes, $n acknowledged, " . scalar(@$stops) . ' STOP');
    cmp_ok($n, '>', 100, "$what: the publishers got through");
    for my $c (@$subs) {
        my @p = verify($c, $pub);
        my $name = "$what: $c->{kind} subscriber of " . join(',', @{ $c->{channels} });
        ok(!@p, "$name: every message once, in order, losses announced")
            or diag(scalar(@p) . " problems:\n  " . join("\n  ", @p[0 .. ($#p < 14 ? $#p : 14)]));
    }
    my $z;
    ok($t->wait_for(sub { $z = zstat(); $z && $z->{subscribers} == 0 }, timeout => 10),
       "$what: stats count 0 subscribers once the clients are gone")
        or diag('subscribers: ' . ($z ? $z->{subscribers} : '?'));
}

sub replaced {
    my $victim = shift;
    return $t->wait_for(sub { my @w = $t->worker_pids; @w == 4 && !grep { $_ == $victim } @w }, timeout => 10);
}

# ---------------------------------------------------------------- A. the storm

my $stopfile = $t->prefix . '/stop-load';
{
    my ($subs, $pubs, $churn, $cursor) = start_load($stopfile);
    ok($t->wait_for(sub { (zstat() || {})->{subscribers} >= 8 }, timeout => 20), 'A: subscribers attached');
    my ($kills, @bad) = (0);
    my $t0 = time;
    while ($kills < $KILLS && time - $t0 < $STORM_SECONDS) {
        my @w = $t->worker_pids;
        my $victim = $w[ int rand @w ] or next;
        Time::HiRes::sleep(rand 0.03);
        kill 'KILL', $victim;
        $kills++;
        if (!replaced($victim)) { push @bad, "kill $kills: no replacement for $victim"; last }
        my ($ok, $why) = check_zone();
        push @bad, "after kill $kills (worker $victim): $why" unless $ok;
    }
    note(sprintf 'A: %d kills in %.1fs', $kills, time - $t0);
    cmp_ok($kills, '>=', $KILLS > 100 ? 100 : $KILLS, "A: $kills workers killed");
    ok(!@bad, "A: the zone was consistent after every kill")
        or diag(scalar(@bad) . " failed checks:\n  " . join("\n  ", @bad[0 .. ($#bad < 9 ? $#bad : 9)]));
    my $stops = stop_load($stopfile, $subs, $pubs, $churn);
    my ($ok, $why) = check_zone();
    ok($ok, 'A: consistent at the end') or diag $why;
    verdict('A', $subs, $pubs, $stops);
}

# ---------------------------------------------------------------- B. torn updates

{
    $t->stop;
    {
        local $ENV{CHANNELS_FAULTS} = 'zone_update_kill=37';
        $t->start;
    }
    my $mark = $t->log_mark;
    my $deaths = sub { scalar(() = $t->log_since($mark) =~ /exited on signal 9/g) };
    my ($subs, $pubs, $churn, $cursor) = start_load($stopfile);
    my ($seen, @bad) = (0);
    my $t0 = time;
    while (time - $t0 < $FAULT_SECONDS && $seen < 100) {
        Time::HiRes::sleep(0.05);
        my $d = $deaths->();
        next if $d == $seen;
        $seen = $d;
        $t->wait_for(sub { my @w = $t->worker_pids; @w == 4 }, timeout => 10);
        my ($ok, $why) = check_zone();
        push @bad, "after self-kill $seen: $why" unless $ok;
    }
    note("B: $seen workers killed themselves in a zone update");
    cmp_ok($seen, '>=', 5, 'B: CHANNELS_FAULTS=zone_update_kill=37 made workers die in zone updates');
    ok(!@bad, 'B: the zone was consistent after every such death')
        or diag(scalar(@bad) . " failed checks:\n  " . join("\n  ", @bad[0 .. ($#bad < 9 ? $#bad : 9)]));
    my $stops = stop_load($stopfile, $subs, $pubs, $churn);
    my ($ok, $why) = check_zone();
    ok($ok, 'B: consistent at the end') or diag $why;
    verdict('B', $subs, $pubs, $stops);
}

done_testing;
