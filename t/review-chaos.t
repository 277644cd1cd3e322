#!/usr/bin/perl
# Review: lifetimes under a mix of everything at once, meant to be run under `make sanitize`
# (tools/sanitize.sh t/review-chaos.t), where any use-after-free or leak of a request, a
# detached stream, a long-poll or an HTTP/2 stream shows as a sanitizer report.
#
# For ~12 s, forked clients: HTTP/1.1 SSE streams resuming from 0-0 (replays being paged in)
# closed with RST after a random number of bytes; multi-channel streams of 64 channels; streams
# through a limit_conn location (they stay requests); HTTP/2 connections with several SSE and
# long-poll streams, reset one by one (RST_STREAM) or all at once (the connection closes);
# long-polls closed before their answer; JWT streams whose token expires within a second. The
# main process publishes, deletes channels, reloads nginx twice and kills a worker with
# SIGKILL in the middle of it all.
#
# Afterwards: no worker left an [alert]/[crit] or a sanitizer report (the harness' log check),
# every subscriber is gone from the zone's counts, the zone passes its own consistency check,
# and a new subscriber still gets a new message.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_LINGER);
use POSIX ();
use Time::HiRes ();
use ChannelsTest;
use H2;
use Jwt qw(b64url json);
use Digest::SHA qw(hmac_sha256);
use File::Temp ();

my $SECONDS = $ENV{REVIEW_SECONDS} // 12;

my $dir = File::Temp::tempdir('review-chaos-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $secret = 'review-chaos-secret-0123456789abcdef';
chmod 0755, $dir;
open my $kf, '>', "$dir/keys.jwks" or die;
print $kf json({ keys => [ { kty => 'oct', kid => 'k1', alg => 'HS256', k => b64url($secret) } ] });
close $kf;
chmod 0644, "$dir/keys.jwks";

# HS256 with Perl's core Digest::SHA (independent of the module's code).
sub hs256 {
    my ($claims) = @_;
    my $input = b64url(json({ alg => 'HS256', typ => 'JWT', kid => 'k1' })) . '.' . b64url(json($claims));
    return "$input." . b64url(hmac_sha256($input, $secret));
}

my $conf = <<"CONF";
    channel_zone zone=c:8m history=200 ttl=1h;
    limit_conn_zone \$binary_remote_addr zone=perip:1m;
    sse_ping 300ms;
    longpoll_timeout 2s;
    send_timeout 3s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[\\w.-]+)\$ { sse_channel \$ch; }
        location = /multi                   { sse_channel \$arg_ch; }
        location ~ ^/limited/(?<ch>[\\w.-]+)\$ { limit_conn perip 1000; sse_channel \$ch; }
        location ~ ^/poll/(?<ch>[\\w.-]+)\$   { longpoll_channel \$ch; }
        location ~ ^/auth/(?<ch>[\\w.-]+)\$   { channel_auth jwt; channel_jwt_key $dir/keys.jwks; sse_channel \$ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        http2 on;
        location ~ ^/events/(?<ch>[\\w.-]+)\$ { sse_channel \$ch; }
        location ~ ^/poll/(?<ch>[\\w.-]+)\$   { longpoll_channel \$ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        keepalive_requests 1000000;
        location ~ ^/pub/(?<ch>[\\w.-]+)\$ { publish_channel \$ch; }
        location = /stats                 { channel_stats; }
    }
CONF
my $t = ChannelsTest->new(workers => 2, conf => $conf);
$t->allow_log(qr/exited on signal 9/, qr/\[alert\].*worker process \d+ exited on signal 9/);

sub zone { $t->zone_stats('/stats', 'c', port => 1) }
my @CH = map { "k$_" } 0 .. 15;

# Some history to replay.
for my $i (1 .. 400) { $t->publish($CH[$i % @CH], "seed $i " . ('s' x ($i % 50))) }

sub connect_port {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 3)
        or return undef;
    binmode $s;
    return $s;
}

sub rst_close {
    my ($s) = @_;
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    close $s;
}

# Reads up to $bytes (or $secs) then closes, with RST half the time.
sub h1_stream {
    my ($path, $hdr, $bytes, $secs) = @_;
    my $s = connect_port($t->port(0)) or return;
    print $s "GET $path HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n$hdr\r\n";
    my $sel = IO::Select->new($s);
    my ($got, $end) = (0, Time::HiRes::time() + $secs);
    while ($got < $bytes && Time::HiRes::time() < $end) {
        next unless $sel->can_read(0.05);
        my $n = sysread($s, my $buf, 1 + int(rand 8192));
        last unless $n;
        $got += $n;
    }
    rand() < 0.5 ? rst_close($s) : close $s;
}

