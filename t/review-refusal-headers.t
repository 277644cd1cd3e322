#!/usr/bin/perl
# Review finding (low): the refusals of a long-poll location (404 of channel_existing_only,
# 503 past the idle-channel cap) carry no `Cache-Control: no-cache` (README "Long polling": "Cache-Control:
# no-cache always"), nor the `Last-Event-ID` every long-poll answer carries. A 404 is
# cacheable by default (RFC 9111 §4.2.2, heuristic freshness): a browser or a CDN may keep
# answering 404 for a channel after it was created. send_refusal() / send_unavailable()
# (ngx_http_channels_request.cpp) add only Retry-After. The same holds for SSE's refusals.
#
# Also (low): HEAD on a subscriber location answers 200 where a GET gets 404 under
# channel_existing_only (README "Long polling": HEAD answers "with the headers a GET would"): both handlers
# answer HEAD before the store is asked.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=z:1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/poll/(?<ch>[\w.-]+)$   { channel_existing_only on; longpoll_channel $ch; }
        location ~ ^/events/(?<ch>[\w.-]+)$ { channel_existing_only on; sse_channel $ch; }
        location = /open-multi              { sse_ping 0; sse_channel $arg_ch; }
        location = /poll-multi              { longpoll_channel $arg_ch; }
        location ~ ^/pub/(?<ch>[\w.-]+)$    { publish_channel $ch; }
    }
CONF
$t->allow_log(qr/channel zone is full|too many channels are waited on/);

for my $path ('/poll/nope', '/events/nope') {
    my $r = $t->http(GET => $path);
    is($r->{status}, 404, "GET $path: 404 (channel_existing_only)");
    is($r->{headers}{'cache-control'}, 'no-cache', "GET $path: the 404 is not cacheable (Cache-Control: no-cache)");
    my $h = $t->http(HEAD => $path);
    is($h->{status}, 404, "HEAD $path answers what a GET would (404)");
}
ok(defined $t->http(GET => '/poll/nope')->{headers}{'last-event-id'},
   'the long-poll 404 carries a Last-Event-ID, as every long-poll answer does');

# Fill the idle cap (1/8 of 1 MiB) with waiting subscribers of new channels, 64 at a time.
my @held;
my $n = 0;
while (@held < 200) {
    my $s = $t->sse_open('/open-multi?ch=' . join(',', map { sprintf('w%05d', $n++) } 1 .. 64));
    last unless $s->status == 200;
    push @held, $s;
}
my $r = $t->http(GET => '/poll-multi?ch=' . join(',', map { sprintf('v%05d', $_) } 1 .. 64));
is($r->{status}, 503, 'past the cap: a long-poll of new channels gets 503');
ok($r->{headers}{'retry-after'}, 'with Retry-After');
is($r->{headers}{'cache-control'}, 'no-cache', 'and Cache-Control: no-cache');
$_->close for @held;

done_testing;
