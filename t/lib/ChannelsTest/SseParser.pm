package ChannelsTest::SseParser;

=head1 NAME

ChannelsTest::SseParser - the tests' one text/event-stream parser (the WHATWG rules), over bytes

=head1 SYNOPSIS

    my $p = ChannelsTest::SseParser->new(raw => 1);
    for my $b ($p->feed($bytes)) { ... }   # the blocks these bytes completed, in order
    my @last = $p->end;                    # the stream ended: a final CR still ends its line
    my $data = ChannelsTest::SseParser::client_data($published);

=head1 DESCRIPTION

Used by every SSE reader of the suite: L<ChannelsTest::SSE> (raw sockets),
L<CurlStream> (curl's output) and the model test's clients (F<t/lib/Model/Runner.pm>).

Lines end in CRLF, CR or LF (a CR that is the last byte so far waits for the next one,
which may be the LF of a CRLF); a line starting with ":" is a comment; C<field: value>
loses one leading space of the value; a blank line ends a block. A block is
C<< {id, event, data, retry, comments => [...], fields => [[name, value], ...], raw} >>:
C<data> is the data lines joined with "\n" (undef when the block has none); C<id>,
C<event> and C<retry> are undef when absent, and an C<id> value holding a NUL is ignored
(it stays in C<fields>), as EventSource ignores it; with C<< new(raw => 1) >>, C<raw> is
the block's bytes as they came, line ends included. A block of comments only (a ping) has C<ping> set; a blank line
with nothing before it is no block. Bytes stay bytes (no UTF-8 decoding), so binary
payloads compare exactly. What a stream that ends mid-block held is never a block.

C<pending> is true while a block is half read (a stream that ends there lost it);
C<partial_comments> lists the comment lines of that half-read block.

C<client_data($data)>: the data an EventSource gives back for a published payload: lines
split on CRLF, CR or LF and joined with "\n" (README.md, "SSE (`sse_channel`)").

=cut

use strict;
use warnings;

sub new { my ($class, %o) = @_; bless { text => '', cur => undef, keep_raw => $o{raw} }, $class }

sub pending { my $self = shift; defined $self->{cur} || length $self->{text} }

sub partial_comments { my $self = shift; $self->{cur} ? @{ $self->{cur}{comments} } : () }

sub feed {
    my ($self, $bytes) = @_;
    # A long line comes in many reads: look for line ends only when one may have come.
    my $cr_waits = $self->{text} =~ /\r\z/;
    $self->{text} .= $bytes;
    return () unless $cr_waits || $bytes =~ /[\r\n]/;
    return $self->_lines(0);
}

sub end { $_[0]->_lines(1) }

# Takes the complete lines of the text into blocks (one loop, no call per line: a test may
# read hundreds of thousands of events); returns the blocks they completed.
sub _lines {
    my ($self, $at_end) = @_;
    my $text = \$self->{text};
    my $keep_raw = $self->{keep_raw};
    my ($used, @out) = (0);
    pos($$text) = 0;
    while ($$text =~ /\G([^\r\n]*)(\r\n?|\n)/gc) {
        my ($line, $stop) = ($1, pos $$text);
        last if !$at_end && $2 eq "\r" && $stop == length $$text;
        my $b = $self->{cur} //= { fields => [], comments => [], $keep_raw ? (raw => '') : () };
        $b->{raw} .= substr($$text, $used, $stop - $used) if $keep_raw;
        $used = $stop;
        if ($line eq '') {
            undef $self->{cur};
            push @out, _block($b) if @{ $b->{fields} } || @{ $b->{comments} };
            next;
        }
        my $colon = index($line, ':');
        if ($colon == 0) {
            push @{ $b->{comments} }, substr($line, 1);
            next;
        }
        my ($name, $value) = $colon < 0 ? ($line, '') : (substr($line, 0, $colon), substr($line, $colon + 1));
        substr($value, 0, 1, '') if substr($value, 0, 1) eq ' ';
        push @{ $b->{fields} }, [ $name, $value ];
        if ($name eq 'data') {
            push @{ $b->{data_lines} }, $value;
        } elsif ($name eq 'id') {
            $b->{id} = $value if index($value, "\0") < 0;
        } elsif ($name eq 'event' || $name eq 'retry') {
            $b->{$name} = $value;
        }
    }
    substr($$text, 0, $used, '');
    return @out;
}

sub _block {
    my $b = shift;
    if (my $lines = delete $b->{data_lines}) {
        $b->{data} = @$lines == 1 ? $lines->[0] : join "\n", @$lines;    # one line: no copy
    }
    $b->{ping} = 1 unless @{ $b->{fields} };
    return $b;
}

sub client_data {
    my $data = shift;
    return join "\n", split /\r\n|\r|\n/, $data, -1;
}

1;
