#!/usr/bin/perl
# Issue 12, finding 4: a publish that an old worker finishes after `nginx -s reload` reaches
# the new workers' subscribers at once (README "SSE": whichever worker published
# it; "Publishing": ids).
#
# A publish request is started before the reload and its body is only half sent, so the old
# worker is still serving it when the new workers start. Subscribers (SSE and long-poll)
# then attach to the new workers; the rest of the body is sent; the old worker answers 201.
# Every subscriber must get the message within a few seconds, with no later publish to
# carry it. Three rounds (the old worker's number differs between them).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use ChannelsTest qw(json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=straddle:4m history=100 ttl=1h;
    longpoll_timeout 30s;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_ping 0; sse_channel $ch; }
        location ~ ^/poll/(?<ch>[\w.-]+)$   { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%% reuseport;
        client_body_timeout 60s;
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
    }
CONF

for my $round (1 .. 3) {
    subtest "round $round" => sub {
        my $ch = "straddle$round";
        my $body = "published across reload $round";
        my $half = int(length($body) / 2);

        # the publish starts on an old worker: headers and half the body
        my $c = $t->client(port => 1, timeout => 30);
        $c->send_raw("POST /pub/$ch HTTP/1.1\r\nHost: localhost\r\nContent-Length: " . length($body)
                     . "\r\n\r\n" . substr($body, 0, $half));
        my $old = join ',', $t->worker_pids;
        ok($t->reload(wait_old => 0), 'reloaded: new workers run');
        note("old workers $old, new " . join(',', $t->worker_pids));

        # subscribers on the new workers
        my @sse = map { $t->sse_open("/events/$ch") } 1 .. 6;
        is(scalar(grep { $_->status == 200 } @sse), 6, 'six SSE subscribers on the new workers');
        my @polls = map { $t->poll_start("/poll/$ch") } 1 .. 2;
        ok($t->wait_for(sub { $t->subscribers($ch) == 8 }, timeout => 10), 'and two waiting long-polls')
            or diag('subscribers: ' . $t->subscribers($ch));

        # the old worker finishes the publish
        $c->send_raw(substr($body, $half));
        my $r = $c->read_response(method => 'POST', timeout => 20);
        is($r->{status}, 201, 'the old worker answered the publish 201');
        my $id = $r->{json} && $r->{json}{id};
        $c->close;

        my $t0 = time;
        my $left = sub { my $l = $t0 + 5 - time; $l > 0.05 ? $l : 0.05 };   # 5 s for them all
        my $got = 0;
        for my $s (@sse) {
            my $ev = $s->next_event(timeout => $left->());
            $got++ if $ev && ($ev->{id} // '') eq ($id // '') && ($ev->{data} // '') eq $body;
        }
        is($got, 6, 'every SSE subscriber got it, with no later publish')
            or diag(sprintf 'after %.1fs, %d of 6', time - $t0, $got);
        my $answered = 0;
        for my $p (@polls) {
            my $res = $p->result(timeout => $left->());
            my $m = $res->{json} && $res->{json}{messages} && $res->{json}{messages}[0];
            $answered++ if $res->{status} == 200 && $m && $m->{id} eq ($id // '') && $m->{data} eq $body;
        }
        is($answered, 2, 'every waiting long-poll was answered with it');
        $_->close for @sse;
        ok($t->wait_for(sub { my @w = $t->all_worker_pids; @w == 2 }, timeout => 15), 'the old workers exited')
            or diag('workers: ' . join(',', $t->all_worker_pids));
    };
}

done_testing;
