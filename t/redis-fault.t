#!/usr/bin/perl
# channel_redis faults (README "channel_redis"). Redis is killed (kill -9) with publishes in flight
# and SSE subscribers connected on two hosts, then restarted empty (no persistence):
# - while it is down, publishing answers 503, never 201; streams stay open and keep pinging;
#   a waiting long-poll keeps waiting;
# - when it is back, publishing works again and every subscriber gets the new messages;
# - nothing acknowledged is silently lost: a message answered 201 reaches every subscriber of
#   the host that acknowledged it, and every other host's subscribers either get it or are told
#   (channel-gap); ids keep increasing, nothing arrives twice, nothing refused while Redis was
#   down is ever delivered;
# - a client resuming with a cursor from before the data loss gets channel-gap, on the hosts
#   that lived through it and on a host started afterwards.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp id_parse json_decode);
use RedisServer;
use JSON::PP ();

RedisServer->skip_all_unless_available;

my $redis = RedisServer->new;
my $conf = 'sse_ping 1s; longpoll_timeout 60s;';
my %host = (A => $redis->host(prefix => 'rf:', http => $conf), B => $redis->host(prefix => 'rf:', http => $conf));
my ($A, $B) = @host{qw(A B)};


sub redis_stats {
    my $t = shift;
    my $z = $t->zone_stats('/stats', 'events', port => 1) or return {};
    return $z->{redis} // {};
}

# ---- which nginx worker holds a socket (from /proc: fd symlinks and the TCP table) ----
sub tcp_sockets {   # inode => [local port, remote port]
    my %t;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $f or next;
        <$fh>;
        while (<$fh>) {
            my @c = split ' ';
            my ($lp) = $c[1] =~ /:([0-9A-F]+)$/;
            my ($rp) = $c[2] =~ /:([0-9A-F]+)$/;
            $t{ $c[9] } = [ hex $lp, hex $rp ];
        }
    }
    return \%t;
}

# The worker of $t whose socket matches (local port, remote port); undef ports match anything.
sub worker_with_socket {
    my ($t, $lport, $rport) = @_;
    my $tcp = tcp_sockets();
    for my $pid ($t->worker_pids) {
        opendir my $d, "/proc/$pid/fd" or next;
        for my $fd (readdir $d) {
            my $l = readlink "/proc/$pid/fd/$fd" // next;
            my ($inode) = $l =~ /^socket:\[(\d+)\]$/ or next;
            my $p = $tcp->{$inode} or next;
            return $pid if (!defined $lport || $p->[0] == $lport) && (!defined $rport || $p->[1] == $rport);
        }
    }
    return undef;
}

# Every publish of channel f: data => {host, status, id, phase}.
my %pub;
my $seq = 0;
sub publish_f {
    my ($h, $phase) = @_;
    my $data = 'f ' . ++$seq;
    my $r = $host{$h}->publish_request('f', $data);
    $pub{$data} = { host => $h, status => $r->{status}, id => $r->{json} && $r->{json}{id}, phase => $phase };
    return $r;
}

# ---- subscribers on both hosts, messages flowing ----
my %subs = (
    'A sse'   => [ A => $A->sse_open('/events/f') ],
    'B sse 1' => [ B => $B->sse_open('/events/f') ],
    'B sse 2' => [ B => $B->sse_open('/events/f') ],
);
ok($A->wait_subscribers('f', 1) && $B->wait_subscribers('f', 2), 'SSE subscribers on A (1) and B (2)');
my @up = map { publish_f($_ % 2 ? 'A' : 'B', 'up') } 1 .. 6;
is_deeply([ map { $_->{status} } @up ], [ (201) x 6 ], 'Redis up: 6 publishes on A and B answered 201');
for my $name (sort keys %subs) {
    my @ev = map { $subs{$name}[1]->next_event(timeout => 5) } 1 .. 6;
    is_deeply([ map { $_ && $_->{data} } @ev ], [ map { "f $_" } 1 .. 6 ], "$name: the first six, in order");
}
my $old_cursor = $up[1]{json}{id};   # a client that read two messages, for the gap checks later
my $g1 = $B->publish_request('g', 'g 1');
my $lp = $B->poll_start('/poll/g', cursor => $g1->{json}{id});
ok($B->wait_subscribers('g', 1), 'a long-poll request waits on B (channel g)');

