package ChannelsTest::Chunked;

=head1 NAME

ChannelsTest::Chunked - incremental decoder of an HTTP/1.1 chunked body

=head1 SYNOPSIS

    my $dec = ChannelsTest::Chunked->new;
    my $bytes = $dec->feed($raw);     # the body bytes these raw bytes completed
    $dec->done;                       # the last chunk and trailer were read
    $dec->leftover;                   # what came after the body (the next response)
    $dec->error;                      # why the framing is wrong (then nothing more is decoded)

=head1 DESCRIPTION

Chunk extensions and trailer fields are passed over; a bare LF is taken for CRLF.

=cut

use strict;
use warnings;

sub new { bless { state => 'size', in => '', left => 0, leftover => '' }, shift }
sub done     { $_[0]{state} eq 'done' }
sub leftover { $_[0]{leftover} }
sub error    { $_[0]{error} }
# Feeds raw bytes; returns the decoded bytes available so far.
sub feed {
    my ($self, $bytes) = @_;
    $self->{in} .= $bytes;
    my $out = '';
    while (1) {
        my $st = $self->{state};
        if ($st eq 'size') {
            if ($self->{in} =~ s/^([0-9a-fA-F]+)[^\r\n]*\r?\n//) {
                $self->{left} = hex $1;
                $self->{state} = $self->{left} ? 'data' : 'trailer';
            } elsif ($self->{in} =~ /\n/ || length $self->{in} > 1024) {
                $self->{error} = 'bad chunk size line: ' . substr($self->{in}, 0, 40);
                last;
            } else {
                last;
            }
        } elsif ($st eq 'data') {
            last unless length $self->{in};
            my $take = substr($self->{in}, 0, $self->{left}, '');
            $out .= $take;
            $self->{left} -= length $take;
            $self->{state} = 'crlf' if !$self->{left};
        } elsif ($st eq 'crlf') {
            if ($self->{in} =~ s/^\r?\n//) {
                $self->{state} = 'size';
            } elsif (length $self->{in} >= 2 || (length $self->{in} == 1 && $self->{in} ne "\r")) {
                $self->{error} = 'missing CRLF after chunk data';
                last;
            } else {
                last;
            }
        } elsif ($st eq 'trailer') {
            if ($self->{in} =~ s/^\r?\n//) {
                $self->{state} = 'done';
                $self->{leftover} = $self->{in};
                $self->{in} = '';
            } elsif ($self->{in} =~ s/^[^\r\n]+\r?\n//) {
                # a trailer field: ignored
            } else {
                last;
            }
        } else {
            last;
        }
    }
    return $out;
}

1;
