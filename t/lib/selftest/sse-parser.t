#!/usr/bin/perl
# Self-test of t/lib/ChannelsTest/SseParser.pm, the suite's one text/event-stream parser:
# the same blocks whatever the reads' boundaries, the WHATWG line and field rules, and
# what a stream that ends mid-block or on a CR leaves.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use Test::More;
use ChannelsTest::SseParser;

my $stream = ": hello\r\ndata: a\r\ndata:  two spaces\r\nid: 7\r\n\r\n"
           . "event: e1\rdata\rdata: x\r\r"
           . "retry: 900\n\n:ping\n\n"
           . "id: bad\0id\nid: 8\ndata:no space\nweird\n\n"
           . "\n\n"
           . "data: incomplete";

sub summary { [ map { [ $_->{id}, $_->{event}, $_->{data}, $_->{retry}, $_->{ping} ? 'ping' : '' ] } @_ ] }

my $want = [
    [ '7', undef, "a\n two spaces", undef, '' ],
    [ undef, 'e1', "\nx", undef, '' ],
    [ undef, undef, undef, '900', '' ],
    [ undef, undef, undef, undef, 'ping' ],
    [ '8', undef, 'no space', undef, '' ],
];

my $whole = ChannelsTest::SseParser->new(raw => 1);
my @blocks = $whole->feed($stream);
is_deeply(summary(@blocks), $want, 'one read: every block, fields by the WHATWG rules');
is_deeply($blocks[0]{comments}, [' hello'], 'a comment stays with its block');
is($blocks[0]{raw}, ": hello\r\ndata: a\r\ndata:  two spaces\r\nid: 7\r\n\r\n", 'raw: the block as it came');
is_deeply($blocks[4]{fields}, [ [ 'id', "bad\0id" ], [ 'id', '8' ], [ 'data', 'no space' ], [ 'weird', '' ] ],
          'fields in order; an id holding a NUL is only a field');
ok($whole->pending, 'a half-read block is pending');
is_deeply([ $whole->end ], [], 'the end of the stream does not complete a block');

my $bytewise = ChannelsTest::SseParser->new;
my @b2 = map { $bytewise->feed($_) } split //, $stream;
is_deeply(summary(@b2), $want, 'one byte per read: the same blocks');
ok(!exists $b2[0]{raw}, 'raw only when asked for');

my $cr = ChannelsTest::SseParser->new;
is_deeply([ $cr->feed("data: d\r") ], [], 'a CR that is the last byte may be half of a CRLF');
ok($cr->pending, 'so the line waits');
is_deeply(summary($cr->feed("\n")), [], 'it was: CRLF, one line end');
is_deeply(summary($cr->feed("\r")), [], 'a blank line still waiting on a CR');
is_deeply(summary($cr->end), [ [ undef, undef, 'd', undef, '' ] ], 'the end of the stream makes it a line end');

my $partial = ChannelsTest::SseParser->new;
$partial->feed(":one\n:two\n");
is_deeply([ $partial->partial_comments ], [ 'one', 'two' ], 'comments of a half-read block');

is(ChannelsTest::SseParser::client_data("a\r\nb\rc\nd\r\n"), "a\nb\nc\nd\n", 'client_data: every line end is LF');

done_testing;
