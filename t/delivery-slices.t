#!/usr/bin/perl
# A delivery pass writes to at most 1024 subscribers before letting the event loop run, so
# publishes are taken in the middle of a large fan-out and their messages join the writes
# still to come (issue 5). One worker holds 2500 SSE streams and 1500 waiting long-polls on
# one channel while 40 messages are published back to back: every stream gets all 40 in
# order, once; every long-poll answer is the first messages in order with their data intact
# (a waiter queued in one pass and answered after later passes still reads that pass's
# messages); a second round of long-polls from their cursors gets the rest.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_cmp);

my $SSE  = 2500;
my $POLL = 1500;
my $MSGS = 40;

my $t = ChannelsTest->new(workers => 1, worker_connections => $SSE + 2 * $POLL + 256, conf => <<'CONF');
    channel_zone zone=wide:16m history=1000 ttl=1h;
    longpoll_timeout 60s;
    server {
        listen 127.0.0.1:%%PORT_0%% backlog=4096;
        location ~ ^/sse/(?<ch>[^/]+)$  { sse_channel $ch; }
        location ~ ^/poll/(?<ch>[^/]+)$ { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$  { publish_channel $ch; }
    }
CONF

# The channel exists with one message, so every waiter's cursor is its id.
my $pub = $t->client(port => 1);
my $start = $t->publish('wide', 'start', client => $pub);

my @streams = map { $t->sse_start('/sse/wide', headers => { 'Last-Event-ID' => $start }) } 1 .. $SSE;
my @polls = map { $t->poll_start('/poll/wide', cursor => $start) } 1 .. $POLL;
ok($t->wait_for(sub { $t->subscribers('wide') == $SSE + $POLL }, timeout => 30),
   "one worker holds $SSE streams and $POLL waiting long-polls") or diag('subscribers: ' . $t->subscribers('wide'));

my @sent = map { my $d = "m$_-" . ('x' x ($_ * 7)); { id => $t->publish('wide', $d, client => $pub), data => $d } } 1 .. $MSGS;
ok((grep { id_cmp($sent[$_ - 1]{id}, $sent[$_]{id}) < 0 } 1 .. $#sent) == $#sent, 'ids increase');

ok(ChannelsTest::SSE::pump(\@streams, sub { !grep { !$_->eof && @{ $_->received } < $MSGS } @streams }, 60),
   "every stream received $MSGS events");
my @want = map { "$_->{id} $_->{data}" } @sent;
my $bad_streams = grep {
    my @got = map { ($_->{id} // '') . ' ' . ($_->{data} // '') } @{ $_->received };
    "@got" ne "@want"
} @streams;
is($bad_streams, 0, 'every stream: all messages, in order, once, with their ids');

my $deadline = Time::HiRes::time() + 60;
my @answers = map { my $left = $deadline - Time::HiRes::time(); $_->result(timeout => $left > 0.01 ? $left : 0.01) } @polls;
is(scalar(grep { !$_->{status} } @answers), 0, 'every long-poll answered');
my (%sizes, $bad, @second);
for my $r (@answers) {
    my ($status, $lei, $body) = ($r->{status}, $r->{headers}{'last-event-id'}, $r->{body} // '');
    my $j = $status == 200 ? $r->{json} : undef;
    my @got = $j && ref $j->{messages} eq 'ARRAY' ? @{ $j->{messages} } : ();
    my $n = @got;
    my $ok = $n >= 1 && $n <= $MSGS && defined $lei && $lei eq $sent[$n - 1]{id}
        && !grep { ($got[$_]{id} // '') ne $sent[$_]{id} || ($got[$_]{data} // '') ne $sent[$_]{data} } 0 .. $n - 1;
    if (!$ok) {
        diag("long-poll answer: $status " . substr($body, 0, 200)) unless $bad++;
        next;
    }
    $sizes{$n}++;
    push @second, $n;
}
is($bad // 0, 0, 'every long-poll answer: the first messages after its cursor, in order, data intact');
note('messages per first long-poll answer: ' . join(', ', map { "$_ x$sizes{$_}" } sort { $a <=> $b } keys %sizes));

# The rest, from each answer's cursor (a sample, so the test stays quick).
my @sample = grep { defined && $_ < $MSGS } @second[0 .. 99];
my $rest_ok = 0;
for my $n (@sample) {
    my $r = $t->poll('/poll/wide', cursor => $sent[$n - 1]{id}, timeout => 10);
    my @got = $r->{json} ? map { $_->{data} } @{ $r->{json}{messages} } : ();
    $rest_ok++ if "@got" eq join(' ', map { $_->{data} } @sent[$n .. $#sent]);
}
is($rest_ok, scalar @sample, 'a poll from an answer\'s cursor gets the rest (' . scalar(@sample) . ' tried)');

$_->close for @streams;
done_testing;
