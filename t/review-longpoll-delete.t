#!/usr/bin/perl
# Review finding (low): a long-poll client whose answer carried the last messages of a channel
# that was deleted right after them never learns of the deletion (README "Publishing": every subscriber of
# a deleted channel is told; README "Long polling": 410).
#
# A waiting LongpollWaiter collects one pass's entries (on_message): a message, then the
# deletion marker. on_flush() answers 200 with the messages (answer_->n > 0) and drops the
# deletion. The client polls again from the last message's id; by then the channel is gone
# (freed when the waiter left) or its marker is older than the new request's attachment
# (merge_page skips markers `<= attached_at` as "history, not news"), so the new request
# just waits on a fresh, empty channel and ends with 204 at its timeout: the deletion is
# lost to it. (The same holds for an SSE stream that reconnects from an id before the delete.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 1, conf => <<'CONF');
    channel_zone zone=z:1m;
    longpoll_timeout 2s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/poll/(?<ch>[\w.-]+)$ { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$  { publish_channel $ch; }
    }
CONF

my $first = $t->publish('doomed', 'first');
my $p = $t->poll_start('/poll/doomed', cursor => $first);
$t->wait_for(sub { $t->subscribers('doomed') == 1 }, timeout => 5);
# The last message and the delete, in one pipelined write: one delivery pass reads both.
my $c = $t->client(port => 1);
$c->send_raw("POST /pub/doomed HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlast"
           . "DELETE /pub/doomed HTTP/1.1\r\nHost: x\r\n\r\n");
my $r1 = $c->read_response(method => 'POST');
my $r2 = $c->read_response(method => 'DELETE');
is("$r1->{status} $r2->{status}", '201 200', 'a last message, then the channel deleted');
my $a = $p->result(timeout => 5);
note("the waiting long-poll: $a->{status}" . ($a->{json} ? ' with ' . scalar(@{ $a->{json}{messages} }) . ' message(s)' : ''));
my $cursor = $a->{headers}{'last-event-id'};
my $b = $t->poll('/poll/doomed', cursor => $cursor, timeout => 5);
note("the next poll from $cursor: $b->{status}");
ok($a->{status} == 410 || $b->{status} == 410, 'the client learns that its channel was deleted (410)');
done_testing;
