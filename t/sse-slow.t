#!/usr/bin/perl
# Slow consumers (README "SSE", "Statistics", issue 3): a subscriber that never reads (small
# SO_RCVBUF, and the stream port's send buffer is small, so nginx must hold what the kernel will not
# take) is closed once it has more than 1 MiB unsent, while 100 readers on the same worker receive
# everything; stats dropped_slow counts it; it reconnects with its last id and gets the rest once (a
# replay over 1 MiB to a client that reads is no reason to cut it). Also: one 2 MiB message reaches
# readers; streams that stay requests (HTTP/1.0, limit_conn) are cut off the same way; clients
# reconnecting with an old cursor that never read do not pile their replay up in the worker. Memory
# bound stated here: during the run the worker's anonymous RSS (private heap, not the shared zone)
# grows by less than $RSS_BOUND_KB = 8 MiB: the 1 MiB a slow subscriber may hold, plus the messages
# in flight shared by every stream (a per-subscriber copy of what is in flight alone would be 100
# streams x ~5 x 24 KiB = 12 MiB; never freeing delivered frames, 240 MB).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_cmp);
use Attack ();

my $GOOD = 100;
my $M = 100;               # messages
my $SIZE = 24 * 1024;      # bytes each: 2.4 MB in all, well over 1 MiB + the socket buffers
my $LAG = 4;               # readers are kept within this many messages of the publisher
my $RSS_BOUND_KB = 8 * 1024;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:32m history=200 ttl=1h;
    limit_conn_zone $binary_remote_addr zone=perip:1m;
    server {
        listen 127.0.0.1:%%PORT_0%% sndbuf=32k;
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
        # limit_conn keeps the stream a request (not detached): the other write path
        location ~ ^/held/(?<ch>[^/]+)$    { limit_conn perip 100; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 4m;
        client_body_buffer_size 4m;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'events', port => 1) || {} }

# ASan keeps freed memory in quarantine: RSS bounds mean nothing under `make sanitize`.
sub rss_bound {
    my ($growth, $bound, $name) = @_;
    SKIP: {
        skip "RSS bound not checked under sanitizers: $name", 1 if $ENV{CHANNELS_SANITIZE};
        cmp_ok($growth, '<', $bound, $name);
    }
}

my ($worker) = $t->worker_pids;
my $slow = $t->sse_start('/events/slow', rcvbuf => 4096);
my @good = map { $t->sse_start('/events/slow') } 1 .. $GOOD;

sub pump { ChannelsTest::SSE::pump(\@good, @_) }

