#!/usr/bin/perl
# An entry of the shared Redis log larger than a host mirrors (32 MiB of fields; README
# "channel_redis": what a host reads from Redis is untrusted): the host drops the reply at
# once (it does not wait for it, nor re-read it in a loop), reconnects reading bounded
# pages, which hand the entry over as a loss: its channel's subscribers get channel-gap, and
# publishes go on. A publish larger than 32 MiB to a Redis zone is refused (507, too large
# for the zone): the other hosts would not mirror it.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_parse);
use RedisServer;

RedisServer->skip_all_unless_available;

my $PREFIX = 'big:';
my $redis = RedisServer->new;
my $A = $redis->host(prefix => $PREFIX, workers => 1, http => 'client_max_body_size 40m;');
$A->allow_log(qr/redis reply larger than/, qr/lost its redis connection/, qr/larger than 32 MiB lost/);

is($A->http(POST => '/pub/big', body => 'before', port => 1)->{status}, 201, 'a message to "big"');
my $s = $A->sse_open('/events/big');
my $first = $s->next_event(timeout => 5);
ok(!$first || $first->{data} ne 'before', 'a subscriber of "big" (from now)');
my $cursor = $A->publish('big', 'second');
is($s->next_event(timeout => 5)->{data}, 'second', 'it gets the next message');

# 70 MB appended to the shared log as another writer would, with the next id.
my ($ms) = id_parse($redis->command('GET', "${PREFIX}#last"));
$ms++;
my $x = $redis->command('XADD', "${PREFIX}#log", "$ms-0", c => 'big', e => '', t => '', d => 'y' x (70 << 20));
ok(defined $x, 'a 70 MB entry in the shared log') or diag $redis->error;
$redis->command('SET', "${PREFIX}#last", "$ms-0");

my $ev = $s->next_event(timeout => 15);
is($ev && $ev->{event}, 'channel-gap', 'the subscriber is told the entry is lost');
my $after = $A->http(POST => '/pub/big', body => 'after', port => 1, timeout => 15);
is($after->{status}, 201, 'a publish after it is acknowledged (the tail went past the entry)');
is($s->next_event(timeout => 10)->{data}, 'after', 'and delivered');
my $lines = () = $A->error_log =~ /redis reply larger than/g;
cmp_ok($lines, '<=', 3, "the oversized reply was dropped once, not re-read in a loop ($lines lines)");

my $huge = $A->http(POST => '/pub/other', body => 'z' x ((32 << 20) + 1), port => 1, timeout => 30);
is($huge->{status}, 507, 'a publish over 32 MiB to a Redis zone: 507');
done_testing;