sub h2_session {
    my $h = eval { H2->new(port => $t->port(2), timeout => 3,
                           settings => { initial_window_size => rand() < 0.5 ? 0 : 65535 },
                           auto_window => rand() < 0.5 ? 1 : 0) } or return;
    my @sids;
    for (1 .. 1 + int(rand 6)) {
        my $ch = $CH[rand @CH];
        push @sids, rand() < 0.7
            ? $h->request(GET => "/events/$ch", headers => [accept => 'text/event-stream',
                                                         (rand() < 0.5 ? ('last-event-id' => '0-0') : ())])
            : $h->request(GET => "/poll/$ch");
    }
    $h->pump(timeout => rand 0.5);
    for my $sid (@sids) {
        $h->rst_stream($sid) if rand() < 0.5;
        $h->pump(timeout => rand 0.1);
    }
    $h->close;
}

sub longpoll_abort {
    my $s = connect_port($t->port(0)) or return;
    my $ch = $CH[rand @CH];
    print $s "GET /poll/$ch HTTP/1.1\r\nHost: x\r\n\r\n";
    Time::HiRes::sleep(rand 0.3);
    rand() < 0.5 ? rst_close($s) : close $s;
}

sub jwt_stream {
    my $ch = $CH[rand @CH];
    my $tok = hs256({ exp => time() + 1, channels => { subscribe => ['*'] } });
    h1_stream("/auth/$ch", "Authorization: Bearer $tok\r\nLast-Event-ID: 0-0\r\n", 1e9, 1.5 + rand);
}

sub client_loop {
    my ($end) = @_;
    while (Time::HiRes::time() < $end) {
        my $r = rand;
        my $ch = $CH[rand @CH];
        if    ($r < 0.25) { h1_stream("/events/$ch", "Last-Event-ID: 0-0\r\n", int(rand 60000), rand 1) }
        elsif ($r < 0.35) { h1_stream('/multi?ch=' . join(',', map { "m$_" } 1 .. 64) . '&last_event_id=0-0', '', int(rand 5000), rand 0.5) }
        elsif ($r < 0.45) { h1_stream("/limited/$ch", "Last-Event-ID: 0-0\r\n", int(rand 30000), rand 1) }
        elsif ($r < 0.65) { h2_session() }
        elsif ($r < 0.80) { longpoll_abort() }
        elsif ($r < 0.90) { jwt_stream() }
        else              { h1_stream("/events/$ch", '', 100, rand 0.2) }
    }
}

my $end = Time::HiRes::time() + $SECONDS;
my @kids;
for (1 .. 6) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        srand($$);
        eval { client_loop($end) };
        POSIX::_exit(0);
    }
    push @kids, $pid;
}

my ($published, $deleted, $reloads, $killed) = (0, 0, 0, 0);
my $c = $t->client(port => 1);
my $phase = 0;
while (Time::HiRes::time() < $end) {
    my $ch = $CH[rand @CH];
    my $r = $c->request(POST => "/pub/$ch", body => "live $published " . ('L' x int(rand 3000)));
    $published++ if $r->{status} == 201;
    if (rand() < 0.02) {
        $deleted++ if $c->request(DELETE => "/pub/$CH[rand @CH]")->{status} == 200;
        $c->request(POST => "/pub/m$_", body => "multi $_") for 1 .. 3;
    }
    my $elapsed = $SECONDS - ($end - Time::HiRes::time());
    if ($phase == 0 && $elapsed > $SECONDS * 0.3) {
        $phase++;
        $reloads++ if $t->reload(wait_old => 0);
        $c->close;
        $c = $t->client(port => 1);
    } elsif ($phase == 1 && $elapsed > $SECONDS * 0.55) {
        $phase++;
        my @w = $t->worker_pids;
        $killed++ if kill 'KILL', $w[0];
    } elsif ($phase == 2 && $elapsed > $SECONDS * 0.75) {
        $phase++;
        $reloads++ if $t->reload(wait_old => 0);
        $c->close;
        $c = $t->client(port => 1);
    }
}
$c->close;
my $t_main = Time::HiRes::time();
waitpid($_, 0) for @kids;
note(sprintf('clients done %.1fs after the main loop', Time::HiRes::time() - $t_main));
note("published $published, deleted $deleted times, $reloads reloads, $killed worker killed");

ok($t->wait_for(sub { (scalar(my @w = $t->all_worker_pids) == 2) }, timeout => 30), 'old workers have exited');
ok($t->wait_for(sub { (zone() // {})->{subscribers} == 0 }, timeout => 15), 'no subscriber is left counted')
    or diag explain zone();
my $check = $t->http(GET => '/stats?check', port => 1)->{json};
ok($check && $check->{zones}[0]{consistent}, 'the zone passes its consistency check')
    or diag explain $check;

my $s = $t->sse_open('/events/after');
$t->publish('after', 'still alive');
my $e = $s->next_event(timeout => 5);
is($e && $e->{data}, 'still alive', 'a new subscriber gets a new message');

done_testing;
