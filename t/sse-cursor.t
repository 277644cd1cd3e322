#!/usr/bin/perl
# SSE cursors (README "SSE", issue 3): Last-Event-ID header and ?last_event_id= replay what is
# retained after the cursor, then go on live without a gap or a duplicate; a malformed cursor is
# treated as absent; channel_first_message newest/oldest/-N; channel-gap when the cursor is older
# than what is retained (history, zone memory, ttl; per channel in a multi-channel stream, none when
# nothing after the cursor was lost); pipelined bursts longer than history leave no silent hole; and
# a race: subscribers connecting with cursors while a forked publisher publishes all the time each
# see a contiguous, duplicate-free sequence.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Handle;
use IO::Select;
use Time::HiRes ();
use POSIX ();
use ChannelsTest qw(id_parse id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:8m history=1000 ttl=1h;
    channel_zone zone=small:1m history=5 ttl=1h;
    channel_zone zone=tiny:128k history=1000 ttl=1h;
    channel_zone zone=brief:1m history=100 ttl=1s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch zone=events; }
        location ~ ^/oldest/(?<ch>[^/]+)$  { channel_first_message oldest; sse_channel $ch zone=events; }
        location ~ ^/last3/(?<ch>[^/]+)$   { channel_first_message -3; sse_channel $ch zone=events; }
        location ~ ^/newest/(?<ch>[^/]+)$  { channel_first_message newest; sse_channel $ch zone=events; }
        location ~ ^/small/(?<ch>[^/]+)$   { sse_channel $ch zone=small; }
        location = /smallm                 { sse_channel $arg_ch zone=small; }
        location ~ ^/tiny/(?<ch>[^/]+)$    { sse_channel $ch zone=tiny; }
        location ~ ^/brief/(?<ch>[^/]+)$   { sse_channel $ch zone=brief; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch zone=events; }
        location ~ ^/spub/(?<ch>[^/]+)$    { publish_channel $ch zone=small; }
        location ~ ^/tpub/(?<ch>[^/]+)$    { client_max_body_size 1m; publish_channel $ch zone=tiny; }
        location ~ ^/bpub/(?<ch>[^/]+)$    { publish_channel $ch zone=brief; }
        location = /stats                  { channel_stats; }
    }
CONF

sub wait_subscribed {
    my ($ch, $n, $loc) = @_;
    return $t->wait_for(sub { $t->subscribers($ch, location => $loc) >= $n }, timeout => 5);
}

