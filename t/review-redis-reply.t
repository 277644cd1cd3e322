#!/usr/bin/perl
# Review finding: a worker's Redis tail holds a whole XREAD reply in memory, up to 512 entries
# of any size: a host that fell behind takes one reply of 512 x the largest message (README "channel_redis"
# "Reply sizes are bounded"; README "What one client can cost": worker memory).
#
# read_log() asks `XREAD COUNT 512 BLOCK 0`. The only bound on a reply is the check in
# on_socket_read(): `reader->len > kMaxReplyBytes` (64 MiB). But hiredis's reader->len is its
# unparsed input buffer, which it trims after every parse (it keeps only the part of a reply
# not parsed yet, about one bulk string and the last 16 KiB read); the parsed elements pile up
# as redisReply objects until the reply is complete. So a reply of 512 messages of 1 MiB
# (nginx's default client_max_body_size) is 512 MiB in one worker, and nothing stops it.
#
# The test: host A (one worker) is stopped while host B publishes 300 messages of 500 KB
# through the shared Redis; A is resumed and mirrors them. A's peak memory (VmHWM) grows by
# the whole backlog (~150 MB), not by at most the 64 MiB the code means to allow.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest;
use RedisServer;
use Attack qw(sanitized);

RedisServer->skip_all_unless_available;
plan skip_all => 'memory figures mean nothing under sanitizers' if sanitized();

my $N = 300;
my $SIZE = 500_000;

my $redis = RedisServer->new;
my $url = $redis->url;
my $conf = <<"CONF";
    channel_zone zone=events:64m history=1000 ttl=1h;
    channel_redis zone=events url=$url prefix=rr:;
    client_max_body_size 1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\\w.:-]+)\$ { sse_channel \$ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\\w.:-]+)\$ { publish_channel \$ch; }
        location = /stats                  { channel_stats; }
    }
CONF
my $A = ChannelsTest->new(workers => 1, conf => $conf);
my $B = ChannelsTest->new(workers => 1, conf => $conf);
ok($redis->wait_linked($A, workers => 1) && $redis->wait_linked($B, workers => 1), 'both hosts linked to redis');

sub hwm_kb {
    my $pid = shift;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (<$fh>) { return $1 if /^VmHWM:\s+(\d+)/ }
    return 0;
}

my ($a_worker) = $A->worker_pids;
$B->publish('big', 'warm');
ok($A->wait_for(sub { ($A->http(GET => '/pub/big', port => 1)->{json}{messages} // 0) == 1 }, timeout => 10),
   'A mirrors what B publishes');
my $before = hwm_kb($a_worker);

kill 'STOP', $a_worker;
my $published = 0;
eval {
    my $c = $B->client(port => 1);
    for my $i (1 .. $N) {
        my $r = $c->request(POST => '/pub/big', body => sprintf('%06d', $i) . ('b' x ($SIZE - 6)));
        last unless $r->{status} == 201;
        $published++;
    }
    $c->close;
};
kill 'CONT', $a_worker;
is($published, $N, "B published $N messages of $SIZE bytes while A was stopped");
ok($A->wait_for(sub { ($A->http(GET => '/pub/big', port => 1)->{json}{last_event_id} // '') eq
                      ($B->http(GET => '/pub/big', port => 1)->{json}{last_event_id} // 'x') }, timeout => 60),
   'A caught up');
my $after = hwm_kb($a_worker);
note(sprintf("A's worker peak memory (VmHWM): %d MiB before, %d MiB after mirroring %d MB it had missed",
             $before / 1024, $after / 1024, $N * $SIZE / 1e6));
cmp_ok(($after - $before) / 1024, '<', 96, "A's peak memory grew by less than 64 MiB (the intended reply bound) + 32 MiB");

done_testing;
