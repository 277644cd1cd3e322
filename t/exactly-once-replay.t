#!/usr/bin/perl
# Issue 12, finding 1: a resumed SSE stream receives its whole retained backlog, then goes
# live (README "SSE": the replay of what was
# retained after the cursor; "What one client can cost": replays finish).
#
# 128 × 64 KiB retained, resume from the id of #47: the client must get #48..#128 in order,
# then a message published afterwards; HTTP/1.1 (chunked, detached) and HTTP/1.0 (a request
# to the end), with pings off and on (1 s); 200 × 8 KB the same way; a slow HTTP/1.1 reader;
# an HTTP/2 (h2c) reader, curl. Each stream must finish within a generous deadline that is
# still far below what one replay page per ping (or per publish) takes.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use ChannelsTest;
use CurlStream;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=replay:48m history=1000 ttl=1h;
    client_max_body_size 1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/quiet/(?<ch>[\w.-]+)$  { sse_ping 0;  sse_channel $ch; }
        location ~ ^/pinged/(?<ch>[\w.-]+)$ { sse_ping 30s; sse_channel $ch; }
        location ~ ^/often/(?<ch>[\w.-]+)$  { sse_ping 1s; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        http2 on;
        location ~ ^/quiet/(?<ch>[\w.-]+)$  { sse_ping 0;  sse_channel $ch; }
    }
CONF

# Payloads that show which message they are and whether they arrived whole.
sub payload {
    my ($ch, $i, $size) = @_;
    my $head = "$ch#$i:";
    return $head . substr(('abcdefghijklmnopqrstuvwxyz0123456789' x (1 + $size / 36)), 0, $size - length $head);
}

my %sent;   # channel => [ [id, data], ... ] in publish order
sub publish_one {
    my ($ch, $size) = @_;
    my $i = @{ $sent{$ch} || [] } + 1;
    my $data = payload($ch, $i, $size);
    my $id = $t->publish($ch, $data);
    push @{ $sent{$ch} }, [ $id, $data ];
    return $id;
}

publish_one('big', 65536) for 1 .. 128;
publish_one('small', 8000) for 1 .. 200;
is(scalar @{ $sent{big} }, 128, '128 × 64 KiB published');
is(scalar @{ $sent{small} }, 200, '200 × 8 KB published');

# One subscriber: resume from #47, read everything, then one live message.
# $open->(headers) returns an object with next_event(timeout); $why names the case.
sub check_resume {
    my (%o) = @_;
    my ($ch, $why, $deadline_s) = ($o{channel}, $o{name}, $o{deadline} // 12);
    my $cursor = $sent{$ch}[46][0];
    my @want = @{ $sent{$ch} }[ 47 .. $#{ $sent{$ch} } ];
    my $s = $o{open}->({ 'Last-Event-ID' => $cursor });
    my $t0 = time;
    my ($got, $bad) = (0, undef);
    while ($got < @want) {
        my $left = $t0 + $deadline_s - time;
        last if $left <= 0;
        # no event for 6 s: the replay stalled (a page per ping would still show progress,
        # and fail the overall deadline instead)
        my $ev = $s->next_event(timeout => $left > 6 ? 6 : $left);
        last unless $ev;
        my ($id, $data) = @{ $want[$got] };
        if (($ev->{id} // '') ne $id || ($ev->{data} // '') ne $data) {
            $bad = sprintf 'event %d: got id %s (%d bytes), want %s', $got + 1,
                $ev->{id} // 'none', length($ev->{data} // ''), $id;
            last;
        }
        $got++;
        $o{on_event}->($got) if $o{on_event};
    }
    my $took = time - $t0;
    ok(!$bad && $got == @want, "$why: all " . scalar(@want) . " retained messages after #47 replayed in order")
        or diag($bad // sprintf('got %d of %d events within %ds (stream %s)', $got, scalar @want,
                                $deadline_s, $s->eof ? 'ended' : 'stalled'));
    note(sprintf '%s: replay took %.2fs', $why, $took);
    return $s->close if $bad || $got < @want;

    # then live: one more message, with no other publish to carry it
    my $live = publish_one($ch, 100);
    my $ev = $s->next_event(timeout => 10);
    is($ev && $ev->{id}, $live, "$why: then live (the next publish arrives)");
    $s->close;
}

sub h1 {
    my ($loc, $version, %extra) = @_;
    return sub { $t->sse_open("/$loc/$_[1]", headers => $_[0], version => $version, %extra) };
}

for my $case (
    [ big   => 'quiet',  '1.1' ],
    [ big   => 'pinged', '1.1' ],
    [ big   => 'quiet',  '1.0' ],
    [ big   => 'pinged', '1.0' ],
    [ small => 'quiet',  '1.1' ],
    [ small => 'pinged', '1.1' ],
    [ small => 'quiet',  '1.0' ],
    [ small => 'pinged', '1.0' ],
) {
    my ($ch, $loc, $version) = @$case;
    my $pings = $loc eq 'pinged' ? 'pings every 30s' : 'pings off';
    my $open = h1($loc, $version);
    check_resume(channel => $ch, name => "$ch, HTTP/$version, $pings",
                 open => sub { $open->($_[0], $ch) });
}

# Slow readers (small receive buffer, pauses between reads) still get everything, also with
# pings coming in between the replay's events.
for my $loc (qw(quiet often)) {
    check_resume(channel => 'small', name => "small, HTTP/1.1, slow reader, /$loc", deadline => 40,
                 open => sub { $t->sse_open("/$loc/small", headers => $_[0], rcvbuf => 16384) },
                 on_event => sub { Time::HiRes::sleep(0.05) if $_[0] % 5 == 0 });
}

# HTTP/2 (h2c), curl as the client.
check_resume(channel => 'big', name => 'big, HTTP/2 (curl)', open => sub {
    my $c = CurlStream->new(url => 'http://127.0.0.1:' . $t->port(2) . '/quiet/big', http2 => 1,
                            headers => $_[0]);
    $c->wait_head(timeout => 10) or diag('h2 stream: ' . $c->error);
    return $c;
});

done_testing;
