#!/usr/bin/perl
# channel_redis (README "channel_redis"): two nginx "hosts" share one Redis. What one host publishes
# reaches the other's SSE and long-poll subscribers in order, exactly once; GET and DELETE act on
# the shared state; ids form one sequence across hosts; a multi-channel cursor resumes on the other
# host.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp id_parse json_decode);
use RedisServer;
use MIME::Base64 ();
use JSON::PP ();

RedisServer->skip_all_unless_available;

my $redis = RedisServer->new;
my $A = $redis->host(prefix => 'rb:', http => 'longpoll_timeout 2s;');
my $B = $redis->host(prefix => 'rb:', http => 'longpoll_timeout 2s;');

sub is_id { my @p = id_parse($_[0] // ''); return @p == 2 }

sub info { my ($t, $ch) = @_; $t->http(GET => "/pub/$ch", port => 1) }

# ---- stats show the Redis link ----
{
    my $z = $A->zone_stats('/stats', 'events', port => 1);
    ok($z && ref $z->{redis} eq 'HASH', 'stats: the zone has a "redis" object') or diag explain $z;
    is($z->{redis}{url}, $redis->url, 'stats: redis url');
    ok(JSON::PP::is_bool($z->{redis}{connected}) && $z->{redis}{connected}, 'stats: connected is true');
    like($z->{redis}{latency_us}, qr/^\d+$/, 'stats: latency_us is a number');
    is($z->{redis}{reconnects}, 0, 'stats: no reconnects yet');
}

# ---- publish on A reaches SSE and long-poll subscribers on B, in order, exactly once ----
my @news;   # [id, data] in publish order
{
    my $s = $B->sse_open('/events/news');
    is($s->status, 200, 'SSE subscriber on B');
    my $lp = $B->poll_start('/poll/news');
    ok($B->wait_subscribers('news', 2), 'B counts its SSE and long-poll subscribers');

    my $c = $A->client(port => 1);
    my @answers;
    for my $i (1 .. 5) {
        my $r = $c->request(POST => '/pub/news', body => "news $i");
        push @answers, $r;
        push @news, [ $r->{json}{id}, "news $i" ] if $r->{status} == 201;
    }
    $c->close;
    is_deeply([ map { $_->{status} } @answers ], [ (201) x 5 ], 'five publishes on A: 201 each');
    ok((grep { is_id($_->{json}{id}) } @answers) == 5, 'each 201 JSON carries an id of the ms-counter form');
    is_deeply([ map { $_->{json}{channel} } @answers ], [ ('news') x 5 ], '201 JSON names the channel');
    is_deeply([ map { $_->{json}{messages} } @answers ], [ 1 .. 5 ], '201 JSON: messages retained 1..5');
    is_deeply([ map { $_->{json}{subscribers} } @answers ], [ (0) x 5 ],
              "201 JSON: subscribers are the publishing host's own (A has none)");
    ok((grep { id_cmp($news[$_ - 1][0], $news[$_][0]) < 0 } 1 .. $#news) == $#news, 'ids strictly increase');

    my $end = $A->publish_request('news', 'news end');
    is($end->{status}, 201, 'marker published');
    push @news, [ $end->{json}{id}, 'news end' ];

    my @ev = $s->events_until('news end');
    is_deeply([ map { [ $_->{id}, $_->{data} ] } @ev ], \@news,
              "B's SSE subscriber got every message once, in order, with A's ids");

    # Long-poll: the waiting request answers with the first message(s); follow the cursor.
    my $r = $lp->result(timeout => 10);
    is($r->{status}, 200, "B's waiting long-poll answered 200") or diag explain $r;
    my @got;
    for (1 .. 10) {
        last unless $r->{status} == 200 && $r->{json};
        push @got, map { [ $_->{id}, $_->{data} ] } @{ $r->{json}{messages} };
        is($r->{headers}{'last-event-id'}, $got[-1][0], 'long-poll Last-Event-ID is the last message id');
        last if @got >= @news;
        $r = $B->poll('/poll/news', cursor => $r->{headers}{'last-event-id'}, timeout => 10);
    }
    is_deeply(\@got, \@news, "B's long-poll subscriber got every message once, in order");
    my $after = $B->poll('/poll/news', cursor => $news[-1][0], timeout => 10);
    is_deeply([ $after->{status}, $after->{headers}{'last-event-id'} ], [ 204, $news[-1][0] ],
              'a poll after the last message times out: 204 with the unchanged cursor') or diag explain $after;

    # GET on either host reflects the shared channel (B and A mirror it).
    my $ib = info($B, 'news');
    is($ib->{status}, 200, 'GET on B: 200');
    is_deeply([ @{ $ib->{json} }{qw(channel messages last_event_id oldest_event_id)} ],
              [ 'news', scalar(@news), $news[-1][0], $news[0][0] ], 'GET on B: count and ids of what A published');
    # (the long-polls before it leave as they are answered; under load a count may lag a moment)
    my $subs = $ib->{json}{subscribers};
    $B->wait_for(sub { ($subs = info($B, 'news')->{json}{subscribers} // -1) == 1 }, timeout => 5) if $subs != 1;
    is($subs, 1, "GET on B: B's own subscriber (the SSE stream)");
    ok($A->wait_for(sub { (info($A, 'news')->{json}{last_event_id} // '') eq $news[-1][0] }),
       'GET on A: its mirror reached the newest id');
    is(info($A, 'news')->{json}{subscribers}, 0, 'GET on A: no subscribers of its own');
    $s->close;
}

# ---- event type, content type and multi-line data survive the trip ----
{
    my $s = $B->sse_open('/events/typed');
    is($s->status, 200, 'SSE on B for the typed channel');
    my $r = $A->publish_request('typed', "line 1\nline 2\r\nline 3",
                    headers => { 'Event-Type' => 'update', 'Content-Type' => 'application/json' });
    is($r->{status}, 201, 'typed publish on A');
    my $e = $s->next_event(timeout => 5);
    is_deeply($e && [ @$e{qw(id event data)} ], [ $r->{json}{id}, 'update', "line 1\nline 2\nline 3" ],
              'SSE on B: id, event type and every data line');
    my $p = $B->poll('/poll/typed', cursor => '0-0', timeout => 5);
    my ($m) = @{ $p->{json}{messages} || [] };
    is_deeply($m && [ @$m{qw(id channel event data content_type)} ],
              [ $r->{json}{id}, 'typed', 'update', "line 1\nline 2\r\nline 3", 'application/json' ],
              'long-poll on B: event, exact data and content type');
    my $raw = $B->publish_request('typed', "\xff\x00bin");
    is($raw->{status}, 201, 'binary publish on B');
    my $p2 = $A->poll('/poll/typed', cursor => $r->{json}{id}, timeout => 5);
    my ($m2) = @{ $p2->{json}{messages} || [] };
    is($m2 && $m2->{encoding}, 'base64', 'binary data mirrored to A: base64 in long-poll JSON');
    is($m2 && MIME::Base64::decode_base64($m2->{data}), "\xff\x00bin", 'binary data intact on A');
    $s->close;
}

# ---- one id sequence across hosts ----
{
    my $sa = $A->sse_open('/events/seq');
    my $sb = $B->sse_open('/events/seq');
    ok($A->wait_subscribers('seq', 1) && $B->wait_subscribers('seq', 1), 'SSE on A and on B for seq');
    my @ids;
    my $ok = 1;
    for my $i (1 .. 20) {
        my $r = ($i % 2 ? $A : $B)->publish_request('seq', "seq $i");
        $ok = 0 unless $r->{status} == 201;
        push @ids, $r->{json}{id};
    }
    ok($ok, '20 publishes alternating A and B: 201');
    my @bad = grep { id_cmp($ids[$_ - 1], $ids[$_]) >= 0 } 1 .. $#ids;
    is(scalar(@bad), 0, 'ids strictly increase across alternating hosts') or diag explain \@ids;

    # Concurrent publishes on both hosts: distinct ids, and both hosts deliver them in id order.
    my @pending = map { ($_ % 2 ? $A : $B)->request_start(POST => '/pub/seq', body => "par $_", port => 1) } 1 .. 20;
    my @par = map { $_->response(timeout => 10) } @pending;
    is_deeply([ map { $_->{status} } @par ], [ (201) x 20 ], '20 concurrent publishes on A and B: 201');
    my @pids = map { $_->{json}{id} } @par;
    my %seen;
    is(scalar(grep { !$seen{$_}++ } @pids), 20, 'concurrent publishes got 20 distinct ids');
    my @all = sort { id_cmp($a, $b) } @ids, @pids;
    my $last = $A->publish_request('seq', 'seq end');
    push @all, $last->{json}{id};
    for my $pair ([ A => $sa ], [ B => $sb ]) {
        my @ev = $pair->[1]->events_until('seq end');
        is_deeply([ map { $_->{id} } @ev ], \@all, "SSE on $pair->[0]: all 41 once, in id order");
    }
    $sa->close;
    $sb->close;
}

# ---- a multi-channel cursor resumes on the other host ----
{
    my $s = $B->sse_open('/multi?ch=ma,mb');
    is($s->status, 200, 'multi-channel SSE on B');
    ok($B->wait_subscribers('ma', 1) && $B->wait_subscribers('mb', 1), 'B counts it on both channels');
    my @sent;
    my @plan = ([ $A, 'ma' ], [ $B, 'mb' ], [ $A, 'mb' ], [ $B, 'ma' ], [ $A, 'ma' ], [ $B, 'mb' ]);
    for my $i (0 .. $#plan) {
        my ($t, $ch) = @{ $plan[$i] };
        my $r = $t->publish_request($ch, "multi $i");
        push @sent, [ $r->{json}{id}, $ch, "multi $i" ];
    }
    my @first = map { $s->next_event(timeout => 5) } 1 .. 3;
    is_deeply([ map { $_ && [ @$_{qw(id event data)} ] } @first ], [ @sent[0 .. 2] ],
              'B: first three events, event: <channel> on a multi-channel stream');
    $s->close;
    my $cursor = $first[2]{id};
    for my $i (6, 7) {
        my $ch = $i == 6 ? 'mb' : 'ma';
        my $r = $B->publish_request($ch, "multi $i");
        push @sent, [ $r->{json}{id}, $ch, "multi $i" ];
    }
    my $s2 = $A->sse_open('/multi?ch=ma,mb', headers => { 'Last-Event-ID' => $cursor });
    is($s2->status, 200, 'resumed on A with the cursor from B');
    my @rest = $s2->events_until('multi 7');
    is_deeply([ map { [ @$_{qw(id event data)} ] } @rest ], [ @sent[3 .. $#sent] ],
              'A replays exactly what followed the cursor on both channels: no gap, no duplicate');
    my $live = $B->publish_request('ma', 'multi live');
    my $e = $s2->next_event(timeout => 5);
    is_deeply($e && [ @$e{qw(id event data)} ], [ $live->{json}{id}, 'ma', 'multi live' ],
              'then continues live with what B publishes');
    $s2->close;

    my $p = $A->poll('/pollmulti?ch=ma,mb', cursor => $cursor, timeout => 5);
    is($p->{status}, 200, 'long-poll on A with the multi-channel cursor');
    is_deeply([ map { [ @$_{qw(id channel data)} ] } @{ $p->{json}{messages} || [] } ],
              [ @sent[3 .. $#sent], [ $live->{json}{id}, 'ma', 'multi live' ] ],
              'long-poll on A: every later message of both channels, in id order');
}

# ---- DELETE on A reaches B's subscribers ----
{
    my $s = $B->sse_open('/events/news');
    my $sm = $B->sse_open('/multi?ch=news,other');
    my $lp = $B->poll_start('/poll/news', cursor => $news[-1][0]);
    ok($B->wait_subscribers('news', 3), 'B: SSE, multi-channel SSE and a waiting long-poll on news');
    my $before = info($A, 'news');
    my $d = $A->http(DELETE => '/pub/news', port => 1);
    is($d->{status}, 200, 'DELETE on A: 200');
    is_deeply([ @{ $d->{json} || {} }{qw(channel messages last_event_id)} ],
              [ 'news', $before->{json}{messages}, $news[-1][0] ], 'DELETE answers the channel as it was');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{event}, 'channel-deleted', "B's SSE subscriber: event channel-deleted");
    is_deeply($e && json_decode($e->{data}), { channel => 'news' }, 'channel-deleted data names the channel');
    ok($s->wait_eof(timeout => 5), "B's single-channel stream then ends");
    my $r = $lp->result(timeout => 5);
    is($r->{status}, 410, "B's waiting long-poll: 410") or diag explain $r;
    my $em = $sm->next_event(timeout => 5);
    is($em && $em->{event}, 'channel-deleted', 'multi-channel stream on B: channel-deleted');
    my $o = $A->publish_request('other', 'still here');
    my $eo = $sm->next_event(timeout => 5);
    is_deeply($eo && [ @$eo{qw(event data)} ], [ 'other', 'still here' ], '... and continues with its other channel');
    ok(!$sm->eof, 'multi-channel stream still open');
    $sm->close;

    ok($B->wait_for(sub { info($B, 'news')->{status} == 404 }), 'GET on B: 404 after the delete');
    ok($A->wait_for(sub { info($A, 'news')->{status} == 404 }), 'GET on A: 404 after the delete');
    is($redis->command('EXISTS', 'rb:news'), 0, "the channel's stream is gone from Redis");
    is($B->http(DELETE => '/pub/news', port => 1)->{status}, 404, 'DELETE again (on B): 404');
    my $again = $B->publish_request('news', 'reborn');
    is_deeply([ $again->{status}, $again->{json}{messages} ], [ 201, 1 ], 'publishing again starts afresh');
}

# ---- the URL's database and the prefix keep deployments apart ----
{
    my $D = $redis->host(prefix => 'rb:', db => 3, workers => 1);
    my $E = $redis->host(prefix => 'other:', workers => 1);
    my $sd = $D->sse_open('/events/iso');
    my $sb = $B->sse_open('/events/iso');
    ok($D->wait_subscribers('iso', 1) && $B->wait_subscribers('iso', 1), 'SSE on D (db 3) and on B (db 0) for iso');
    my $d = $D->publish_request('iso', 'from D');
    my $e = $E->publish_request('iso', 'from E');
    is_deeply([ $d->{status}, $e->{status} ], [ 201, 201 ], 'publishes on D (db 3) and E (prefix other:)');
    is($redis->command_in_db(3, 'XLEN', 'rb:iso'), 1, 'D wrote rb:iso in database 3');
    is($redis->command('XLEN', 'other:iso'), 1, 'E wrote other:iso in database 0');
    is($redis->command('EXISTS', 'rb:iso'), 0, 'nothing under rb:iso in database 0');
    my $ev = $sd->next_event(timeout => 5);
    is($ev && $ev->{data}, 'from D', "D's subscriber gets D's message");
    my $m = $A->publish_request('iso', 'from A');
    my $eb = $sb->next_event(timeout => 5);
    is($eb && $eb->{data}, 'from A', "B's subscriber gets A's message and neither D's nor E's");
    $D->publish_request('iso', 'D again');
    my $ed = $sd->next_event(timeout => 5);
    is($ed && $ed->{data}, 'D again', "D's subscriber: next is D's own, not A's message");
    $_->close for $sd, $sb;
    $D->finish;
    $E->finish;
}

# ---- what Redis holds ----
{
    my $len = $redis->command('XLEN', 'rb:seq');
    is($len, 41, "Redis: the seq channel's stream holds its 41 messages");
    my $pttl = $redis->command('PTTL', 'rb:seq');
    ok($pttl > 0 && $pttl <= 3600 * 1000, "Redis: the channel's stream expires within the zone's ttl (1h)")
        or diag("PTTL rb:seq = $pttl");
    my $last = $redis->command('GET', 'rb:#last');
    ok(is_id($last), 'Redis: rb:#last holds the newest id');
    ok($A->wait_for(sub { ($A->zone_stats('/stats', 'events', port => 1) || {})->{last_event_id} eq $last }),
       "A's zone reached Redis' newest id");
    ok($B->wait_for(sub { ($B->zone_stats('/stats', 'events', port => 1) || {})->{last_event_id} eq $last }),
       "B's zone reached Redis' newest id");
    ok($A->wait_for(sub { ($A->zone_stats('/stats', 'events', port => 1) || {})->{redis}{latency_us} > 0 }),
       'stats: latency_us of a publish round trip is reported');
}

done_testing;
