#!/usr/bin/perl
# channel_redis ids (README "Publishing": ids; "channel_redis"): ids handed out through Redis never
# go backwards, even when the publishing host's clock is behind the newest id (another host's clock
# ran ahead, or the clock was set back), and even after Redis restarted empty; a message answered
# 201 is delivered. A host whose clock runs 60 s ahead is simulated by setting Redis' PREFIX#last
# (README: keys).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp id_parse);
use RedisServer;
use Time::HiRes ();

RedisServer->skip_all_unless_available;

my $redis = RedisServer->new;
my $A = $redis->host(prefix => 'ri:');
my $B = $redis->host(prefix => 'ri:');

my $s = $B->sse_open('/events/k');
ok($B->wait_for(sub { ($B->http(GET => '/pub/k', port => 1)->{json}{subscribers} // 0) == 1 }), 'SSE subscriber on B');

my $first = $A->publish_request('k', 'now');
is($first->{status}, 201, 'a publish on A');
my $ahead = int(Time::HiRes::time() * 1000) + 60_000;
is($redis->command('SET', 'ri:#last', "$ahead-0"), 'OK', 'a host with a clock 60 s ahead published last');
my $r1 = $A->publish_request('k', 'behind the last id');
is($r1->{status}, 201, 'A publishes with its clock behind the newest id');
ok(id_cmp($r1->{json}{id}, "$ahead-0") > 0, 'its id follows the newest id, not the clock');
is_deeply([ map { my $e = $s->next_event(timeout => 5); $e && $e->{data} } 1 .. 2 ], [ 'now', 'behind the last id' ],
          'B delivers both');

my ($mark_a, $mark_b) = ($A->log_mark, $B->log_mark);
$redis->kill9;
$redis->start;
ok($redis->wait_linked($A, since => $mark_a, workers => 2), 'A reconnected to the emptied Redis');
ok($redis->wait_linked($B, since => $mark_b, workers => 2), 'B reconnected to the emptied Redis');

my @after = map { ($_ % 2 ? $A : $B)->publish_request('k', "after $_") } 1 .. 4;
my @ok = grep { $_->{status} == 201 } @after;
diag('after the loss: ' . join(', ', map { "$_->{status} " . ($_->{json}{id} // '-') } @after));
is(scalar(grep { $_->{status} == 201 || $_->{status} == 503 } @after), 4, 'publishes after the loss: 201 or 503');
is(scalar(grep { id_cmp($_->{json}{id}, $r1->{json}{id}) <= 0 } @ok), 0,
   'no 201 id at or below an id handed out before the loss');
my $end = $A->publish_request('k', 'end');
if ($end->{status} == 201) {
    my @ev;
    while (my $e = $s->next_event(timeout => 5)) {
        push @ev, $e;
        last if ($e->{data} // '') eq 'end';
    }
    my %got = map { ($_->{data} // '') => 1 } @ev;
    my @lost = grep { !$got{"after $_"} } grep { $after[$_ - 1]{status} == 201 } 1 .. 4;
    is_deeply(\@lost, [], 'every publish answered 201 after the loss reaches B') or diag explain \@ev;
} else {
    fail("marker publish answered $end->{status}");
}
done_testing;