# ---- a worker's log tail drops while Redis stays up ----
# The other worker of the host keeps mirroring the shared log; the worker whose tail dropped
# must still deliver what was mirrored meanwhile to its own subscribers, without waiting for
# another message.
{
    my @subs = map { $B->sse_open('/events/blip') } 1 .. 12;
    ok($B->wait_subscribers('blip', 12), 'twelve SSE subscribers of blip on B');
    my %by_worker;
    for my $s (@subs) {
        my $pid = worker_with_socket($B, $B->port(0), $s->socket->sockport);
        push @{ $by_worker{ $pid // 'unknown' } }, $s;
    }
    my ($pid) = grep { $_ ne 'unknown' } sort keys %by_worker;
    my $tail;
    for my $line (split /\n/, $redis->command('CLIENT', 'LIST') // '') {
        next unless $line =~ /^id=(\d+) addr=[\d.]+:(\d+) .* cmd=xread\b/;
        my ($id, $port) = ($1, $2);
        $tail = $id if defined $pid && (worker_with_socket($B, $port, $redis->port) // 0) == $pid;
    }
    SKIP: {
        skip 'could not map sockets to workers through /proc', 3 unless defined $pid && defined $tail;
        diag('subscribers per worker of B: ' . join(', ', map { "$_: " . scalar @{ $by_worker{$_} } } sort keys %by_worker));
        is($redis->command('CLIENT', 'KILL', 'ID', $tail), 1, "B worker $pid: its log tail connection is cut");
        my $m = $A->publish_request('blip', 'blip 1');
        is($m->{status}, 201, 'a message published on A meanwhile');
        my @late = grep { my $e = $_->next_event(timeout => 3); !($e && $e->{data} eq 'blip 1') } @subs;
        is(scalar(@late), 0, 'every subscriber on B gets it, whichever worker holds it')
            or diag(scalar(@late) . ' of 12 did not get it within 3 s');
        if (@late) {
            my $m2 = $A->publish_request('blip', 'blip 2');
            my $n = grep { my $s = $_; my @e = map { $s->next_event(timeout => 3) } 1 .. 2;
                           ($e[0] && $e[0]{data} eq 'blip 1') && ($e[1] && $e[1]{data} eq 'blip 2') } @late;
            diag("after another message (blip 2), $n of them got blip 1 and blip 2");
        }
    }
    $_->close for @subs;
}

# ---- the fault ----
# First the log-tail connections drop (as in a network blip): they reconnect after a backoff.
# A publish acknowledged in that window is known only to Redis and to the host that published
# it. Then, with more publishes in flight, Redis is killed.
my $mark_a = $A->log_mark;
my $mark_b = $B->log_mark;
my @tails;
$A->wait_for(sub {
    @tails = ($redis->command('CLIENT', 'LIST') // '') =~ /^id=(\d+) .* cmd=xread\b/mg;
    @tails == 4;
}, timeout => 10);
is(scalar(@tails), 4, 'Redis sees four log tails (two hosts, two workers each)');
$redis->command('CLIENT', 'KILL', 'ID', $_) for @tails;
my @window = (publish_f('A', 'window'), publish_f('B', 'window'));
my @inflight;
for my $i (1 .. 16) {
    my $h = $i % 2 ? 'A' : 'B';
    my $data = 'f ' . ++$seq;
    push @inflight, [ $data, $h, $host{$h}->request_start(POST => '/pub/f', body => $data, port => 1) ];
}
$redis->kill9;
my %st;
for my $p (@inflight) {
    my ($data, $h, $pending) = @$p;
    my $r = $pending->response(timeout => 15);
    $pub{$data} = { host => $h, status => $r->{status}, id => $r->{json} && $r->{json}{id}, phase => 'inflight' };
    $st{ $r->{status} }++;
}
diag('publishes acknowledged in the tail-reconnect window: ' . join(', ', map { $_->{status} } @window));
diag('publishes in flight at the kill: ' . join(', ', map { "$st{$_} x $_" } sort keys %st));
is(($st{201} // 0) + ($st{503} // 0), 16, 'each publish in flight at the kill answered 201 or 503')
    or diag explain \%st;

# ---- Redis down ----
my @down = map { publish_f($_ % 2 ? 'A' : 'B', 'down') } 1 .. 6;
is_deeply([ map { $_->{status} } @down ], [ (503) x 6 ], 'Redis down: 6 publishes answered 503');
is($down[0]{body}, "redis unavailable\n", '503 body: a one-line reason');
is($B->http(DELETE => '/pub/f', port => 1)->{status}, 503, 'DELETE while Redis is down: 503');
is($A->http(GET => '/pub/f', port => 1)->{status}, 200, 'GET still answers from the local mirror');
ok($A->wait_for(sub { my $r = redis_stats($A); JSON::PP::is_bool($r->{connected}) && !$r->{connected} }),
   'stats on A: connected is false');
ok($B->wait_for(sub { (redis_stats($B)->{reconnects} // 0) > 0 }), 'stats on B: reconnects counted');

# Streams stay open and keep pinging (events read meanwhile are kept for the checks below).
for my $name (sort keys %subs) {
    my $s = $subs{$name}[1];
    my ($pings, @events) = (0);
    while (my $b = $s->next_block(timeout => 3)) {
        if (@{ $b->{fields} }) { push @events, $b; next }
        last if ++$pings >= 2;
    }
    push @{ $subs{$name} }, \@events;
    ok($pings >= 2 && !$s->eof, "$name: stream open, pings continue while Redis is down");
}
ok(!$lp->ready, 'the long-poll request on B is still waiting');

# ---- Redis back, empty ----
$redis->start;
ok($redis->wait_linked($A, since => $mark_a, workers => 2), 'A reconnected to Redis');
ok($redis->wait_linked($B, since => $mark_b, workers => 2), 'B reconnected to Redis');
ok($A->wait_for(sub { redis_stats($A)->{connected} }), 'stats on A: connected again');
my @back = map { publish_f($_ % 2 ? 'A' : 'B', 'back') } 1 .. 6;
is_deeply([ map { $_->{status} } @back ], [ (201) x 6 ], 'Redis back: 6 publishes answered 201');
my $end = publish_f('A', 'back');
is($end->{status}, 201, 'marker published');
my $end_data = 'f ' . $seq;

my $g2 = $A->publish_request('g', 'g 2');
my $r = $lp->result(timeout => 5);
is_deeply([ $r->{status}, map { $_->{data} } @{ $r->{json}{messages} || [] } ], [ 200, 'g 2' ],
          'the long-poll that waited through the outage answers with the new message');

for my $name (sort keys %subs) {
    my ($h, $s, $early) = @{ $subs{$name} };
    my @ev = @$early;
    while (!@ev || ($ev[-1]{data} // '') ne $end_data) {
        my $e = $s->next_event(timeout => 5) or last;
        push @ev, $e;
    }
    my @msgs = grep { !defined $_->{event} } @ev;
    my $gap = grep { ($_->{event} // '') eq 'channel-gap' } @ev;
    my %got = map { $_->{data} => 1 } @msgs, map { { data => "f $_" } } 1 .. 6;   # the first six, read above
    my @ids = map { $_->{id} } @msgs;
    ok(!grep({ id_cmp($ids[$_ - 1], $ids[$_]) >= 0 } 1 .. $#ids), "$name: ids increase, nothing twice");
    is_deeply([ grep { $_->{event} && $_->{event} ne 'channel-gap' } @ev ], [], "$name: no other events");
    my @unknown = grep { !$pub{ $_->{data} } || ($pub{ $_->{data} }{id} // $_->{id}) ne $_->{id} } @msgs;
    is_deeply([ map { $_->{data} } @unknown ], [], "$name: every message delivered under the id its publish got");
    my @refused = grep { $pub{$_}{phase} eq 'down' } keys %got;
    is_deeply(\@refused, [], "$name: nothing refused while Redis was down is delivered");
    my @lost_own = sort grep { $pub{$_}{status} == 201 && $pub{$_}{host} eq $h && !$got{$_} } keys %pub;
    ok(!@lost_own, "$name: every message its own host acknowledged (201) is delivered")
        or diag("acknowledged by $h, never delivered by $h: @lost_own" . ($gap ? ' (a channel-gap was sent)' : ''));
    my @missing = sort grep { $pub{$_}{status} == 201 && $pub{$_}{host} ne $h && !$got{$_} } keys %pub;
    ok(!@missing || $gap, "$name: every message the other host acknowledged is delivered, or a channel-gap says so")
        or diag("acknowledged by the other host, not delivered, no channel-gap: @missing");
    my @back_missing = grep { !$got{$_} } map { "f $_" } $seq - 6 .. $seq;
    is_deeply(\@back_missing, [], "$name: all messages published after the restart");
}

# ---- cursors from before the data loss ----
{
    my $s = $B->sse_open('/events/f', headers => { 'Last-Event-ID' => $old_cursor });
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{event}, 'channel-gap', 'B: a cursor from before Redis lost its data gets channel-gap');
    my $d = $e && json_decode($e->{data});
    is_deeply($d && [ @$d{qw(channel last_event_id)} ], [ 'f', $old_cursor ], 'channel-gap names channel and cursor');
    my @rest;
    while (my $x = $s->next_event(timeout => 5)) { push @rest, $x; last if $x->{data} eq $end_data }
    my @ids = map { $_->{id} } @rest;
    ok(@ids && !grep({ id_cmp($ids[$_ - 1], $ids[$_]) >= 0 } 1 .. $#ids) && id_cmp($ids[0], $old_cursor) > 0,
       'then what B retains after the cursor, in id order');
    $s->close;
    my $p = $A->poll('/poll/f', cursor => $old_cursor, timeout => 5);
    is_deeply([ $p->{status}, $p->{json} && $p->{json}{gap} ], [ 200, JSON::PP::true ],
              'A: long-poll with that cursor answers "gap":true');

    # A host started after the loss holds only what Redis holds now: the same cursor is short.
    my $C = $redis->host(prefix => 'rf:', http => $conf);
    ok($C->wait_for(sub { ($C->http(GET => '/pub/f', port => 1)->{json}{last_event_id} // '') eq $end->{json}{id} }),
       'C (started after the loss) mirrored what Redis holds');
    my $sc = $C->sse_open('/events/f', headers => { 'Last-Event-ID' => $old_cursor });
    my $ec = $sc->next_event(timeout => 5);
    is($ec && $ec->{event}, 'channel-gap', 'C: the same old cursor gets channel-gap') or diag explain $ec;
    $sc->close;
    $C->finish;
}

done_testing;
