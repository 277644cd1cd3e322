#!/usr/bin/perl
# 20 reloads in a row under steady publish + subscribe load (README "channel_zone", "SSE", "Long
# polling", "Errors and failures"):
# - each reload completes: new workers up, every old worker gone (streams ended, long-polls
#   answered, no connection or timer keeps an old worker alive);
# - SSE streams end cleanly on reload and the clients resume with Last-Event-ID; long-polls get
#   204 and re-poll: every client ends up with exactly the retained sequence, no message lost or
#   duplicated, ids increasing across all reloads;
# - every acknowledged publish is retained;
# - the zone does not grow beyond what it retains: `used` stays within a bound per retained
#   message, and once the channels are deleted it returns to its value before the load.
# CHANNELS_SLOW=1 runs 100 reloads.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time);
use ChannelsTest qw(id_cmp);
use Children;   # t/lib/Children.pm: forked helpers reporting through pipes

my $RELOADS = $ENV{CHANNELS_SLOW} ? 100 : 20;
my $SSE_SUBS = 6;
my $LP_SUBS = 2;
my $PUBLISHERS = 2;
my $PAGE = 4096;

my $t = ChannelsTest->new(workers => 2, main_conf => 'worker_shutdown_timeout 10s;', conf => <<'CONF');
    channel_zone zone=rel:16m history=100000 ttl=1h;
    longpoll_timeout 10s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[^/]+)$ { sse_channel $ch; }
        location = /multi                 { sse_channel $arg_ch; }
        location ~ ^/poll/(?<ch>[^/]+)$   { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$    { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

sub zstat { $t->zone_stats('/stats', 'rel', port => 1) }
my $z0 = zstat();
my $used0 = $z0->{used};
my $start = $t->publish_request('rl', 'START');
is($start->{status}, 201, 'START published');
my $start_id = $start->{json}{id};
my $stop_file = $t->prefix . '/stop-publishing';

# ---------------------------------------------------------------- child processes


# SSE client: resumes with Last-Event-ID whenever its stream ends; counts clean and unclean ends.
sub sse_subscriber {
    my $path = shift;
    return sub {
        my $wr = shift;
        my ($cursor, $clean, $unclean) = ($start_id, 0, 0);
        my $s = $t->sse_open($path, headers => { 'Last-Event-ID' => $cursor });
        die "status " . $s->status . "\n" unless $s->status == 200;
        while (1) {
            my $e = $s->next_event(timeout => 30);
            if (!$e) {
                die "no event for 30 s\n" if $s->timed_out;
                $s->clean_end ? $clean++ : $unclean++;
                $s->close;
                my $deadline = time + 10;
                do {
                    $s = eval { $t->sse_open($path, headers => { 'Last-Event-ID' => $cursor }) };
                    Time::HiRes::sleep(0.01) unless $s && $s->status == 200;
                } until (($s && $s->status == 200) || time > $deadline);
                die "could not reconnect\n" unless $s && $s->status == 200;
                next;
            }
            $cursor = $e->{id} if defined $e->{id};
            print $wr "EV $e->{id} $e->{data}\n";
            print $wr "SYNC\n" if $e->{data} eq 'SYNC';
            last if $e->{data} eq 'END';
        }
        print $wr "DONE $clean $unclean\n";
    };
}

sub lp_subscriber {
    return sub {
        my $wr = shift;
        my ($cursor, $n204, $failed) = ($start_id, 0, 0);
        my $deadline = time + 120;
        while (time < $deadline) {
            my $r = $t->poll('/poll/rl', cursor => $cursor, timeout => 15);
            if ($r->{status} == 204) {
                $n204++;
                die "204 moved the cursor\n" if ($r->{headers}{'last-event-id'} // '') ne $cursor;
                next;
            }
            if ($r->{status} != 200 || !$r->{json}) { $failed++; Time::HiRes::sleep(0.01); next }
            my $sync;
            for my $m (@{ $r->{json}{messages} }) {
                print $wr "EV $m->{id} $m->{data}\n";
                $sync = 1 if $m->{data} eq 'SYNC';
            }
            $cursor = $r->{json}{last_event_id};
            last if $sync;
        }
        print $wr "DONE $n204 $failed\n";
    };
}

sub publisher {
    my $k = shift;
    return sub {
        my $wr = shift;
        my $i = 0;
        until (-e $stop_file) {
            my $body = "p$k-" . ++$i;
            my $r = $t->publish_request('rl', $body, timeout => 5);
            print $wr "PUB $body " . ($r->{status} == 201 ? $r->{json}{id} : "FAIL:$r->{status}") . "\n";
            Time::HiRes::sleep(0.004);
        }
        print $wr "DONE\n";
    };
}

# ---------------------------------------------------------------- load, then reloads

my @sse = map { spawn('sse', sse_subscriber($_ % 2 ? '/events/rl' : '/multi?ch=rl,other')) } 1 .. $SSE_SUBS;
ok($t->wait_for(sub { zstat()->{subscribers} == $SSE_SUBS }, timeout => 20), "$SSE_SUBS SSE subscribers attached");
my @lp = map { spawn('lp', lp_subscriber()) } 1 .. $LP_SUBS;
my @pubs = map { spawn('pub', publisher($_)) } 1 .. $PUBLISHERS;
ok($t->wait_for(sub { zstat()->{published} >= 50 }, timeout => 20), 'publishing under way');

my ($reloaded, $max_used, $t0) = (0, 0, time);
for my $i (1 .. $RELOADS) {
    my $p0 = zstat()->{published};
    $reloaded++ if $t->reload(timeout => 20);
    my $z = zstat();
    $max_used = $z->{used} if $z && $z->{used} > $max_used;
    # keep the load steady: some publishing between two reloads (and read the children's
    # reports meanwhile, so that a full pipe never stalls them)
    pump(sub { zstat()->{published} >= $p0 + 10 }, 5);
}
is($reloaded, $RELOADS, sprintf('%d reloads in a row completed, old workers gone each time (%.1f s)', $RELOADS, time - $t0));

open my $fh, '>', $stop_file or die;
close $fh;
ok(pump(sub { !grep { !has_line($_, qr/^DONE/) } @pubs }, 30), 'publishers stopped');
waitpid($_->{pid}, 0) for @pubs;

my $sync = $t->publish_request('rl', 'SYNC');
is($sync->{status}, 201, 'SYNC published');
ok(pump(sub { !grep { !has_line($_, qr/^(?:SYNC|ERROR)/) } @sse }, 30), 'every SSE client caught up (SYNC)');
ok(pump(sub { !grep { !has_line($_, qr/^(?:DONE|ERROR)/) } @lp }, 30), 'every long-poll client caught up (SYNC)');
waitpid($_->{pid}, 0) for @lp;
ok($t->wait_for(sub { zstat()->{subscribers} == $SSE_SUBS }, timeout => 5), "stats: $SSE_SUBS subscribers after the reloads")
    or diag explain zstat();
$t->publish_request('rl', 'END');
ok(pump(sub { !grep { !has_line($_, qr/^(?:DONE|ERROR)/) } @sse }, 30), 'every SSE client got END');
waitpid($_->{pid}, 0) for @sse;
ok($t->wait_for(sub { zstat()->{subscribers} == 0 }, timeout => 5), 'subscribers back to 0');

# ---------------------------------------------------------------- compare

my (%acked, %failed);
for my $c (@pubs) {
    for (@{ $c->{lines} }) {
        next unless /^PUB (\S+) (\S+)$/;
        my ($body, $answer) = ($1, $2);
        if ($answer =~ /^FAIL/) { $failed{$body} = 1 } else { $acked{$body} = $answer }
    }
}
note(scalar(keys %acked) . ' publishes acknowledged, ' . scalar(keys %failed) . ' failed during reloads');
cmp_ok(scalar(keys %acked), '>=', 100, 'a steady load was published through the reloads');

my (@retained, $cursor);
$cursor = $start_id;
while (1) {
    my $r = $t->poll('/poll/rl', cursor => $cursor, timeout => 15);
    last unless $r->{status} == 200 && $r->{json} && @{ $r->{json}{messages} };
    push @retained, map { [ $_->{id}, $_->{data} ] } @{ $r->{json}{messages} };
    $cursor = $r->{json}{last_event_id};
    last if $retained[-1][1] eq 'END';
}
is(@retained ? $retained[-1][1] : '', 'END', 'retained sequence read back up to END');
my %rid = map { ($_->[1] => $_->[0]) } @retained;
my @lost = grep { ($rid{$_} // '') ne $acked{$_} } sort keys %acked;
is(scalar(@lost), 0, 'every acknowledged publish is retained under its id') or diag "e.g. $lost[0]";
is(scalar(grep { id_cmp($retained[$_ - 1][0], $retained[$_][0]) >= 0 } 1 .. $#retained), 0,
   'ids strictly increase across all reloads');

my $want = join "\n", map { "$_->[0] $_->[1]" } @retained;
my ($want_sync) = $want =~ /\A(.*? SYNC)(?:\n|\z)/s;
my $min_ends = $RELOADS;
for my $c (@sse, @lp) {
    my ($err) = grep { /^ERROR/ } @{ $c->{lines} };
    ok(!$err, "$c->{kind} client $c->{pid}: no error") or diag $err;
    my @ev = map { /^EV (\S+) (.*)$/ ? [ $1, $2 ] : () } @{ $c->{lines} };
    my $got = join "\n", map { "$_->[0] $_->[1]" } @ev;
    my $expect = $c->{kind} eq 'lp' ? $want_sync : $want;
    my %seen;
    my $dups = grep { $seen{ $_->[0] }++ } @ev;
    is($dups, 0, "$c->{kind} client $c->{pid}: no duplicated message");
    ok($got eq ($expect // ''), "$c->{kind} client $c->{pid}: exactly the retained sequence, in order")
        or diag sprintf('got %d events, want %d', scalar(@ev), scalar(split /\n/, $expect // ''));
    my ($done) = grep { /^DONE/ } @{ $c->{lines} };
    if ($c->{kind} eq 'sse' && $done && $done =~ /^DONE (\d+) (\d+)/) {
        is($2, 0, "sse client $c->{pid}: every stream end was clean ($1 clean ends)");
        $min_ends = $1 if $1 < $min_ends;
    }
}
# Each reload ends every stream of the old workers (else the reload would not complete); a client
# that is still catching up while the next reload comes skips a generation, so this is a floor.
cmp_ok($min_ends, '>=', int($RELOADS / 4), "every SSE client was moved to new workers by the reloads (at least $min_ends times)");

# ---------------------------------------------------------------- zone usage

my $z = zstat();
my $n = $z->{messages};
note("zone used: $used0 before, max $max_used during, $z->{used} now with $n messages");
cmp_ok($max_used, '<=', $used0 + $n * 256 + 64 * 1024,
       "zone used never exceeded the baseline + 256 bytes per retained message + 64 KiB");
is($t->http(DELETE => '/pub/rl', port => 1)->{status}, 200, 'DELETE rl');
# "other" was only ever waited on: it left the zone with its last subscriber (README
# "channel_zone").
is($t->http(GET => '/pub/other', port => 1)->{status}, 404, 'the channel only subscribers named is gone with them');
my $used;
# The deleted channel stays as long as its marker would (README "Publishing": a client resuming
# from before the deletion is told): its record, ring and marker, in three slab classes, may
# keep a page each besides the two of the baseline's rounding.
ok($t->wait_for(sub { my $s = zstat(); $used = $s->{used}; $s->{channels} == 0 && $used <= $used0 + 5 * $PAGE }, timeout => 10),
   "with the channels deleted, used returns to its value before the load but for the marker ($used0 -> $used)");

done_testing;
