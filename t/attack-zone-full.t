#!/usr/bin/perl
# Issue 11, finding 5 (README "What one client can cost": the zone; failures stay local): the
# subscriber path when the zone refuses new channels.
#
# Held subscribers of many new channels fill what the zone gives channels without messages;
# then SSE and long-poll subscribers naming new channels are refused with 503 and
# Retry-After: the refusal is a complete answer (one-line body), a long-poll refused is
# answered at once (not parked until longpoll_timeout), and the error log has no [alert] or
# [crit] line. Once the flood leaves, subscribing works again.
#
# Before the fix: after the 503 the SSE handler went on as if attached and logged
# "[alert] header already sent"; a long-poll that got 503 stayed parked until
# longpoll_timeout, then logged an [alert] too.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest;
use Attack qw(rand_ids);

srand(5);

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=small:64k history=10 ttl=1h;
    longpoll_timeout 6s;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /events    { sse_channel $arg_ch; }
        location = /poll      { longpoll_channel $arg_ch; }
        location = /raw       { longpoll_channel $arg_ch format=raw; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

sub new_list { join ',', rand_ids(shift, 6) }

# Fill: SSE subscribers of new names, held, 64 channels each until the zone refuses one,
# then 8, then 1: after that no new channel fits at all.
my (@held, $refused);
for my $n (64, 8, 1) {
    for my $i (1 .. 300) {
        my $s = $t->sse_open('/events?ch=' . new_list($n), timeout => 10);
        if ($s->status == 200) {
            push @held, $s;
            next;
        }
        $refused //= $s;
        last;
    }
}
note(scalar(@held) . ' held subscribers when no new channel was accepted any more');
ok($refused, 'the zone refuses new channels at some point');
my $mark = $t->log_mark;

sub check_refusal {
    my ($label, $status, $headers, $body, $elapsed) = @_;
    is($status, 503, "$label: 503") or diag "body: " . ($body // '');
    like($headers->{'retry-after'} // '', qr/^\d+$/, "$label: Retry-After");
    like($body // '', qr/^[^\n]+\n?$/, "$label: one-line body") or diag "body: " . ($body // '');
    cmp_ok($elapsed, '<', 2, "$label: answered at once (" . sprintf('%.2fs', $elapsed) . ')') if defined $elapsed;
}

check_refusal('the first refused SSE', $refused->status, $refused->headers, $refused->body) if $refused;

# SSE, one new channel and 64 new channels.
for my $n (1, 64) {
    my $t0 = Time::HiRes::time();
    my $s = $t->sse_open('/events?ch=' . new_list($n), timeout => 8);
    my $dt = Time::HiRes::time() - $t0;
    check_refusal("SSE of $n new channel(s)", $s->status, $s->headers, $s->body, $dt);
    ok($s->eof, "SSE of $n new channel(s): the answer is complete (no stream follows)");
    $s->close;
}

# Long-poll (json and raw), one and several new channels: answered at once, and done: on a
# keep-alive connection the next request is answered too (a refused request left parked
# would hold the connection until longpoll_timeout).
for my $case (['/poll', 1], ['/poll', 8], ['/raw', 1]) {
    my ($loc, $n) = @$case;
    my $c = $t->client;
    for my $round (1, 2) {
        my $t0 = Time::HiRes::time();
        my $r = $c->request(GET => "$loc?ch=" . new_list($n), timeout => 10);
        check_refusal("long-poll $loc of $n new channel(s), request $round on one connection",
                      $r->{status}, $r->{headers}, $r->{body}, Time::HiRes::time() - $t0);
    }
    $c->close;
}
my $z = $t->zone_stats('/stats', 'small', port => 1);
is($z->{subscribers}, scalar @held, 'refused requests are not counted as subscribers');

my $since = $t->log_since($mark);
my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $since;
ok(!@bad, 'no [alert]/[crit] line after the refusals') or diag join "\n", @bad[0 .. ($#bad < 4 ? $#bad : 4)];
unlike($since, qr/header already sent/, 'no "header already sent"');

# The flood leaves: subscribing works again, SSE and long-poll.
$_->close for @held;
ok($t->wait_for(sub { my $z = $t->zone_stats('/stats', 'small', port => 1); $z && $z->{subscribers} == 0 }, timeout => 5),
   'the held subscribers are gone');
my $s = $t->sse_open('/events?ch=' . new_list(8));
is($s->status, 200, 'after the flood left: an SSE subscriber of new channels is served');
$s->close;
my $p = $t->poll_start('/poll?ch=back');
ok($t->wait_for(sub { $t->subscribers('back') == 1 }, timeout => 5), 'after the flood left: a long-poll waits');
$t->publish('back', 'hello');
my $r = $p->result(timeout => 5);
is($r->{status}, 200, 'after the flood left: the long-poll gets the message');

done_testing;