ok(pump(sub { !grep { !$_->started } @good }, 10), "$GOOD readers connected");
ok($t->wait_for(sub { (zone()->{subscribers} // 0) == $GOOD + 1 }, timeout => 5), 'stats: ' . ($GOOD + 1) . ' subscribers');
is(zone()->{dropped_slow}, 0, 'dropped_slow 0 at the start');

my $rss0 = Attack::anon_kb($worker);
my $rss_max = $rss0;
my @ids;
my $c = $t->client(port => 1);
my $min_got = sub { my $m = $M; for (@good) { my $n = @{ $_->received }; $m = $n if $n < $m } $m };
my $dropped_after;
for my $i (1 .. $M) {
    my $data = sprintf('%04d:', $i) . ('x' x ($SIZE - 5));
    my $r = $c->request(POST => '/pub/slow', body => $data);
    if ($r->{status} != 201) { fail("publish $i: $r->{status}"); last }
    push @ids, $r->{json}{id};
    pump(sub { $min_got->() >= $i - $LAG }, 20) or do { fail("readers fell behind at message $i"); last };
    my $rss = Attack::anon_kb($worker);
    $rss_max = $rss if $rss > $rss_max;
    $dropped_after //= $i if $r->{json}{subscribers} == $GOOD;
}
$c->close;
is(scalar @ids, $M, "$M messages of $SIZE bytes published");
ok(pump(sub { $min_got->() >= $M }, 20), "every reader got all $M messages");
my $want = join ',', @ids;
my @bad = grep { join(',', map { $_->{id} } @{ $_->received }) ne $want
                 || grep({ length($_->{data}) != $SIZE } @{ $_->received }) } @good;
is(scalar @bad, 0, 'each reader: every message once, in order, whole');
ok(!grep({ $_->eof } @good), 'no reader was cut off');

my $z;
ok($t->wait_for(sub { $z = zone(); ($z->{dropped_slow} // 0) == 1 }, timeout => 5), 'stats: dropped_slow 1')
    or diag explain $z;
is($z->{subscribers}, $GOOD, "stats: $GOOD subscribers left (the slow one is gone before it read anything)");
ok(defined $dropped_after, 'publish answers stopped counting the slow subscriber after message '
   . ($dropped_after // 'never') . sprintf(' (%.0f KiB published)', ($dropped_after // 0) * $SIZE / 1024));
cmp_ok(($dropped_after // 0) * $SIZE, '>', 1024 * 1024, 'it was not cut before 1 MiB could have been pending');
my $growth = $rss_max - $rss0;
rss_bound($growth, $RSS_BOUND_KB, "worker anonymous RSS grew by $growth KiB (< $RSS_BOUND_KB KiB) while "
       . sprintf('%.0f MB went out', $GOOD * $M * $SIZE / 1e6));

# The slow subscriber reads now: what the kernel held, then the end of its stream.
ChannelsTest::SSE::pump([$slow], sub { $slow->eof }, 10);
ok($slow->eof, 'the slow subscriber\'s connection was closed by the server');
my @partial = @{ $slow->received };
cmp_ok(scalar @partial, '<', $M, 'it had received only part of the messages (' . scalar(@partial) . ')');
my $prefix_ok = join(',', map { $_->{id} } @partial) eq join(',', @ids[0 .. $#partial]);
ok($prefix_ok, 'what it received is a prefix of the stream, whole events in order');

# It reconnects with its cursor and gets the rest, once.
my $last = @partial ? $partial[-1]{id} : undef;
my $again = $t->sse_start('/events/slow', headers => { defined $last ? ('Last-Event-ID' => $last) : () });
ChannelsTest::SSE::pump([$again], sub { @{ $again->received } >= $M - @partial || $again->eof }, 10);
my @rest = map { $_->{id} } @{ $again->received };
my @want_rest = @ids[scalar(@partial) .. $M - 1];
ok(join(',', @rest) eq join(',', @want_rest),
   'reconnected with Last-Event-ID: the rest of the messages, once, in order')
    or diag('got ' . scalar(@rest) . ' of the ' . scalar(@want_rest) . ' remaining messages'
            . ($again->eof ? ', then the server closed the stream' : ''));
# It reads, so it is not "a subscriber that stops reading", however long its replay is.
ok(!$again->eof, 'the reconnected (reading) subscriber is not cut off while its replay goes out');
is(zone()->{dropped_slow}, 1, 'stats: dropped_slow still 1');

$_->close for @good, $again, $slow;
ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 5), 'closed: 0 subscribers');

# ---- one message over 1 MiB reaches subscribers that read: they have not stopped reading
{
    my @r = map { $t->sse_start('/events/big') } 1 .. 3;
    ok(ChannelsTest::SSE::pump(\@r, sub { !grep { !$_->started } @r }, 10), 'three readers of "big"');
    ok($t->wait_for(sub { (zone()->{subscribers} // 0) == 3 }, timeout => 5), 'subscribed');
    my $dropped0 = zone()->{dropped_slow};
    my $big = 'B' x (2 * 1024 * 1024);
    my $r1 = $t->http(POST => '/pub/big', body => $big, port => 1);
    is($r1->{status}, 201, 'a 2 MiB message published');
    my $r2 = $t->http(POST => '/pub/big', body => 'after', port => 1);
    ok(ChannelsTest::SSE::pump(\@r, sub { !grep { @{ $_->received } < 2 && !$_->eof } @r }, 20),
       'the readers got two events or were closed');
    my $ok = grep { @{ $_->received } == 2 && length($_->received->[0]{data}) == length($big)
                    && $_->received->[1]{data} eq 'after' && !$_->eof } @r;
    is($ok, 3, 'every reader got the 2 MiB message whole, then the next one, and is still connected')
        or diag(join '; ', map { scalar(@{ $_->received }) . ' events' . ($_->eof ? ', closed by the server' : '') } @r);
    is(zone()->{dropped_slow} - $dropped0, 0, 'stats: no reader counted as dropped_slow');
    $_->close for @r;
}

# ---- the same cut-off on streams that stay requests: HTTP/1.0, and a limit_conn location
{
    my $old = $t->sse_open('/events/modes', version => '1.0', rcvbuf => 4096);
    my $held = $t->sse_open('/held/modes', rcvbuf => 4096);
    is($old->status . ' ' . $held->status, '200 200', 'stalled HTTP/1.0 and limit_conn streams');
    ok($t->wait_for(sub { (zone()->{subscribers} // 0) == 2 }, timeout => 5), 'subscribed');
    my $dropped0 = zone()->{dropped_slow};
    my $r0 = Attack::anon_kb($worker);
    my $c = $t->client(port => 1);
    $c->request(POST => '/pub/modes', body => 'm' x $SIZE) for 1 .. 100;
    $c->close;
    ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 5), 'both cut off after 2.4 MB');
    is(zone()->{dropped_slow} - $dropped0, 2, 'stats: dropped_slow + 2');
    my $growth = Attack::anon_kb($worker) - $r0;
    rss_bound($growth, 4 * 1024, "worker anonymous RSS grew by $growth KiB (< 4 MiB)");
    $_->close for $old, $held;
}

# ---- subscribers that reconnect with an old cursor and never read: their replay (12 MiB
# each) must not pile up in the worker; they are cut off like any subscriber that stops reading.
# Bound: 8 x (1 MiB + one 512 KiB message) = 12 MiB; stated here as 24 MiB with slack.
{
    my $c = $t->client(port => 1);
    my $first;
    for my $i (1 .. 24) {
        my $r = $c->request(POST => '/pub/replay', body => sprintf('%02d', $i) . ('r' x (512 * 1024 - 2)));
        $first //= $r->{json}{id} if $r->{status} == 201;
    }
    $c->close;
    is($t->http(GET => '/pub/replay', port => 1)->{json}{messages}, 24, '24 x 512 KiB retained');
    ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 5), 'no subscribers before');
    my $dropped0 = zone()->{dropped_slow};
    my $r0 = Attack::anon_kb($worker);
    my @stalled = map { $t->sse_start('/events/replay', rcvbuf => 4096, headers => { 'Last-Event-ID' => $first }) } 1 .. 8;
    my $peak = $r0;
    my $cut = $t->wait_for(sub {
        my $r = Attack::anon_kb($worker);
        $peak = $r if $r > $peak;
        (zone()->{dropped_slow} // 0) - $dropped0 == 8;
    }, timeout => 10);
    ok($cut, '8 non-reading subscribers with a 12 MiB replay each are cut off (dropped_slow + 8)')
        or diag('dropped_slow +' . (zone()->{dropped_slow} - $dropped0) . ', subscribers ' . zone()->{subscribers});
    my $growth = $peak - $r0;
    rss_bound($growth, 24 * 1024, "worker anonymous RSS grew by $growth KiB (< 24 MiB) for 8 stalled replays of 12 MiB");
    $_->close for @stalled;
    ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 5), 'closed: 0 subscribers');
}

done_testing;
