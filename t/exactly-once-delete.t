#!/usr/bin/perl
# Issue 12, finding 3: `channel-deleted` never overtakes a replay (README "Publishing": DELETE;
# "SSE": every message of its channels once, in id order).
#
# A multi-channel SSE stream resumes a large backlog and does not read for a moment, so the
# server is still catching up when a DELETE comes. The deletion marker carries the newest id:
# it must come after every older event of the stream, or a client that reconnects from it
# would silently skip the rest of the replay.
#   1. the deleted channel is not the one being replayed: every replayed message, then
#      `channel-deleted`, then live messages of the other channel;
#   2. the deleted channel is the one being replayed, interleaved with another channel's
#      messages: every message of the other channel comes before the marker.
# In both, ids strictly increase along the stream. (The client's receive buffer is small but
# not below loopback's MSS: a window smaller than one segment leaves TCP sending by
# zero-window probes, seconds apart, which the server rightly takes for a stalled client.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use ChannelsTest qw(id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=del:48m history=1000 ttl=1h;
    client_max_body_size 1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /multi { sse_ping 0; sse_channel $arg_ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$ { publish_channel $ch; }
    }
CONF

my $BIG = 'x' x 65536;

# Reads the stream until the marker for $deleted and the live message $live_id (or a
# problem); returns the events and the first problem seen.
sub read_all {
    my ($s, $deadline_s, $stop_id) = @_;
    my (@ev, $problem, $last);
    my $t0 = time;
    while (time < $t0 + $deadline_s) {
        my $e = $s->next_event(timeout => 6) or last;
        push @ev, $e;
        if (defined $e->{id}) {
            if (defined $last && id_cmp($e->{id}, $last) <= 0) {
                $problem //= "event #" . scalar(@ev) . " ($e->{id}, " . ($e->{event} // 'message')
                           . ") after $last: ids go backwards";
            }
            $last = $e->{id};
        }
        last if $stop_id && defined $e->{id} && $e->{id} eq $stop_id;
    }
    return (\@ev, $problem);
}

sub describe {
    my $e = shift;
    return ($e->{event} // '') eq 'channel-deleted' ? "channel-deleted $e->{data} id $e->{id}"
         : ($e->{id} // 'no id') . ' ' . ($e->{event} // '') . ' ' . length($e->{data} // '') . ' bytes';
}

subtest 'DELETE of the channel not being replayed' => sub {
    my $cursor = $t->publish('d1b', 'b before the cursor');
    my @a = map { $t->publish('d1a', "a$_:" . $BIG) } 1 .. 160;
    my $s = $t->sse_open('/multi?ch=d1a,d1b', headers => { 'Last-Event-ID' => $cursor }, rcvbuf => 65536);
    is($s->status, 200, 'stream resumed');
    my $first = $s->next_event(timeout => 10);
    is($first && $first->{id}, $a[0], 'the replay started');
    # The client reads nothing while the channel is deleted.
    my $r = $t->http(DELETE => '/pub/d1b', port => 1);
    is($r->{status}, 200, 'DELETE d1b');
    my $live = $t->publish('d1a', 'live after the delete');

    my ($ev, $problem) = read_all($s, 60, $live);
    is($problem, undef, 'ids strictly increase along the stream');
    my @got_a = grep { ($_->{event} // '') eq 'd1a' } @$ev;
    my ($marker_at) = grep { ($ev->[$_]{event} // '') eq 'channel-deleted' } 0 .. $#$ev;
    ok(defined $marker_at, 'channel-deleted for d1b came');
    my @a_after_marker = defined $marker_at ? grep { ($_->{event} // '') eq 'd1a' } @$ev[ $marker_at + 1 .. $#$ev ] : ();
    my $replayed_before = defined $marker_at ? grep({ ($_->{event} // '') eq 'd1a' } @$ev[ 0 .. $marker_at ]) : 0;
    is($replayed_before, 159, 'all 159 remaining replayed messages came before channel-deleted')
        or diag("first events after the first: " . join(' | ', map { describe($_) } @$ev[ 0 .. ($#$ev < 6 ? $#$ev : 6) ]));
    is_deeply([ map { $_->{id} } @got_a ], [ @a[ 1 .. $#a ], $live ], 'every message of d1a once, in order, then the live one');
    $s->close;
};

subtest 'DELETE of the channel being replayed' => sub {
    my $cursor = $t->publish('d2b', 'b before the cursor');
    my (@a, @b);
    for my $i (1 .. 160) {
        push @a, $t->publish('d2a', "a$i:" . $BIG);
        push @b, $t->publish('d2b', "b$i") if $i % 2 == 0;
    }
    my $s = $t->sse_open('/multi?ch=d2a,d2b', headers => { 'Last-Event-ID' => $cursor }, rcvbuf => 65536);
    is($s->status, 200, 'stream resumed');
    my $first = $s->next_event(timeout => 10);
    is($first && $first->{id}, $a[0], 'the replay started');
    my $r = $t->http(DELETE => '/pub/d2a', port => 1);
    is($r->{status}, 200, 'DELETE d2a');
    my $live = $t->publish('d2b', 'live after the delete');

    my ($ev, $problem) = read_all($s, 60, $live);
    is($problem, undef, 'ids strictly increase along the stream');
    my ($marker_at) = grep { ($ev->[$_]{event} // '') eq 'channel-deleted' } 0 .. $#$ev;
    ok(defined $marker_at, 'channel-deleted for d2a came');
    my @b_before = defined $marker_at ? map { $_->{id} } grep { ($_->{event} // '') eq 'd2b' } @$ev[ 0 .. $marker_at ] : ();
    is_deeply(\@b_before, \@b, 'every message of d2b retained before the delete came before channel-deleted')
        or diag(scalar(@b_before) . ' of ' . scalar(@b) . ' came before it; first events: '
                . join(' | ', map { describe($_) } @$ev[ 0 .. ($#$ev < 6 ? $#$ev : 6) ]));
    my @a_after = defined $marker_at ? grep { ($_->{event} // '') eq 'd2a' } @$ev[ $marker_at + 1 .. $#$ev ] : ();
    is(scalar @a_after, 0, 'nothing of d2a after its channel-deleted');
    my @ids_a = map { $_->{id} } grep { ($_->{event} // '') eq 'd2a' } @$ev;
    my $n = @ids_a > 159 ? 159 : scalar @ids_a;
    is_deeply(\@ids_a, [ @a[ 1 .. $n ] ], 'the d2a messages that came are the replay in order, none skipped');
    is(($ev->[-1] || {})->{id}, $live, 'then the live message of d2b');
    $s->close;
};

done_testing;
