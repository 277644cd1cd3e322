#!/usr/bin/perl
# Issue 11, finding 10 (README "What one client can cost": the lock and the CPU): a client that
# keeps sending bytes on its SSE connection does not hold the worker.
#
# One worker. Four SSE subscribers, once their streams are established, send garbage as fast
# as they can. Other requests on the same worker (stats, publishes, a witness subscriber)
# stay fast (median within 4x of the same requests before, or under 10 ms), the worker does
# not spend its time reading garbage (under 30 % of a core while they send), and the senders
# are closed by the server.
#
# Before the fix: a detached stream read 256 bytes at a time until EAGAIN, which a client
# that keeps sending seldom lets happen: the worker spent its time reading (here: ~90 % of
# a core, other requests 16x slower) and the senders were never closed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes ();
use ChannelsTest;
use Attack qw(percentile median cpu_ticks);

my $SENDERS = 4;
my $SECONDS = 6;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=events:4m history=10 ttl=1h;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\w.:-]+)$ { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

my ($worker) = $t->worker_pids;
my $witness = $t->sse_open('/events/witness');

# The same requests as below, without the senders.
sub probe {
    my ($secs, $tag) = @_;
    my @lat;
    my $end = Time::HiRes::time() + $secs;
    my $n = 0;
    while (Time::HiRes::time() < $end) {
        my $a = Time::HiRes::time();
        $t->http(GET => '/stats', port => 1, timeout => 30);
        push @lat, Time::HiRes::time() - $a;
        $a = Time::HiRes::time();
        $t->http(POST => '/pub/witness', port => 1, body => "$tag" . ++$n, timeout => 30);
        push @lat, Time::HiRes::time() - $a;
        Time::HiRes::sleep(0.05);
    }
    return (\@lat, $n);
}
my ($base) = probe(2, 'b');
$witness->next_event(timeout => 5) for 1 .. @$base / 2;
note(sprintf('stats/publish alone: n=%d median %.1f ms, p99 %.1f ms', scalar @$base, 1000 * median($base),
             1000 * percentile($base, 99)));
is($witness->status, 200, 'witness subscribed');

# Each sender: subscribe, read the stream's start, then write without pause until the
# server closes the connection or the time is up. Reports on a pipe how it ended.
my @kids;
for my $i (1 .. $SENDERS) {
    pipe(my $rd, my $wr) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $rd;
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port(0), Proto => 'tcp') or POSIX::_exit(1);
        binmode $s;
        print $s "GET /events/noise$i HTTP/1.1\r\nHost: x\r\n\r\n";
        my $head = '';
        sysread($s, $head, 4096);    # the stream's header and first bytes
        my ($status) = $head =~ /\A(HTTP\/1\.1 \d+)/;
        print $wr 'HEAD ', ($status // 'none'), "\n";
        $s->blocking(0);
        local $SIG{PIPE} = 'IGNORE';
        my $junk = 'z' x 65536;
        my ($sent, $how) = (0, 'time up');
        my $end = Time::HiRes::time() + $SECONDS + 4;
        my $sel = IO::Select->new($s);
        while (Time::HiRes::time() < $end) {
            my $n = syswrite($s, $junk);
            if (defined $n) { $sent += $n; next }
            if ($!{EAGAIN}) { $sel->can_write(0.05); next }
            $how = "closed by the server ($!)";
            last;
        }
        my $buf;
        $how = 'closed by the server (EOF)' if $how eq 'time up' && defined sysread($s, $buf, 65536) && !length $buf;
        print $wr "$how; sent $sent bytes\n";
        close $wr;
        POSIX::_exit(0);
    }
    close $wr;
    push @kids, [$pid, $rd];
}
# (The server may close a sender within milliseconds: whether they subscribed is read
# from their own reports, at the end.)

# Latency of other requests on the same worker while they send.
my $cpu0 = cpu_ticks($worker);
my $c0 = Time::HiRes::time();
my ($lat, $n) = probe($SECONDS, 'w');
my $cpu = (cpu_ticks($worker) - $cpu0) / POSIX::sysconf(POSIX::_SC_CLK_TCK()) / (Time::HiRes::time() - $c0);
my @lat = @$lat;
note(sprintf('stats/publish while %d clients send: n=%d median %.1f ms, p99 %.1f ms, max %.1f ms; worker CPU %.0f %%',
             $SENDERS, scalar @lat, 1000 * median(\@lat), 1000 * percentile(\@lat, 99), 1000 * percentile(\@lat, 100),
             100 * $cpu));
my $limit = 4 * median($base) > 0.010 ? 4 * median($base) : 0.010;
cmp_ok(median(\@lat), '<', $limit, sprintf('other requests on the worker stay fast (median < %.1f ms)', 1000 * $limit));
cmp_ok(percentile(\@lat, 99), '<', 0.2, 'and p99 < 200 ms');
cmp_ok($cpu, '<', 0.3, 'the worker does not spend its time reading what they send (< 30 % of a core)');
my @got;
while (my $e = $witness->next_event(timeout => 5)) {
    push @got, $e->{data};
    last if $e->{data} eq "w$n";
}
is(scalar @got, $n, "the witness received all $n messages");

my (@how, @heads);
for my $k (@kids) {
    my ($pid, $rd) = @$k;
    my $head = <$rd> // 'no report';
    my $line = <$rd> // 'no report';
    chomp($head, $line);
    push @heads, $head;
    push @how, $line;
    waitpid $pid, 0;
}
is(scalar(grep { $_ eq 'HEAD HTTP/1.1 200' } @heads), $SENDERS, 'the senders subscribed (200 and the stream\'s start)')
    or diag "@heads";
note("senders: $_") for @how;
is(scalar(grep { /^closed by the server/ } @how), $SENDERS, 'every sender was closed by the server');
ok($t->wait_for(sub { $t->subscribers('noise1') == 0 && $t->subscribers('noise4') == 0 }, timeout => 5),
   'the senders are no longer subscribers');

done_testing;
