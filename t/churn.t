#!/usr/bin/perl
# Connection churn (README "Long polling", "Errors and failures"): many subscribe/close cycles of
# every kind -- SSE (single, multi-channel, with replay), waiting long-polls, long-polls answered at
# once, requests aborted before their answer, HEAD -- closed with FIN or RST, while messages are
# being delivered to them. Afterwards the subscriber counts are back to 0, the zone's `used` is back
# to its baseline, and the workers' RSS has not grown beyond a small tolerance.
#
# Default 5,000 cycles (about 10 s); CHANNELS_SLOW=1 runs 50,000.
#
# Tolerances: zone `used` must return to its baseline within 4 slab pages (16 KiB: the same
# number of same-sized objects may sit on a page or two more after churn). Worker RSS (both
# workers together): at most 3 MiB more at the end than after warm-up, and at most 768 KiB
# more at the end than half-way. Measured: RSS climbs by about 1 MiB over the first ~20,000
# cycles (malloc's heap settling) and then stays flat (+20 KiB over cycles 25,000-50,000);
# a leak grows linearly, so 300 bytes per cycle fail the second bound at 5,000 cycles and
# 30 bytes per cycle at 50,000 (CHANNELS_SLOW=1).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time);
use ChannelsTest;
use Attack ();

my $CYCLES = $ENV{CHANNELS_SLOW} ? 50_000 : 5_000;
my $PER_BATCH = 100;
my $BATCHES = int($CYCLES / $PER_BATCH);
my $HISTORY = 5;

my $t = ChannelsTest->new(workers => 2, conf => <<"CONF");
    channel_zone zone=churn:4m history=$HISTORY ttl=1h;
    channel_zone zone=gc:1m history=10 ttl=1s;
    longpoll_timeout 60s;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[^/]+)\$ { sse_channel \$ch zone=churn; }
        location = /multi                 { sse_channel \$arg_ch zone=churn; }
        location ~ ^/poll/(?<ch>[^/]+)\$   { longpoll_channel \$ch zone=churn; }
        location ~ ^/gc/(?<ch>[^/]+)\$     { sse_channel \$ch zone=gc; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)\$    { publish_channel \$ch zone=churn; }
        location = /stats                 { channel_stats; }
    }
CONF

srand(5);
my $PAGE = 4096;
sub zone { $t->zone_stats('/stats', $_[0], port => 1) }
sub churn_channels {
    my $r = $t->http(GET => '/stats?channels&prefix=c&limit=1000&zone=churn', port => 1);
    die "channel listing: $r->{status}\n" unless $r->{status} == 200;
    return [ map { $_->{id} } @{ $r->{json}{channels} } ];
}
my $payload = 'p' x 100;    # every message the same size: retained memory stays constant
sub publish_all {
    for my $i (0 .. 9) {
        my $r = $t->http(POST => "/pub/c$i", port => 1, body => $payload);
        die "publish c$i: $r->{status}\n" unless $r->{status} == 201;
    }
}

sub connect_to {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port(0), Proto => 'tcp')
        or die "connect: $!\n";
    binmode $s;
    return $s;
}