sub datas { join ',', map { $_->{data} // '(none)' } @_ }
sub ids   { join ',', map { $_->{id} // '(none)' } @_ }

# ---- Last-Event-ID header and ?last_event_id=: replay, then live
my @ids;
my $n = 0;
for my $how ('header', 'arg', 'arg, percent-encoded') {
    my $cur = 'cur' . ++$n;
    @ids = map { $t->publish($cur, "m$_") } 1 .. 6;
    my $cursor = $ids[2];    # after m3
    my $s;
    if ($how eq 'header') {
        $s = $t->sse_open("/events/$cur", headers => { 'Last-Event-ID' => $cursor });
    } elsif ($how eq 'arg') {
        $s = $t->sse_open("/events/$cur?last_event_id=$cursor");
    } else {
        (my $enc = $cursor) =~ s/([0-9-])/sprintf('%%%02X', ord $1)/ge;
        $s = $t->sse_open("/events/$cur?x=1&last_event_id=$enc");
    }
    is($s->status, 200, "cursor in $how: 200");
    my @replay = $s->events_until('m6');
    is(datas(@replay), 'm4,m5,m6', "cursor in $how: replays what came after it");
    is(ids(@replay), join(',', @ids[3 .. 5]), "cursor in $how: with their ids");
    ok(wait_subscribed($cur, 1), "cursor in $how: subscribed");
    my $id7 = $t->publish($cur, 'live7');
    my $id8 = $t->publish($cur, 'live8');
    my @live = $s->events_until('live8');
    is(datas(@live), 'live7,live8', "cursor in $how: then live, nothing missed or repeated");
    is(ids(@live), "$id7,$id8", "cursor in $how: live ids");
    push @ids, $id7, $id8;
    $s->close;
    ok($t->wait_for(sub { $t->subscribers($cur) == 0 }, timeout => 5), "cursor in $how: closed");
}

# The newest id as cursor: nothing replayed, live only.
{
    $t->publish('cur', 'before-newest');
    push @ids, $t->publish('cur', 'newest');
    my $s = $t->sse_open('/events/cur', headers => { 'Last-Event-ID' => $ids[-1] });
    ok(wait_subscribed('cur', 1), 'cursor = newest id: subscribed');
    $t->publish('cur', 'after-newest');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{data}, 'after-newest', 'cursor = newest id: the first event is the next message');
    $s->close;
    $t->wait_for(sub { $t->subscribers('cur') == 0 }, timeout => 5);
}

# A cursor of another channel (ids are zone-wide): replays what this channel has after it.
{
    my $a1 = $t->publish('zw-a', 'a1');
    my $b1 = $t->publish('zw-b', 'b1');
    my $a2 = $t->publish('zw-a', 'a2');
    my $s = $t->sse_open('/events/zw-a', headers => { 'Last-Event-ID' => $b1 });
    my @ev = $s->events_until('a2');
    is(datas(@ev), 'a2', "a cursor from another channel: replay after it (zone-wide ids)");
    $s->close;
}

# ---- malformed cursors: treated as absent (channel_first_message: newest), never an error
{
    my @bad = ('garbage', '123', '-1', '1-2-3', '1-', '-', ' ', '1732290000123-0x', '99999999999999999999999-0', "\x{e9}");
    my $i = 0;
    for my $cursor (@bad, 'arg:abc', 'arg:') {
        $i++;
        my $ch = "bad$i";
        $t->publish($ch, 'old');
        my $s;
        if ($cursor =~ /^arg:(.*)/) {
            $s = $t->sse_open("/events/$ch?last_event_id=$1");
        } else {
            $s = $t->sse_open("/events/$ch", headers => { 'Last-Event-ID' => $cursor });
        }
        my $label = "malformed cursor '$cursor'";
        is($s->status, 200, "$label: 200");
        ok(wait_subscribed($ch, 1), "$label: subscribed");
        $t->publish($ch, 'new');
        my $e = $s->next_event(timeout => 5);
        is($e && $e->{data}, 'new', "$label: treated as absent (newest: no replay of 'old')");
        $s->close;
    }
}

# ---- channel_first_message
{
    my @fm = map { $t->publish('fm', "f$_") } 1 .. 5;
    my %cases = (
        events => [ 'default (newest)', '' ],
        newest => [ 'newest',           '' ],
        oldest => [ 'oldest',           'f1,f2,f3,f4,f5,' ],
        last3  => [ '-3',               'f3,f4,f5,' ],
    );
    my %s = map { $_ => $t->sse_open("/$_/fm") } sort keys %cases;
    ok(wait_subscribed('fm', scalar keys %cases), 'first-message streams subscribed');
    $t->publish('fm', 'live');
    for my $loc (sort keys %cases) {
        my ($label, $want) = @{ $cases{$loc} };
        my @ev = $s{$loc}->events_until('live');
        is(datas(@ev), "${want}live", "channel_first_message $label");
    }
    $_->close for values %s;
    # A cursor beats channel_first_message.
    my $s = $t->sse_open('/oldest/fm', headers => { 'Last-Event-ID' => $fm[3] });
    my @ev = $s->events_until('live');
    is(datas(@ev), 'f5,live', 'oldest with a cursor: the cursor decides');
    $s->close;
    # -N with fewer retained than N.
    $t->publish('fm2', 'only');
    $s = $t->sse_open('/last3/fm2');
    @ev = $s->events_until('only');
    is(datas(@ev), 'only', '-3 with one message retained: that one');
    $s->close;
}

# ---- channel-gap: history=5, 20 published, resume from an early id
{
    my @g = map { $t->publish('gap', "g$_", location => 'spub') } 1 .. 20;
    my $s = $t->sse_open('/small/gap', headers => { 'Last-Event-ID' => $g[1] });
    is($s->status, 200, 'gap: 200');
    my $first = $s->next_event(timeout => 5);
    is($first && $first->{event}, 'channel-gap', 'gap: the first event is channel-gap');
    ok($first && !defined $first->{id}, 'gap: it carries no id (the cursor stays the client\'s)');
    my $j = $first && json_decode($first->{data} // '');
    is_deeply($j, { channel => 'gap', last_event_id => $g[1], oldest_event_id => $g[15] },
              'gap data: channel, the client\'s cursor, the oldest retained id') or diag explain $first;
    my @rest = $s->events_until('g20');
    is(datas(@rest), join(',', map { "g$_" } 16 .. 20), 'gap: then the retained five, in order');
    ok(wait_subscribed('gap', 1, 'spub'), 'gap: subscribed');
    $t->publish('gap', 'g21', location => 'spub');
    my @live = $s->events_until('g21');
    is(datas(@live), 'g21', 'gap: then live');
    $s->close;

    # g21 evicted g16: retained now g17..g21.
    my $s2 = $t->sse_open('/small/gap', headers => { 'Last-Event-ID' => $g[17] });
    my @ev = $s2->events_until('g21');
    is(datas(@ev), 'g19,g20,g21', 'cursor inside the retained range: replay without channel-gap');
    $s2->close;
    my $s3 = $t->sse_open('/small/gap', headers => { 'Last-Event-ID' => $g[15] });
    @ev = $s3->events_until('g21');
    is(datas(@ev), 'g17,g18,g19,g20,g21',
       'cursor = the newest evicted id (g16): nothing after it was evicted, so no channel-gap');
    $s3->close;
    my $s4 = $t->sse_open('/small/gap', headers => { 'Last-Event-ID' => $g[14] });
    my $e = $s4->next_event(timeout => 5);
    is_deeply($e && $e->{event} eq 'channel-gap' && json_decode($e->{data}),
              { channel => 'gap', last_event_id => $g[14], oldest_event_id => $g[16] },
              'cursor g15 (g16 evicted after it): channel-gap with oldest g17');
    $s4->close;
}

# ---- channel-gap in a multi-channel stream: one per channel that lost messages
{
    my @a = map { $t->publish('mga', "a$_", location => 'spub') } 1 .. 8;     # history 5: a1..a3 evicted
    my @b = map { $t->publish('mgb', "b$_", location => 'spub') } 1 .. 3;     # nothing evicted
    my $s = $t->sse_open('/smallm?ch=mga,mgb', headers => { 'Last-Event-ID' => $a[0] });
    my @ev = $s->events_until('b3');
    my @gaps = grep { ($_->{event} // '') eq 'channel-gap' } @ev;
    is(scalar @gaps, 1, 'multi-channel: one channel-gap (only mga lost messages)');
    is_deeply(json_decode($gaps[0] ? $gaps[0]{data} : ''), { channel => 'mga', last_event_id => $a[0], oldest_event_id => $a[3] },
              'multi-channel gap names mga, the cursor, mga\'s oldest');
    my @msgs = grep { ($_->{event} // '') ne 'channel-gap' } @ev;
    is(join(',', map { $_->{data} } @msgs), 'a4,a5,a6,a7,a8,b1,b2,b3', 'then both channels\' retained messages in id order');
    ok(($ev[0]{event} // '') eq 'channel-gap', 'the gap comes before the replay');
    $s->close;
}

# ---- channel-gap after eviction for lack of zone memory
{
    my $big = 'z' x 20000;
    my @z = map { $t->publish('mem', "$_:$big", location => 'tpub') } 1 .. 20;   # 400 KB into a 128 KB zone
    my $info = $t->http(GET => '/tpub/mem', port => 1)->{json};
    ok($info && $info->{messages} < 20, "the small zone evicted messages ($info->{messages} of 20 left)");
    my $s = $t->sse_open('/tiny/mem', headers => { 'Last-Event-ID' => $z[0] });
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{event}, 'channel-gap', 'evicted for memory: channel-gap');
    is_deeply($e && json_decode($e->{data}), { channel => 'mem', last_event_id => $z[0], oldest_event_id => $info->{oldest_event_id} },
              'its data: the cursor and the oldest retained');
    my @ev = $s->events_until("20:$big");
    is(scalar @ev, $info->{messages}, 'then the retained messages');
    $s->close;
}

# ---- channel-gap after expiry (ttl=1s): nothing retained, oldest_event_id null
{
    my @x = map { $t->publish('exp', "x$_", location => 'bpub') } 1 .. 3;
    # With its messages expired and nobody subscribed, the channel may go altogether (README
    # "channel_zone").
    ok($t->wait_for(sub { my $r = $t->http(GET => '/bpub/exp', port => 1);
                          $r->{status} == 404 || ($r->{status} == 200 && $r->{json}{messages} == 0) },
                    timeout => 5), 'messages expired after ttl=1s');
    my $s = $t->sse_open('/brief/exp', headers => { 'Last-Event-ID' => $x[0] });
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{event}, 'channel-gap', 'expired: channel-gap');
    is_deeply($e && json_decode($e->{data}), { channel => 'exp', last_event_id => $x[0], oldest_event_id => undef },
              'its data: oldest_event_id null (nothing retained)');
    my $id = $t->publish('exp', 'fresh', location => 'bpub');
    my @ev = $s->events_until('fresh');
    is(join(',', map { $_->{data} } @ev), 'fresh', 'then live');
    $s->close;
}

# ---- a burst longer than history, pipelined on one connection, while subscribers sit on both
# workers: no silent hole (every message, or a channel-gap right before a jump)
{
    my @bad;
    for my $round (1 .. 4) {
        my $ch = "burst$round";
        my @s = map { $t->sse_open("/small/$ch") } 1 .. 6;
        $t->wait_for(sub { $t->subscribers($ch, location => 'spub') == 6 }, timeout => 5) or diag "$ch: not all subscribed";
        my $c = $t->client(port => 1);
        $c->send_raw(join '', map { "POST /spub/$ch HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
                                    . length("m$_") . "\r\n\r\nm$_" } 1 .. 20);
        my @st = map { $c->read_response(method => 'POST')->{status} } 1 .. 20;
        $c->close;
        push @bad, "$ch: publish statuses @st" if grep { $_ != 201 } @st;
        for my $i (0 .. $#s) {
            my @ev = $s[$i]->events_until('m20');
            my ($expect, $gap_pending, $ok) = (1, 0, 1);
            for my $e (@ev) {
                if (($e->{event} // '') eq 'channel-gap') { $gap_pending = 1; next }
                my ($n) = ($e->{data} // '') =~ /^m(\d+)$/ or do { $ok = 0; last };
                $ok = 0 if $n < $expect || ($n > $expect && !$gap_pending);
                ($expect, $gap_pending) = ($n + 1, 0);
            }
            $ok = 0 unless $expect == 21;
            push @bad, "$ch stream $i: " . join(' ', map { ($_->{event} // '') eq 'channel-gap' ? 'GAP' : $_->{data} } @ev)
                unless $ok;
            $s[$i]->close;
        }
    }
    is_deeply(\@bad, [], 'pipelined bursts of 20 into history=5: each stream has every message or an explicit channel-gap');
}

# ---- race: subscribers with cursors connect while a forked publisher keeps publishing
{
    my $N = 400;
    pipe(my $rd, my $wr) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $rd;
        $wr->autoflush(1);
        # Keep-alive connections, a new one every 50 messages, so both workers publish.
        my $c;
        for my $i (1 .. $N) {
            $c = $t->client(port => 1) if !$c || $i % 50 == 1;
            my $r = $c->request(POST => '/pub/race', body => "r$i");
            if ($r->{status} != 201) {
                print $wr "ERR $i $r->{status}\n";
                POSIX::_exit(1);
            }
            print $wr "$i $r->{json}{id}\n";
            Time::HiRes::sleep(0.002);    # pacing, so that subscribers keep arriving meanwhile
        }
        POSIX::_exit(0);
    }
    close $wr;
    my %id_of;     # seq => id
    my $latest = 0;
    my $rbuf = '';
    my $sel = IO::Select->new($rd);
    my $pub_done = 0;
    my $pump = sub {
        my $wait = shift;
        while ($sel->can_read($wait)) {
            my $n = sysread($rd, $rbuf, 65536, length $rbuf);
            if (!$n) { $pub_done = 1; $sel->remove($rd); last }
            while ($rbuf =~ s/^(\S+) (\S+)(?: (\S+))?\n//) {
                die "publisher failed at $2: $3\n" if $1 eq 'ERR';
                $id_of{$1} = $2;
                $latest = $1 if $1 > $latest;
            }
            $wait = 0;
        }
    };
    my @subs;    # [stream, first expected seq, how]
    my $k = 0;
    while (!$pub_done && @subs < 60) {
        $pump->(1);
        last if $latest >= $N - 20;
        next unless $latest > 5;
        $k++;
        my $how = $k % 3;
        if ($how == 0) {
            # cursor = the newest id known: the replay is empty or tiny, live joins at once
            push @subs, [ $t->sse_open('/events/race', headers => { 'Last-Event-ID' => $id_of{$latest} }), $latest + 1, 'newest id' ];
        } elsif ($how == 1) {
            my $back = $latest > 30 ? $latest - 30 : 1;
            push @subs, [ $t->sse_open("/events/race?last_event_id=$id_of{$back}"), $back + 1, '30 back (arg)' ];
        } else {
            push @subs, [ $t->sse_open('/events/race'), undef, 'no cursor' ];
        }
    }
    $pump->(10) while !$pub_done;
    waitpid $pid, 0;
    is($? >> 8, 0, "race: the publisher published $N messages");
    cmp_ok(scalar @subs, '>=', 20, 'race: ' . scalar(@subs) . ' subscribers connected while it published');
    my @bad;
    for my $i (0 .. $#subs) {
        my ($s, $from, $how) = @{ $subs[$i] };
        my @ev = $s->events_until("r$N", timeout => 10);
        my @seq = map { ($_->{data} // '') =~ /^r(\d+)$/ ? $1 : -1 } @ev;
        $from //= $seq[0] // 0;
        my $want = join ',', $from .. $N;
        my $got = join ',', @seq;
        push @bad, "subscriber $i ($how): from $from got " . (length $got > 200 ? substr($got, 0, 200) . '...' : $got)
            unless $got eq $want && ids(@ev) eq join(',', map { $id_of{$_} } $from .. $N);
        $s->close;
    }
    is_deeply(\@bad, [], 'race: every subscriber saw a contiguous, duplicate-free sequence up to the last message');
}

done_testing;
