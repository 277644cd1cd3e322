#!/usr/bin/perl
# Long-poll and channel deletion / lost messages (README "channel_zone", "Publishing", "Long
# polling", issue 4): DELETE of a channel answers every request waiting on it 410 (`channel
# deleted`, with Last-Event-ID and Cache-Control), on either worker, json and raw, single- and
# multi-channel; requests on other channels keep waiting; the channel can be used again afterwards.
# Gap: with a small history, resuming from a cursor whose successors were evicted answers "gap":true
# with what is retained; a cursor with nothing lost after it answers no gap key.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    channel_zone zone=small:1m history=5 ttl=1h;
    longpoll_timeout 20s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/poll/(?<ch>[^/]+)$    { longpoll_channel $ch zone=events; }
        location ~ ^/raw/(?<ch>[^/]+)$     { longpoll_channel $ch zone=events format=raw; }
        location = /m                      { longpoll_channel $arg_ch zone=events; }
        location ~ ^/short/(?<ch>[^/]+)$   { longpoll_timeout 1s; longpoll_channel $ch zone=events; }
        location ~ ^/gap/(?<ch>[^/]+)$     { longpoll_timeout 1s; longpoll_channel $ch zone=small; }
        location = /gapm                   { longpoll_timeout 1s; longpoll_channel $arg_ch zone=small; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch zone=events; }
        location ~ ^/spub/(?<ch>[^/]+)$    { publish_channel $ch zone=small; }
        location = /stats                  { channel_stats; }
    }
CONF

sub gone_ok {
    my ($r, $label) = @_;
    is($r->{status}, 410, "$label: 410") or diag explain $r;
    is($r->{body}, "channel deleted\n", "$label: body 'channel deleted'");
    is($r->{headers}{'cache-control'}, 'no-cache', "$label: Cache-Control: no-cache");
    ok(defined $r->{headers}{'last-event-id'}, "$label: Last-Event-ID present");
    cmp_ok($r->{elapsed}, '<', 10, "$label: answered on the DELETE, not at the 20 s timeout");
}

