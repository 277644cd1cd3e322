#!/usr/bin/perl
# DELETE and SSE subscribers (README "Publishing", "SSE", issue 3): a single-channel stream gets
# `event: channel-deleted` with `data: {"channel":…}` and then ends; a multi-channel stream
# gets the event and goes on with its other channels (and no longer with the deleted one);
# subscriber counts in channel info and stats go back to 0. Subscribers sit on both workers.
# A message published right before the DELETE (pipelined on one connection) still reaches every
# subscriber before channel-deleted.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_parse id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location = /m                      { sse_channel $arg_ch; }
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub info { $t->http(GET => "/pub/$_[0]", port => 1) }

sub zone { $t->zone_stats('/stats', 'events', port => 1) || {} }

sub worker_subscribers {
    my $sum = 0;
    $sum += $_->{subscribers} for @{ zone()->{workers} || [] };
    return $sum;
}

sub is_deleted { my $e = shift; ($e->{event} // '') eq 'channel-deleted' }

# Opens $n streams on $path, expecting them to land on both workers (reuseport).
sub open_streams {
    my ($path, $n) = @_;
    return map { $t->sse_open($path) } 1 .. $n;
}

# ---- single channel: channel-deleted, then the stream ends
{
    my @s = open_streams('/events/solo', 8);
    is(scalar(grep { $_->status == 200 } @s), 8, 'eight single-channel streams');
    ok($t->wait_for(sub { $t->subscribers('solo') == 8 }, timeout => 5), 'channel info: 8 subscribers');
    my @busy = grep { $_->{subscribers} > 0 } @{ zone()->{workers} || [] };
    note('workers holding streams: ' . scalar @busy);
    my $m1 = $t->publish('solo', 'last words');
    my $d = $t->http(DELETE => '/pub/solo', port => 1);
    is($d->{status}, 200, 'DELETE: 200');
    is($d->{json}{channel}, 'solo', 'DELETE answers the channel JSON');
    is($d->{json}{subscribers}, 8, 'DELETE JSON: the 8 subscribers it had');
    is($d->{json}{messages}, 1, 'DELETE JSON: the message it had');
    my $all = 1;
    for my $i (0 .. $#s) {
        my @ev = $s[$i]->events_until(\&is_deleted);
        my $ok = @ev == 2 && $ev[0]{data} eq 'last words' && $ev[0]{id} eq $m1
            && is_deleted($ev[1]) && (json_decode($ev[1]{data} // '') // {})->{channel} eq 'solo'
            && keys %{ json_decode($ev[1]{data}) } == 1;
        if ($i == 0) {
            is(scalar @ev, 2, 'stream 0: the message, then one more event');
            is($ev[1]{event}, 'channel-deleted', 'stream 0: event: channel-deleted');
            is_deeply(json_decode($ev[1]{data} // ''), { channel => 'solo' }, 'stream 0: data {"channel":"solo"}');
            ok(defined $ev[1]{id} && id_cmp($ev[1]{id}, $m1) > 0, 'stream 0: with an id after the last message')
                if defined $ev[1]{id};
        }
        ok($s[$i]->wait_eof(timeout => 5), "stream $i: ends after channel-deleted");
        ok($s[$i]->clean_end, "stream $i: ends cleanly (last chunk)");
        $all &&= $ok;
        diag("stream $i: " . join(' | ', map { $_->{raw} } @ev)) unless $ok;
    }
    ok($all, 'every stream got the message and channel-deleted');
    ok($t->wait_for(sub { worker_subscribers() == 0 && zone()->{subscribers} == 0 }, timeout => 5),
       'stats: subscribers (zone and per worker) back to 0');
    is(info('solo')->{status}, 404, 'the channel is gone');
    $_->close for @s;
}

# ---- several channels: the stream goes on with the others
{
    my @s = open_streams('/m?ch=ma,mb,mc', 6);
    ok($t->wait_for(sub { !grep { $t->subscribers($_) != 6 } qw(ma mb mc) }, timeout => 5),
       'six streams of ma,mb,mc');
    is(zone()->{subscribers}, 6, 'stats: 6 subscribers (connections)');
    $t->publish('ma', 'a1');
    is($t->http(DELETE => '/pub/ma', port => 1)->{status}, 200, 'DELETE ma');
    $t->publish('ma', 'a2 (recreated, not ours any more)');
    $t->publish('mb', 'b1');
    for my $i (0 .. $#s) {
        my @ev = $s[$i]->events_until('b1');
        my $shape = join ' ', map { ($_->{event} // '-') . '/' . ($_->{data} // '') } @ev;
        is($shape, 'ma/a1 channel-deleted/{"channel":"ma"} mb/b1',
           "stream $i: channel-deleted for ma, then the other channels go on (nothing from the new ma)");
        ok(!$s[$i]->eof, "stream $i: still open");
    }
    ok($t->wait_for(sub { $t->subscribers('mb') == 6 && $t->subscribers('ma') == 0 }, timeout => 5),
       'channel info: ma 0 subscribers (recreated), mb 6');
    is(zone()->{subscribers}, 6, 'stats: still 6 subscribers');

    is($t->http(DELETE => '/pub/mb', port => 1)->{status}, 200, 'DELETE mb');
    $t->publish('mc', 'c1');
    for my $i (0 .. $#s) {
        my @ev = $s[$i]->events_until('c1');
        my $shape = join ' ', map { ($_->{event} // '-') . '/' . ($_->{data} // '') } @ev;
        is($shape, 'channel-deleted/{"channel":"mb"} mc/c1', "stream $i: mb deleted, mc goes on");
    }
    is($t->http(DELETE => '/pub/mc', port => 1)->{status}, 200, 'DELETE mc, the last channel');
    for my $i (0 .. $#s) {
        my @ev = $s[$i]->events_until(\&is_deleted);
        is(join(' ', map { $_->{event} // '-' } @ev), 'channel-deleted', "stream $i: channel-deleted for mc");
        ok($s[$i]->wait_eof(timeout => 5) && $s[$i]->clean_end, "stream $i: now the stream ends, cleanly");
    }
    ok($t->wait_for(sub { worker_subscribers() == 0 && zone()->{subscribers} == 0 }, timeout => 5),
       'stats: subscribers back to 0');
    $_->close for @s;
}

# ---- a message published just before the DELETE still reaches every subscriber first.
# POST and DELETE go pipelined on one keep-alive connection, so the DELETE is handled right
# after the publish, before the other worker has necessarily delivered the message.
{
    my ($lost, $total, @detail) = (0, 0);
    for my $round (1 .. 6) {
        for my $multi (0, 1) {
            my $ch = "pd$round$multi";
            my @s = open_streams($multi ? "/m?ch=$ch,pdother" : "/events/$ch", 6);
            $t->wait_for(sub { $t->subscribers($ch) == 6 }, timeout => 5) or diag "$ch: not all subscribed";
            my $c = $t->client(port => 1);
            $c->send_raw("POST /pub/$ch HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nbefore-gone"
                       . "DELETE /pub/$ch HTTP/1.1\r\nHost: localhost\r\n\r\n");
            my $r1 = $c->read_response(method => 'POST');
            my $r2 = $c->read_response(method => 'DELETE');
            $c->close;
            is("$r1->{status} $r2->{status}", '201 200', "$ch: pipelined POST and DELETE: 201, 200");
            for my $st (@s) {
                my @ev = $st->events_until(\&is_deleted);
                my $shape = join ' ', map { ($_->{event} // '-') . '/' . ($_->{data} // '') } @ev;
                $total++;
                my $want = ($multi ? $ch : '-') . qq{/before-gone channel-deleted/{"channel":"$ch"}};
                if ($shape ne $want) { $lost++; push @detail, "$ch: $shape" }
                $st->close;
            }
        }
    }
    is($lost, 0, "every one of $total streams got the message published before the DELETE, then channel-deleted")
        or diag join "\n", @detail[0 .. ($#detail < 5 ? $#detail : 5)];
    ok($t->wait_for(sub { zone()->{subscribers} == 0 }, timeout => 5), 'stats: 0 subscribers');
}

# ---- deleting a channel nobody subscribes to, and a stream that was deleted twice over
{
    is($t->http(DELETE => '/pub/never', port => 1)->{status}, 404, 'DELETE of an unknown channel: 404');
    my $s = $t->sse_open('/events/again');
    ok($t->wait_for(sub { $t->subscribers('again') == 1 }, timeout => 5), 'subscribed to a new (empty) channel');
    is($t->http(DELETE => '/pub/again', port => 1)->{status}, 200, 'DELETE of the empty channel with a subscriber');
    my @ev = $s->events_until(\&is_deleted);
    is(scalar(grep { is_deleted($_) } @ev), 1, 'its subscriber gets channel-deleted');
    ok($s->wait_eof(timeout => 5), 'and its stream ends');
    # A new subscriber of the same name gets a fresh channel.
    my $n = $t->sse_open('/events/again');
    ok($t->wait_for(sub { $t->subscribers('again') == 1 }, timeout => 5), 'a new subscriber recreates it');
    $t->publish('again', 'fresh');
    my $e = $n->next_event(timeout => 5);
    is($e && $e->{data}, 'fresh', 'and receives messages');
    $n->close;
    ok($t->wait_for(sub { zone()->{subscribers} == 0 }, timeout => 5), 'stats: 0 subscribers at the end');
}

done_testing;
