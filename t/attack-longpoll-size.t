#!/usr/bin/perl
# Issue 11, finding 4 (README "Long polling", "What one client can cost": worker memory): long-poll
# answers are bounded.
#
# A format=json answer holds at most 100 messages and no more than 1 MiB of data, but always
# at least one message; the next request gets the rest at once. Five 2 MB messages of control
# bytes (which JSON escapes as \u0001, six bytes each) therefore come one per answer, and four
# clients that never read their answers grow the worker by about those answers, no more.
#
# Before the fix: one answer held all five messages: 62.9 MB of JSON (built in a string, then
# copied into the response buffer), and four clients that did not read grew the worker by
# ~240 MB.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use Time::HiRes ();
use ChannelsTest;
use Attack qw(anon_kb settle_kb sanitized);

my $BIG = 2_000_000;
my $MIB = 1024 * 1024;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:48m history=1000 ttl=1h;
    longpoll_timeout 1s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        send_timeout 60s;
        location ~ ^/poll/(?<ch>[\w.:-]+)$ { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 4m;
        client_body_buffer_size 4m;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
    }
CONF
my ($worker) = $t->worker_pids;

# One long-poll on a raw socket, read whole; the answer's messages are found with a pattern
# (JSON::PP would take minutes on tens of MB): [[id, data as sent on the wire], ...].
sub poll_raw {
    my ($path, $cursor) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port(0), Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    print $s "GET $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLast-Event-ID: $cursor\r\n\r\n";
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = Time::HiRes::time() + 30;
    while ($sel->can_read($deadline - Time::HiRes::time())) {
        my $n = sysread($s, $buf, 1 << 20, length $buf);
        last unless $n;
    }
    close $s;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    my ($status) = ($head // '') =~ m{^HTTP/1\.\d (\d+)};
    my ($next) = ($head // '') =~ /^Last-Event-ID: (\S+)/mi;
    my @msgs;
    while (($body // '') =~ /\{"id":"([^"]+)","channel":"[^"]*"(?:,"event":"[^"]*")?,"data":"([^"]*)"/g) {
        push @msgs, [$1, $2];
    }
    return { status => $status // 0, bytes => length($body // ''), next => $next, msgs => \@msgs };
}

# ---- 100 messages at most; an answer read at once is one page read under the lock (64)
{
    $t->publish('many', "m$_") for 1 .. 150;
    my $a = poll_raw('/poll/many', '0-0');
    is($a->{status}, 200, '150 small messages: 200');
    is(scalar @{ $a->{msgs} }, 64, '150 small messages: the first answer holds one page, 64');
    my $b = poll_raw('/poll/many', $a->{next});
    is(scalar @{ $b->{msgs} }, 64, 'the next request the next page at once');
    my $c = poll_raw('/poll/many', $b->{next});
    is(scalar @{ $c->{msgs} }, 22, 'and the next the other 22');
}

# ---- about 1 MiB of data at most (ten 300,000-byte messages)
{
    $t->publish('mid', sprintf('%02d', $_) . ('a' x 299_998)) for 1 .. 10;
    my ($cursor, @got, $worst) = ('0-0');
    for my $round (1 .. 12) {
        my $a = poll_raw('/poll/mid', $cursor);
        last if $a->{status} != 200;
        my $n = @{ $a->{msgs} };
        my $data = 0;
        $data += length $_->[1] for @{ $a->{msgs} };
        note("300 kB messages, answer $round: $n messages, $data data bytes, $a->{bytes} bytes");
        $worst = $data if !defined $worst || $data > $worst;
        push @got, map { substr($_->[1], 0, 2) } @{ $a->{msgs} };
        $cursor = $a->{next};
        last if @got >= 10;
    }
    cmp_ok($worst, '<=', $MIB, 'no answer carries more than 1 MiB of data');
    is_deeply(\@got, [map { sprintf '%02d', $_ } 1 .. 10], 'all ten arrive, in order, over several answers');
}

# ---- 2 MB messages of control bytes: one per answer
my $ctl = "\x01" x $BIG;
$t->publish('ctl', $ctl) for 1 .. 5;
my $answer_bytes = 0;
{
    my ($cursor, $one_each, $intact, @sizes) = ('0-0', 1, 1);
    my $count = 0;
    for my $round (1 .. 6) {
        my $a = poll_raw('/poll/ctl', $cursor);
        last if $a->{status} != 200;
        my $n = @{ $a->{msgs} };
        push @sizes, "$n msg/$a->{bytes} B";
        $answer_bytes = $a->{bytes} if $a->{bytes} > $answer_bytes;
        $one_each = 0 if $n != 1;
        for my $m (@{ $a->{msgs} }) {
            $intact = 0 unless length($m->[1]) == 6 * $BIG && $m->[1] =~ /^(?:\\u0001)+$/;
        }
        $count += $n;
        $cursor = $a->{next};
        last if $count >= 5;
    }
    note('2 MB control-byte messages, answers: ' . join(', ', @sizes));
    ok($one_each, 'each answer holds exactly one 2 MB message');
    is($count, 5, 'the five messages arrive over five answers');
    ok($intact, 'each arrives whole (2,000,000 x \u0001)');
    cmp_ok($answer_bytes, '<=', 6 * $BIG + 4096, 'an answer is one escaped message, not five');
}

# ---- four clients that never read their answers
{
    my $base = settle_kb(sub { anon_kb($worker) });
    my @socks;
    for my $i (1 .. 4) {
        my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096);
        $s->connect(Socket::pack_sockaddr_in($t->port(0), Socket::inet_aton('127.0.0.1'))) or die "connect: $!";
        syswrite($s, "GET /poll/ctl HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0-0\r\n\r\n");
        push @socks, $s;
    }
    my $held = settle_kb(sub { anon_kb($worker) }, timeout => 20, quiet => 1);
    my $grew = $held - $base;
    my $bound = int(4 * (6 * $BIG + $MIB) * 1.5 / 1024) + 8 * 1024;
    note("4 clients not reading: worker RssAnon $base -> $held KiB (+$grew KiB); "
       . "one answer is $answer_bytes bytes; bound $bound KiB");
    SKIP: {
        skip 'memory figures mean nothing under a sanitizer', 1 if sanitized();
        cmp_ok($grew, '<=', $bound, 'the worker holds about their answers (one message each), no more');
    }
    close $_ for @socks;
}

done_testing;
