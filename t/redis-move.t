#!/usr/bin/perl
# channel_redis (README "channel_redis"): a client resumes on any host with its cursor. It reads
# from A, leaves, and resumes on B exactly (no gap, no duplicate), by SSE and by long-poll; a host
# started after the messages were published replays them for a cursor; a host that has not caught up
# with the shared log yet when the client arrives must still not repeat what the client already has.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp id_parse);
use RedisServer;

RedisServer->skip_all_unless_available;

my $redis = RedisServer->new;
my $A = $redis->host(prefix => 'rm:', http => 'longpoll_timeout 2s;');
my $B = $redis->host(prefix => 'rm:', http => 'longpoll_timeout 2s;');

# Publishes (dying unless 201); returns [id, data] as pairs() gives them back.
sub sent { my ($t, $ch, $body) = @_; [ $t->publish($ch, $body), $body ] }

sub pairs { [ map { [ $_->{id}, $_->{data} ] } @_ ] }

# ---- SSE: read part on A, move to B with Last-Event-ID ----
{
    my $s = $A->sse_open('/events/mv');
    ok($A->wait_subscribers('mv', 1), 'SSE subscriber on A');
    my @sent = map { sent($_ % 2 ? $A : $B, 'mv', "mv $_") } 1 .. 8;    # alternating A and B
    my @first = map { $s->next_event(timeout => 5) } 1 .. 4;
    is_deeply(pairs(@first), [ @sent[0 .. 3] ], 'A delivered the first four');
    $s->close;
    my $cursor = $first[-1]{id};
    push @sent, sent($B, 'mv', 'mv 9'), sent($A, 'mv', 'mv 10');   # published while away

    my $s2 = $B->sse_open('/events/mv', headers => { 'Last-Event-ID' => $cursor });
    is($s2->status, 200, 'reconnected to B with Last-Event-ID');
    my @rest = $s2->events_until('mv 10');
    is_deeply(pairs(@rest), [ @sent[4 .. $#sent] ], 'B replays exactly what followed the cursor');
    my $live = sent($A, 'mv', 'mv live');
    my $e = $s2->next_event(timeout => 5);
    is_deeply(pairs($e // {}), [ $live ], 'and then delivers live what A publishes, once');
    $s2->close;

    # The same with the cursor in the query argument, back on A from B's last id.
    my $s3 = $A->sse_open("/events/mv?last_event_id=$rest[1]{id}");
    my @again = $s3->events_until('mv live');
    is_deeply(pairs(@again), [ @sent[6 .. $#sent], $live ], 'last_event_id argument: resumes exactly on A');
    $s3->close;
}

# ---- long-poll: follow the cursor from A to B ----
{
    my @sent = map { sent($A, 'lpmv', "lp $_") } 1 .. 5;
    my $first = $A->poll('/poll/lpmv', cursor => '0-0', timeout => 5);
    is($first->{status}, 200, 'long-poll on A');
    is_deeply([ map { [ $_->{id}, $_->{data} ] } @{ $first->{json}{messages} || [] } ], \@sent,
              'A answered every message after the cursor');
    my $cursor = $first->{headers}{'last-event-id'};
    is($cursor, $sent[-1][0], 'Last-Event-ID: the last message');
    my $wait = $B->poll_start('/poll/lpmv', cursor => $cursor);
    ok($B->wait_subscribers('lpmv', 1), 'next poll waits on B');
    my $m = sent($A, 'lpmv', 'lp 6');
    my $r = $wait->result(timeout => 5);
    is_deeply([ $r->{status}, map { [ $_->{id}, $_->{data} ] } @{ $r->{json}{messages} || [] } ], [ 200, $m ],
              'B answers with only the message published after the cursor');
    my $idle = $B->poll('/poll/lpmv', cursor => $m->[0], timeout => 5);
    is_deeply([ $idle->{status}, $idle->{headers}{'last-event-id'} ], [ 204, $m->[0] ],
              'then nothing more on B: 204 with the same cursor');
}

# ---- a host started after the messages were published replays them ----
my @hist = map { sent($_ % 2 ? $A : $B, 'hist', "hist $_") } 1 .. 12;    # before host C exists
{
    my $C = $redis->host(prefix => 'rm:', http => 'longpoll_timeout 2s; channel_first_message oldest;');
    my $info = $C->http(GET => '/pub/hist', port => 1);
    ok($C->wait_for(sub { ($C->http(GET => '/pub/hist', port => 1)->{json}{messages} // 0) == 12 }),
       'C: GET shows the 12 messages published before it started');
    my $s = $C->sse_open('/events/hist', headers => { 'Last-Event-ID' => $hist[4][0] });
    my @ev = $s->events_until('hist 12');
    is_deeply(pairs(@ev), [ @hist[5 .. 11] ], 'C: SSE with a cursor replays exactly the later history');
    my $live = sent($B, 'hist', 'hist live');
    my $e = $s->next_event(timeout => 5);
    is_deeply(pairs($e // {}), [ $live ], 'C: then live messages from B');
    $s->close;
    my $all = $C->sse_open('/events/hist');
    my @everything = $all->events_until('hist live');
    is_deeply(pairs(@everything), [ @hist, $live ], 'C: channel_first_message oldest gives the whole history');
    $all->close;
    my $p = $C->poll('/poll/hist', cursor => $hist[9][0], timeout => 5);
    is_deeply([ map { [ $_->{id}, $_->{data} ] } @{ $p->{json}{messages} || [] } ], [ @hist[10, 11], $live ],
              'C: long-poll with a cursor answers the later history');
    $C->finish;
}

# ---- a host that has not caught up yet must not repeat what the client already has ----
# Redis is stopped (SIGSTOP) while host D starts, so D's zone is still empty when a client
# arrives with a cursor taken from A; Redis goes on (SIGCONT) once D holds the client. When D
# catches up, the client must get only what follows its cursor.
{
    my @lag = map { sent($A, 'lag', "lag $_") } 1 .. 6;
    my $cursor = $lag[3][0];
    ok(kill('STOP', $redis->pid), 'Redis stopped');
    my $D = $redis->host(prefix => 'rm:', http => 'longpoll_timeout 10s;', wait => 0);
    my $s = $D->sse_open('/events/lag', headers => { 'Last-Event-ID' => $cursor });
    my $lp = $D->poll_start('/poll/lag', cursor => $cursor);
    my $info;
    ok($D->wait_for(sub { $info = $D->http(GET => '/pub/lag', port => 1); ($info->{json}{subscribers} // 0) == 2 }),
       'D holds the SSE and the long-poll client');
    is($info->{json}{messages}, 0, 'D has not mirrored the channel yet when the clients arrive');
    ok(kill('CONT', $redis->pid), 'Redis goes on');
    my @ev = $s->events_until('lag 6', timeout => 10);
    is_deeply(pairs(@ev), [ @lag[4, 5] ],
              'SSE on D: after catching up, only the messages after the cursor (no duplicates)');
    diag("SSE on D got: " . join(", ", map { $_->{data} // "?" } @ev)) if @ev != 2;
    my $r = $lp->result(timeout => 15);
    is_deeply([ $r->{status}, map { [ $_->{id}, $_->{data} ] } @{ $r->{json}{messages} || [] } ],
              [ 200, @lag[4, 5] ], 'long-poll on D: only the messages after the cursor');
    $s->close;
    ok($redis->wait_linked($D, workers => 2), 'D connected to Redis once it woke up');
    $D->finish;
}

done_testing;
