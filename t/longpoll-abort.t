#!/usr/bin/perl
# Waiting long-poll requests whose clients go away (README "Long polling": a client that closes is
# forgotten at once; "Errors and failures"; issue 4 "Done means"): rounds of 2,000 waiters (json,
# raw and multi-channel) that disconnect.
# Instance A, 2 workers (reuseport: both hold waiters): after each round the zone's subscriber
# count (stats, per worker, per channel) is back to 0 and the zone's used memory is back to its
# baseline; every FIN close leaves nginx's "client prematurely closed connection" line at info.
# The last round resets half the connections (RST) and publishes right after the closes, so
# answers race the close: no late write (nothing above info logged, no worker dies).
# Instance B, 1 worker (every round puts all waiters on the same process): VmRSS after 2,000
# waiters are gone must be back within 1 MiB of the VmRSS measured before them (after a warm-up
# of 30 waiters for the module's one-time allocations); plain nginx with 2,000 connections in
# the same state gives back all but ~0.2 MiB of the ~19 MiB. Then 3 more rounds (6,000 waiters)
# must add at most 256 KiB (under 44 bytes per waiter: a leaked request pool would be >= 1 KiB).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_LINGER);
use ChannelsTest;
use Attack ();

our $N = 2000;
my $RSS_BASELINE_KB = 1024;    # 2,000 waiters take ~19 MiB of one worker; plain nginx gives back all but ~0.2 MiB
my $RSS_GROWTH_KB = 256;

my $t = ChannelsTest->new(workers => 2, worker_connections => 4096, conf => <<'CONF');
    channel_zone zone=events:8m history=100 ttl=1h;
    longpoll_timeout 60s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport backlog=4096;
        access_log off;
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

sub zone { $t->zone_stats('/stats', 'events', port => 1) || {} }
sub chan_subs { my $r = $t->http(GET => "/pub/$_[0]", port => 1); $r->{json} ? $r->{json}{subscribers} : -1 }

my $cursor = $t->publish('ab', 'x');
$t->publish('ab2', 'y');
$cursor = $t->publish('ab', 'z');
my @paths = ('/poll/ab', '/raw/ab', '/m?ch=ab,ab2');

# Opens $n waiting requests; returns the sockets once the zone counts all of them.
sub open_waiters {
    my $n = shift;
    my @s;
    for my $i (1 .. $n) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port(0), Proto => 'tcp')
            or die "connect #$i: $!\n";
        my $path = $paths[$i % @paths];
        syswrite($s, "GET $path HTTP/1.1\r\nHost: x\r\nLast-Event-ID: $cursor\r\n\r\n") or die "write: $!\n";
        push @s, $s;
    }
    return @s;
}