# ---- DELETE while waiting: 410 for every waiter, on both workers; others keep waiting
{
    my $c = $t->publish('del', 'x');
    $t->publish('keep', 'k');
    my (@p, $workers);
    my $both = 0;
    for my $try (1 .. 60) {
        push @p, $t->poll_start('/poll/del', cursor => $c);
        next unless $t->wait_for(sub { $t->subscribers('del') == @p }, timeout => 10);
        $workers = ($t->zone_stats('/stats', 'events', port => 1) || {})->{workers} || [];
        if (@p >= 4 && 2 == grep { ($_->{subscribers} // 0) >= 1 } @$workers) { $both = 1; last }
    }
    ok($both, scalar(@p) . ' waiters on both workers') or diag explain $workers;
    my $raw = $t->poll_start('/raw/del', cursor => $c);
    my $other = $t->poll_start('/poll/keep', cursor => $c);
    my $keep_cursor = $t->publish('keep', 'k2');
    my $other_r = $other->result(timeout => 10);    # answered at once: a message after $c
    my $keep = $t->poll_start('/poll/keep', cursor => $keep_cursor);
    ok($t->wait_for(sub { $t->subscribers('del') == @p + 1 && $t->subscribers('keep') == 1 }, timeout => 10),
       'all waiting (json, raw, and one on another channel)');

    my $d = $t->http(DELETE => '/pub/del', port => 1);
    is($d->{status}, 200, 'DELETE: 200');
    my $n410 = 0;
    for my $i (0 .. $#p) {
        my $r = $p[$i]->result(timeout => 10);
        $n410++ if $r->{status} == 410;
        gone_ok($r, "json waiter $i") if $i == 0 || $r->{status} != 410;
    }
    is($n410, scalar @p, 'every json waiter: 410');
    gone_ok($raw->result(timeout => 10), 'raw waiter');
    ok(!$keep->ready, 'a waiter on another channel is not answered');
    is($t->subscribers('keep'), 1, '... and still counted');
    my $k3 = $t->publish('keep', 'k3');
    my $r = $keep->result(timeout => 10);
    is($r->{status}, 200, 'it gets its next message');
    is($r->{json} && $r->{json}{messages}[0]{id}, $k3, '... the right one');

    # the channel is gone; polling it again from before the deletion is told at once; from
    # the 410's Last-Event-ID (the deletion's id) it waits on a new empty channel
    is($t->http(GET => '/pub/del', port => 1)->{status}, 404, 'after DELETE the channel info is 404');
    my $again = $t->poll('/poll/del', cursor => $c, timeout => 5);
    is($again->{status}, 410, 'polling again from the old cursor: 410 at once (the deletion came after it)');
    my $gone_at = $again->{headers}{'last-event-id'};
    cmp_ok(id_cmp($gone_at // '0-0', $c), '>', 0, '... with the deletion\'s id as Last-Event-ID');
    my $p2 = $t->poll_start('/poll/del', cursor => $gone_at);
    ok($t->wait_for(sub { $t->subscribers('del') == 1 }, timeout => 10), 'polling it again waits (the channel exists again, empty)');
    my $id = $t->publish('del', 'reborn');
    $r = $p2->result(timeout => 10);
    is($r->{status}, 200, 'and a new message reaches it');
    is($r->{json} && $r->{json}{messages}[0]{id}, $id, '... with its id');
    cmp_ok(id_cmp($id, $d->{json}{last_event_id} // $c), '>', 0, 'ids keep increasing after a DELETE');
}

# ---- a multi-channel waiter: DELETE of one of its channels answers 410 (README "Long polling":
# 410)
{
    my $c = $t->publish('ma', 'x');
    $t->publish('mb', 'y');
    $c = $t->publish('ma', 'z');
    my $p = $t->poll_start('/m?ch=ma,mb', cursor => $c);
    ok($t->wait_for(sub { $t->subscribers('mb') == 1 }, timeout => 10), 'waiting on ma,mb');
    is($t->http(DELETE => '/pub/mb', port => 1)->{status}, 200, 'DELETE mb');
    gone_ok($p->result(timeout => 10), 'multi-channel waiter, one channel deleted');
    ok($t->wait_for(sub { $t->subscribers('ma') == 0 }, timeout => 10), 'no longer counted on the other channel');
}

# ---- DELETE of a channel nobody waits on, then a poll with an old cursor: told at once (410),
# as a client between two polls must be; without a cursor it just waits
{
    my $c = $t->publish('dd', 'x');
    $t->publish('dd', 'y');
    is($t->http(DELETE => '/pub/dd', port => 1)->{status}, 200, 'DELETE dd (no waiter)');
    my $r = $t->poll('/short/dd', cursor => $c);
    is($r->{status}, 410, 'a later poll with an old cursor: 410, the channel was deleted after it');
    $r = $t->poll('/short/dd');
    is($r->{status}, 204, 'a poll without a cursor: nothing to tell, 204 at the timeout');
}

# ---- gap: history 5, a cursor whose successors were evicted
{
    my $c1 = $t->publish('g', 'g1', location => 'spub');
    my @ids = map { $t->publish('g', "g$_", location => 'spub') } 2 .. 11;    # g7..g11 retained
    my @kept = @ids[5 .. 9];
    my $info = $t->http(GET => '/spub/g', port => 1)->{json};
    is($info->{messages}, 5, 'history 5: 5 retained');
    is($info->{oldest_event_id}, $kept[0], 'the oldest retained is g7');

    my $r = $t->poll('/gap/g', cursor => $c1);
    is($r->{status}, 200, 'resume from an evicted cursor: 200');
    my $j = json_decode($r->{body}) || {};
    is($j->{gap}, JSON::PP::true(), '"gap":true');
    like($r->{body}, qr/"gap":true/, 'literally "gap":true on the wire');
    is_deeply([ map { $_->{id} } @{ $j->{messages} || [] } ], \@kept, 'then every retained message, in order');
    is($r->{headers}{'last-event-id'}, $kept[-1], 'Last-Event-ID: the newest');

    $r = $t->poll('/gap/g', cursor => $ids[3]);    # g5: g6 was evicted
    $j = json_decode($r->{body}) || {};
    is($j->{gap}, JSON::PP::true(), 'cursor g5 (g6 evicted): gap');

    $r = $t->poll('/gap/g', cursor => $ids[4]);    # g6: nothing lost after it
    $j = json_decode($r->{body}) || {};
    is($r->{status}, 200, 'cursor g6 (the one before the oldest retained): 200');
    ok(!exists $j->{gap}, 'no gap key: nothing was lost after it');
    is_deeply([ map { $_->{id} } @{ $j->{messages} || [] } ], \@kept, 'the retained messages');

    $r = $t->poll('/gap/g', cursor => $kept[1]);
    $j = json_decode($r->{body}) || {};
    ok(!exists $j->{gap}, 'a retained cursor: no gap');
    is(scalar @{ $j->{messages} || [] }, 3, 'the 3 after it');

    # a cursor older than the channel itself: nothing of this channel was lost
    my $before = $t->publish('g-other', 'o', location => 'spub');
    my @n = map { $t->publish('g-new', "n$_", location => 'spub') } 1 .. 3;
    $r = $t->poll('/gap/g-new', cursor => $before);
    $j = json_decode($r->{body}) || {};
    ok(!exists $j->{gap}, 'a cursor from before a new channel\'s first message: no gap (nothing evicted)');
    is_deeply([ map { $_->{id} } @{ $j->{messages} || [] } ], \@n, 'all its messages');

    # a waiting request whose channel evicts while it waits is still answered in full order
    my $p = $t->poll_start('/gap/g', cursor => $kept[-1]);
    ok($t->wait_for(sub { my $r = $t->http(GET => '/spub/g', port => 1); $r->{json} && $r->{json}{subscribers} == 1 },
                    timeout => 10), 'a request waits on g');
    my $id = $t->publish('g', 'g12', location => 'spub');
    $r = $p->result(timeout => 10);
    $j = json_decode($r->{body}) || {};
    is_deeply([ map { $_->{id} } @{ $j->{messages} || [] } ], [ $id ], 'woken with the new message');
    ok(!exists $j->{gap}, 'no gap (the eviction was of messages before its cursor)');

    # multi-channel: one channel lost messages after the cursor, the other did not
    my $mc = $t->publish('gm1', 'a0', location => 'spub');
    $t->publish('gm2', 'b1', location => 'spub');
    $t->publish('gm1', "a$_", location => 'spub') for 1 .. 7;    # a0..a2 of gm1 evicted (history 5)
    $r = $t->poll('/gapm?ch=gm1,gm2', cursor => $mc);
    $j = json_decode($r->{body}) || {};
    is($j->{gap}, JSON::PP::true(), 'multi-channel: one channel lost messages after the cursor: gap');
    is_deeply([ map { $_->{data} } @{ $j->{messages} || [] } ], [ 'b1', map { "a$_" } 3 .. 7 ],
              'multi-channel: every retained message of both, in id order');
}

done_testing;