# Reads from each socket until its response header is complete; returns how many got a 200.
sub read_headers {
    my @socks = @_;
    my %buf;
    my $deadline = time + 10;
    my $sel = IO::Select->new(@socks);
    my $ok = 0;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(0.5)) {
            my $n = sysread($s, $buf{$s}, 4096, length($buf{$s} // ''));
            if (!$n || $buf{$s} =~ /\r\n\r\n/) {
                $ok++ if ($buf{$s} // '') =~ m{^HTTP/1\.1 200 };
                $sel->remove($s);
            }
        }
    }
    return $ok;
}

# Reads whole responses (Connection: close) from each socket; returns how many were 200.
sub read_all {
    my @socks = @_;
    my %buf;
    my $deadline = time + 10;
    my $sel = IO::Select->new(@socks);
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(0.5)) {
            my $n = sysread($s, $buf{$s}, 65536, length($buf{$s} // ''));
            $sel->remove($s) if !$n;
        }
    }
    return scalar grep { ($buf{$_} // '') =~ m{^HTTP/1\.1 200 } } @socks;
}

sub close_socks {
    for my $s (@_) {
        # half of them with RST (SO_LINGER 0), half with FIN
        setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if rand() < 0.5;
        close $s;
    }
}

my ($bad_batch, $cycles) = (undef, 0);
my $gc_n = 0;

sub req { "GET $_[0] HTTP/1.1\r\nHost: x\r\n" . ($_[1] // '') . "\r\n" }

sub batch {
    my $b = shift;
    my (@sse, @gc, @lp_wait, @lp_now, @aborted);
    my $newest = zone('churn')->{last_event_id};    # long-polls after it wait
    for my $i (1 .. 30) {
        my $path = $i % 3 == 0 ? '/multi?ch=c1,c2,c' . ($i % 10) : '/events/c' . ($i % 10);
        my $hdr = $i % 2 ? "Last-Event-ID: 1-0\r\n" : '';   # half of them with a replay
        my $s = connect_to();
        syswrite($s, req($path, $hdr));
        push @sse, $s;
    }
    for my $i (1 .. 20) {
        my $s = connect_to();
        syswrite($s, req('/gc/r' . ++$gc_n . '-' . int(rand 1e9)));
        push @gc, $s;
    }
    for my $i (1 .. 30) {
        my $s = connect_to();
        syswrite($s, req('/poll/c' . ($i % 10), "Last-Event-ID: $newest\r\n"));
        push @lp_wait, $s;
    }
    for my $i (1 .. 10) {
        my $s = connect_to();
        syswrite($s, req('/poll/c' . ($i % 10), "Last-Event-ID: 1-0\r\nConnection: close\r\n"));
        push @lp_now, $s;
    }
    for my $i (1 .. 10) {
        my $s = connect_to();
        my $path = $i % 3 == 0 ? '/poll/c3' : $i % 3 == 1 ? '/events/c4' : '/multi?ch=c5,c6';
        syswrite($s, req($path, $i % 2 ? '' : "Last-Event-ID: 1-0\r\n"));
        push @aborted, $s;
    }
    close_socks(@aborted);    # gone before (or while) the module answers

    my $sse_ok = read_headers(@sse, @gc);
    my $lp_ok = read_all(@lp_now);
    # Exactly 60 and 20: an aborted request still counted would be a leak.
    my $attached = $t->wait_for(sub {
        my ($a, $g) = (zone('churn'), zone('gc'));
        $a->{subscribers} == 60 && $g->{subscribers} == 20;
    }, timeout => $bad_batch ? 1 : 10);
    my ($a, $g) = (zone('churn'), zone('gc'));
    # Deliver to all of them, then drop them while the frames may still be in flight.
    publish_all();
    my $head = $t->http(HEAD => '/events/c0');
    close_socks(List::Util::shuffle(@sse, @gc, @lp_wait));
    close $_ for @lp_now;
    $cycles += $PER_BATCH + 1;
    if ($sse_ok != 50 || $lp_ok != 10 || !$attached || $head->{status} != 200) {
        $bad_batch //= "batch $b: SSE 200s $sse_ok/50, immediate long-polls $lp_ok/10, "
            . "subscribers churn=$a->{subscribers}/60 gc=$g->{subscribers}/20, HEAD $head->{status}";
    }
}
use List::Util ();

# ---- baseline: every channel already holds `history` messages of the same size
publish_all() for 1 .. $HISTORY;
batch(0) for 1 .. 3;    # warm-up: nginx's connection and pool caches, malloc arenas
ok($t->wait_for(sub { zone('churn')->{subscribers} == 0 && zone('gc')->{subscribers} == 0 }, timeout => 10),
   'warm-up done: no subscribers');
ok($t->wait_for(sub { zone('gc')->{channels} == 0 }, timeout => 10), 'warm-up: the gc zone collected its channels');

# ---- requests aborted right after they were sent are forgotten at once (README "Long polling"),
# never left counted until a message or the long-poll timeout comes. One channel per case.
for my $case (['/poll/q1', 'q1'], ['/events/q2', 'q2'], ['/poll/q3?last_event_id=1-0', 'q3'],
              ['/multi?ch=q4,q5', 'q4']) {
    my ($path, $ch) = @$case;
    for my $i (1 .. 50) {
        my $s = connect_to();
        syswrite($s, req($path));
        close_socks($s);
    }
    my $left;
    ok($t->wait_for(sub { $left = $t->subscribers($ch); $left == 0 }, timeout => 5),
       "50 requests $path closed by the client right away: forgotten (channel $ch: 0 subscribers)")
        or diag "$left of them still counted as subscribers of $ch 5 s later";
}
# (a DELETE also ends whatever was left behind, so the churn below starts clean)
$t->http(DELETE => "/pub/q$_", port => 1) for 1 .. 5;
ok($t->wait_for(sub { zone('churn')->{subscribers} == 0 }, timeout => 5), 'no subscribers before the churn');

my ($a0, $g0) = (zone('churn'), zone('gc'));
my $channels0 = churn_channels();
cmp_ok(scalar @$channels0, '>=', 4, "the churn's channels are listed (@$channels0)");
my $rss0 = Attack::rss_kb($t->worker_pids);
my @workers0 = $t->worker_pids;
note("baseline: churn used $a0->{used}, gc used $g0->{used}, worker RSS ${rss0} KiB");

my $t0 = time;
my $rss_mid;
for my $b (1 .. $BATCHES) {
    batch($b);
    $rss_mid = Attack::rss_kb($t->worker_pids) if $b == int($BATCHES / 2);
}
my $elapsed = time - $t0;
note(sprintf('%d subscribe/close cycles in %.1f s', $cycles, $elapsed));
ok(!$bad_batch, "every batch: all subscribers answered and attached") or diag $bad_batch;

# ---- back to baseline
ok($t->wait_for(sub { zone('churn')->{subscribers} == 0 }, timeout => 10), 'churn zone: subscribers back to 0')
    or diag explain zone('churn');
ok($t->wait_for(sub { zone('gc')->{subscribers} == 0 }, timeout => 10), 'gc zone: subscribers back to 0');
my $a1 = zone('churn');
is_deeply([ map { $_->{subscribers} } @{ $a1->{workers} } ], [ (0) x @workers0 ], 'every worker: 0 subscribers');
is($a1->{messages}, 10 * $HISTORY, 'messages retained: history x channels, as before');
# The churn's own channels (c*): requests closed "right away" above may still reach nginx
# after their DELETE and re-create their q* channel, so the zone's total can move.
is_deeply(churn_channels(), $channels0, 'the same channels exist');
cmp_ok(abs($a1->{used} - $a0->{used}), '<=', 4 * $PAGE,
       "churn zone used back to baseline within 4 pages ($a0->{used} -> $a1->{used})");
ok($t->wait_for(sub { my $g = zone('gc'); $g->{channels} == 0 && abs($g->{used} - $g0->{used}) <= 4 * $PAGE }, timeout => 10),
   'gc zone: the random channels were collected, used back to baseline')
    or diag explain zone('gc');
my $rss1 = Attack::rss_kb($t->worker_pids);
note("worker RSS: ${rss0} KiB after warm-up, ${rss_mid} KiB half-way, ${rss1} KiB at the end");
SKIP: {
    skip 'RSS says nothing under a sanitizer (freed memory is held in quarantine)', 1
        if $ENV{CHANNELS_SANITIZE} || ($ENV{NGINX_BIN} // '') =~ /asan|san\b/;
    cmp_ok($rss1 - $rss0, '<=', 3072, sprintf('worker RSS grew by %d KiB over %d cycles (<= 3 MiB)', $rss1 - $rss0, $cycles));
    cmp_ok($rss1 - $rss_mid, '<=', 768, sprintf('worker RSS grew by %d KiB over the second half (<= 768 KiB)', $rss1 - $rss_mid));
}
is_deeply([ $t->worker_pids ], \@workers0, 'no worker died');

done_testing;
