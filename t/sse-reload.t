#!/usr/bin/perl
# `nginx -s reload` in the middle of a publish stream (README "SSE", issue 3): the old workers end
# their SSE streams cleanly (last chunk), the subscribers reconnect with Last-Event-ID to the new
# workers and end up with every message exactly once, in order; the zone's messages survive the
# reload; the old workers exit at once (no "open socket left"), also when a client has stalled with
# unsent data; `nginx -s quit` ends every stream with the last chunk, at once.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Handle;
use Time::HiRes ();
use POSIX ();
use ChannelsTest qw(id_cmp);

my $S = 24;      # subscribers
my $P = 300;     # messages

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=1000 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% sndbuf=32k;    # small send buffer: unsent bytes stay in nginx
        location ~ ^/events/(?<ch>[^/]+)$  { sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub zone { $t->zone_stats('/stats', 'events', port => 1) || {} }

my @subs = map { { s => $t->sse_start('/events/rl'), got => [], ends => 0, clean => 0, reconnects => 0 } } 1 .. $S;

sub pump {
    my ($done, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (1) {
        return 1 if $done->();
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        ChannelsTest::SSE::read_ready([ map { $_->{s} } @subs ], $left < 0.05 ? $left : 0.05);
        push @{ $_->{got} }, splice @{ $_->{s}->received } for @subs;
        # Reconnect ended streams with their last id, as EventSource would.
        for my $x (grep { $_->{s}->eof } @subs) {
            $x->{ends}++;
            $x->{clean}++ if $x->{s}->clean_end;
            $x->{s}->close;
            my $last = @{ $x->{got} } ? $x->{got}[-1]{id} : undef;
            $x->{s} = $t->sse_start('/events/rl', headers => { defined $last ? ('Last-Event-ID' => $last) : () });
            $x->{reconnects}++;
        }
    }
}

ok(pump(sub { !grep { !$_->{s}->started } @subs }, 10), "$S streams open");
ok($t->wait_for(sub { (zone()->{subscribers} // 0) == $S }, timeout => 5), "stats: $S subscribers");
my @old_workers = $t->worker_pids;

# The publisher: fresh connections, a short pause between messages, ids reported on a pipe.
pipe(my $rd, my $wr) or die "pipe: $!";
my $pid = fork // die "fork: $!";
if (!$pid) {
    close $rd;
    $wr->autoflush(1);
    for my $i (1 .. $P) {
        my $r;
        for my $try (1 .. 5) {
            $r = $t->http(POST => '/pub/rl', body => "r$i", port => 1);
            last if $r->{status};
        }
        print $wr ($r->{status} == 201 ? "$i $r->{json}{id}\n" : "ERR $i $r->{status} " . ($r->{error} // '') . "\n");
        POSIX::_exit(1) if $r->{status} != 201;
        Time::HiRes::sleep(0.01);     # pacing: the reload lands in the middle of the stream
    }
    POSIX::_exit(0);
}
close $wr;
$rd->blocking(0);
my ($published, $pbuf, %id_of) = (0, '');
sub read_publisher {
    while (defined(my $n = sysread($rd, $pbuf, 4096, length $pbuf)) ) {
        last if $n == 0;
    }
    while ($pbuf =~ s/^(.*)\n//) {
        my $l = $1;
        if ($l =~ /^(\d+) (\S+)$/) { $id_of{$1} = $2; $published = $1 }
        else { diag("publisher: $l") }
    }
    return $published;
}

ok(pump(sub { read_publisher() >= $P / 3 }, 20), 'a third of the messages published and read');
my $before = $published;
my $t0 = Time::HiRes::time();
ok($t->reload(timeout => 15), 'nginx -s reload: new workers up, every old worker exited');
my $took = Time::HiRes::time() - $t0;
cmp_ok($took, '<', 5, sprintf('the old workers ended their streams and exited promptly (%.1fs)', $took));
read_publisher();
cmp_ok($published, '<', $P, "the reload happened while publishing (message $before .. $published of $P)");
my %now = map { $_ => 1 } $t->worker_pids;
ok(!grep({ $now{$_} } @old_workers), 'workers replaced');

ok(pump(sub { read_publisher(); $published >= $P && !grep { !@{ $_->{got} } || $_->{got}[-1]{data} ne "r$P" } @subs }, 40),
   "every subscriber reached r$P");
waitpid $pid, 0;
is($? >> 8, 0, "publisher published all $P messages");

my $want_data = join ',', map { "r$_" } 1 .. $P;
my $want_ids = join ',', map { $id_of{$_} // '?' } 1 .. $P;
my @bad;
for my $i (0 .. $#subs) {
    my $x = $subs[$i];
    my $d = join ',', map { $_->{data} } @{ $x->{got} };
    my $ids = join ',', map { $_->{id} } @{ $x->{got} };
    push @bad, "subscriber $i: " . scalar(@{ $x->{got} }) . ' events' unless $d eq $want_data && $ids eq $want_ids;
}
is_deeply(\@bad, [], "every subscriber has r1 .. r$P exactly once, in order, with the publish ids");
is(scalar(grep { $_->{ends} >= 1 } @subs), $S, 'every stream was ended by the reload and reconnected');
is(scalar(grep { $_->{clean} == $_->{ends} } @subs), $S, 'every ending was clean (the last chunk, not a reset)');
ok($t->wait_for(sub { (zone()->{subscribers} // 0) == $S }, timeout => 5), "stats after the reload: $S subscribers");
unlike($t->error_log, qr/open socket .* left/, 'no "open socket left" in the error log');

$_->{s}->close for @subs;
ok($t->wait_for(sub { (zone()->{subscribers} // -1) == 0 }, timeout => 5), 'closed: 0 subscribers');

# ---- a stalled subscriber (never reads, ~500 KiB unsent: under the 1 MiB cut-off) must not
# keep an old worker alive after a reload; the reading subscribers still end cleanly
{
    my $stalled = $t->sse_start('/events/stall', port => 2, rcvbuf => 4096);
    my $reader = $t->sse_open('/events/stall', port => 2);
    ok($t->wait_for(sub { (zone()->{subscribers} // 0) == 2 }, timeout => 5), 'a stalled and a reading subscriber');
    my $c = $t->client(port => 1);
    my @st = map { $c->request(POST => '/pub/stall', body => 'S' x (100 * 1024))->{status} } 1 .. 5;
    $c->close;
    is("@st", '201 201 201 201 201', '5 x 100 KiB published');
    my $got = 0;
    $got++ while $got < 5 && $reader->next_event(timeout => 5);
    is($got, 5, 'the reading subscriber got them');
    is(zone()->{dropped_slow}, 0, 'the stalled one is not cut off (under 1 MiB unsent)');
    my $t1 = Time::HiRes::time();
    my $ok = $t->reload(timeout => 15);
    ok($ok, sprintf('reload: the old worker exited (%.1fs) although a client stalled', Time::HiRes::time() - $t1));
    ok($reader->wait_eof(timeout => 5) && $reader->clean_end, 'the reading subscriber\'s stream ended cleanly');
    $stalled->close;
    # if the old worker was stuck, closing the client lets it go; wait for that before going on
    $t->wait_for(sub { my @w = $t->all_worker_pids; @w == 2 }, timeout => 10) unless $ok;
}

# ---- shutdown (nginx -s quit) ends streams cleanly and at once
{
    my @s = map { $t->sse_open('/events/rl') } 1 .. 10;
    ok($t->wait_for(sub { (zone()->{subscribers} // 0) == 10 }, timeout => 5), '10 streams before the shutdown');
    my $t1 = Time::HiRes::time();
    ok($t->stop(graceful => 1, timeout => 10), 'nginx -s quit: nginx exited');
    my $took = Time::HiRes::time() - $t1;
    cmp_ok($took, '<', 5, sprintf('promptly (%.1fs): the streams did not hold the workers', $took));
    is(scalar(grep { $_->wait_eof(timeout => 5) && $_->clean_end } @s), 10, 'every stream ended with the last chunk');
}

done_testing;
