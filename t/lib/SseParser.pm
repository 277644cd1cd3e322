package SseParser;

=head1 NAME

SseParser - incremental text/event-stream parser over bytes (the WHATWG rules)

=head1 SYNOPSIS

    my $p = SseParser->new;
    for my $ev ($p->feed($bytes)) { ... }   # complete blocks, in order

=head1 DESCRIPTION

Lines end in CRLF, CR or LF; a line starting with ":" is a comment; C<field: value>
loses one leading space of the value; a blank line ends a block. C<feed> returns every
block completed by the bytes, as
C<< {id, event, data, retry, comments => [...], fields => [[name, value], ...]} >>:
C<data> is the data lines joined with "\n" (undef when the block has none), C<id>,
C<event> and C<retry> undef when absent. Blocks holding only comments (pings) come back
too, with C<ping> set. Bytes stay bytes (no UTF-8 decoding), so binary payloads compare
exactly. C<pending> is true while a block is half read (a stream that ends there lost it).

=cut

use strict;
use warnings;

sub new { bless { text => '', cur => undef }, shift }

sub pending { my $self = shift; defined $self->{cur} || length $self->{text} }

sub feed {
    my ($self, $bytes) = @_;
    $self->{text} .= $bytes;
    my @out;
    while ($self->{text} =~ /\r\n|\r|\n/) {
        my ($start, $end) = ($-[0], $+[0]);
        # A CR at the very end may be the first half of a CRLF: wait for the next byte.
        last if substr($self->{text}, $start, 1) eq "\r" && $end == length $self->{text};
        my $line = substr($self->{text}, 0, $start);
        substr($self->{text}, 0, $end, '');
        my $b = $self->_line($line);
        push @out, $b if $b;
    }
    return @out;
}

sub _line {
    my ($self, $line) = @_;
    my $b = $self->{cur} //= { fields => [], comments => [] };
    if ($line eq '') {
        $self->{cur} = undef;
        return undef unless @{ $b->{fields} } || @{ $b->{comments} };
        $b->{data} = join "\n", @{ $b->{data_lines} } if $b->{data_lines};
        delete $b->{data_lines};
        $b->{ping} = 1 unless @{ $b->{fields} };
        return $b;
    }
    if (substr($line, 0, 1) eq ':') {
        push @{ $b->{comments} }, substr($line, 1);
        return undef;
    }
    my ($name, $value) = $line =~ /^([^:]*)(?::(.*))?$/s;
    $value //= '';
    $value =~ s/^ //;
    push @{ $b->{fields} }, [ $name, $value ];
    if ($name eq 'data') {
        push @{ $b->{data_lines} }, $value;
    } elsif ($name eq 'id' || $name eq 'event' || $name eq 'retry') {
        $b->{$name} = $value;
    }
    return undef;
}

# The data an SSE client sees for a published payload: lines split on CRLF, CR or LF
# (SPEC section 4) and joined with "\n".
sub client_data {
    my $data = shift;
    return join "\n", split /\r\n|\r|\n/, $data, -1;
}

1;