sub round {
    my ($name, %o) = @_;
    local $N = $o{n} // $N;
    my $mark = $t->log_mark;
    my $z0 = zone();
    my @s = open_waiters($N);
    my $zw;
    ok($t->wait_for(sub { $zw = zone(); ($zw->{subscribers} // 0) == $z0->{subscribers} + $N }, timeout => 20),
       "$name: $N waiters counted") or diag 'subscribers: ' . ($zw->{subscribers} // '?');
    my @per = map { $_->{subscribers} } @{ $zw->{workers} || [] };
    note("$name: waiters per worker: @per; worker RSS while waiting: " . Attack::rss_kb($t->worker_pids) . ' KiB');
    is(scalar(grep { $_ > 0 } @per), $o{one_worker} ? 1 : 2, "$name: " . ($o{one_worker} ? 'the worker holds them' : 'both workers hold waiters'));
    is(chan_subs('ab'), $N, "$name: channel ab counts $N");
    my $in_ab2 = grep { $_ % @paths == 2 } 1 .. $N;
    is(chan_subs('ab2'), $in_ab2, "$name: channel ab2 counts the $in_ab2 multi-channel ones");

    my $rst = 0;
    for my $i (0 .. $#s) {
        if ($o{rst} && $i % 2) {
            setsockopt($s[$i], SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
            $rst++;
        }
        close $s[$i];
    }
    my $pub = $o{publish_now} ? $t->publish('ab', 'racing the closes') : undef;

    my $z;
    ok($t->wait_for(sub { $z = zone(); ($z->{subscribers} // -1) == 0 }, timeout => 15),
       "$name: the zone's subscriber count is back to 0") or diag explain $z;
    is_deeply([ map { $_->{subscribers} } @{ $z->{workers} || [] } ], [ map { 0 } $t->worker_pids ], "$name: each worker: 0");
    is(chan_subs('ab'), 0, "$name: channel ab: 0");
    is(chan_subs('ab2'), 0, "$name: channel ab2: 0");
    cmp_ok(abs(($z->{used} // 0) - ($z0->{used} // 0)), '<=', 4 * 4096,
           "$name: zone used back to its baseline within 4 pages ($z0->{used} -> $z->{used})");
    if (!$o{publish_now}) {
        my $lines;
        ok($t->wait_for(sub { $lines = () = $t->log_since($mark) =~ /\[info\].*client prematurely closed connection/g;
                              $lines >= $N - $rst }, timeout => 10),
           "$name: \"client prematurely closed connection\" at info for each closed waiter ($lines)");
    }
    my $after = $t->publish_request('ab', "after $name");
    is($after->{status}, 201, "$name: a publish afterwards");
    is($after->{json}{subscribers}, 0, "$name: a publish afterwards finds 0 subscribers");
    unlike($t->log_since($mark), qr/\[(?:error|crit|alert|emerg)\]|exited on signal/, "$name: nothing above info logged");
    $cursor = $after->{json}{id};
}

my @workers0 = $t->worker_pids;
round('round 1');
round('round 2');
round('round 3 (RST on half, publish racing the closes)', rst => 1, publish_now => 1);
is_deeply([ $t->worker_pids ], \@workers0, 'no worker died');
$t->finish;

# ---- instance B: one worker; RSS back to the baseline measured before the 2,000 waiters
$t = ChannelsTest->new(workers => 1, worker_connections => 4096, conf => <<'CONF');
    channel_zone zone=events:8m history=100 ttl=1h;
    longpoll_timeout 60s;
    server {
        listen 127.0.0.1:%%PORT_0%% backlog=4096;
        access_log off;
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
$t->publish('ab2', 'y');
$cursor = $t->publish('ab', 'z');    # after every retained message: all requests wait
my $rss_start = Attack::rss_kb($t->worker_pids);
round('B warm-up, 30 waiters', one_worker => 1, n => 30);    # the module's one-time allocations
my $rss0 = Attack::rss_kb($t->worker_pids);
round('B round 1', one_worker => 1);
# The worker gives freed memory back a moment after its last subscriber left (a trim costs
# page faults: it is not done on every departure).
my $rss1;
$t->wait_for(sub { $rss1 = Attack::rss_kb($t->worker_pids); $rss1 - $rss0 <= $RSS_BASELINE_KB }, timeout => 5);
round("B round $_", one_worker => 1) for 2 .. 4;
my $rss2;
$t->wait_for(sub { $rss2 = Attack::rss_kb($t->worker_pids); $rss2 - $rss1 <= $RSS_GROWTH_KB }, timeout => 5);
note("worker VmRSS: ${rss_start} KiB at start, ${rss0} KiB after 30 waiters, ${rss1} KiB after $N, "
   . "${rss2} KiB after 3 x $N more");
SKIP: {
    skip 'RSS says nothing under a sanitizer (freed memory is held in quarantine)', 2
        if $ENV{CHANNELS_SANITIZE} || ($ENV{NGINX_BIN} // '') =~ /asan|san\b/;
    cmp_ok($rss1 - $rss0, '<=', $RSS_BASELINE_KB,
           sprintf('%d waiters gone: worker VmRSS back to the baseline before them (%+d KiB, tolerance %d KiB)',
                   $N, $rss1 - $rss0, $RSS_BASELINE_KB));
    cmp_ok($rss2 - $rss1, '<=', $RSS_GROWTH_KB,
           sprintf('3 more rounds (%d waiters): no growth (%+d KiB, tolerance %d KiB)', 3 * $N, $rss2 - $rss1, $RSS_GROWTH_KB));
}

done_testing;
