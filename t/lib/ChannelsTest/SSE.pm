package ChannelsTest::SSE;

=head1 NAME

ChannelsTest::SSE - an SSE subscriber over a raw socket, read by deadline or, many at once, as bytes come

=head1 DESCRIPTION

C<< $t->sse_open >> and C<< $t->sse_start >> of L<ChannelsTest> return these; the methods
are documented there ("SSE"). Event streams are parsed by L<ChannelsTest::SseParser>.
Without a C<$t>: C<< ChannelsTest::SSE->open(port => $port, path => $path, %opt) >> and
C<< ChannelsTest::SSE->start(...) >> take a port number.

=cut

use strict;
use warnings;
use Time::HiRes ();
use ChannelsTest::Conn;
use ChannelsTest::Chunked;
use ChannelsTest::SseParser;

# Connects and sends the request; reads nothing. Streams read many at once keep only their
# events (no raw bytes: a test may hold hundreds of megabytes of them).
sub start {
    my ($class, %o) = @_;
    my $c = ChannelsTest::Conn->new(port => $o{port}, timeout => $o{timeout}, rcvbuf => $o{rcvbuf});
    my %h = (Accept => 'text/event-stream');
    %h = (%h, %{ $o{headers} }) if ref $o{headers} eq 'HASH';
    my $method = $o{method} // 'GET';
    $c->send_request($method, $o{path}, headers => \%h, version => $o{version});
    return bless {
        conn => $c, fd => fileno($c->socket), method => $method, path => $o{path},
        parser => ChannelsTest::SseParser->new(raw => $o{raw}), raw => $o{raw} ? '' : undef,
        blocks => [], comments => [], pending_comments => [], received => [],
        eof => 0, clean_end => 0, timed_out => 0, last_id => undef,
    }, $class;
}

sub open {
    my ($class, %o) = @_;
    my $self = $class->start(%o, raw => 1);
    my $c = $self->{conn};
    my $deadline = Time::HiRes::time() + ($o{timeout} // 10);
    my $r = $c->read_head($deadline);
    if (!$r) {
        $self->{status} = 0;
        $self->{error} = $c->{head_error};
        $self->{eof} = 1;
        return $self;
    }
    $self->_head($r);
    if ($r->{status} != 200 || $self->{method} eq 'HEAD') {
        # Not a stream: read the whole body (none for HEAD).
        $self->{body} = $self->{method} eq 'HEAD' ? '' : $self->_read_rest($deadline);
        $self->{eof} = 1;
        $self->{clean_end} = 1;
        return $self;
    }
    $self->_consume;
    return $self;
}

sub _head {
    my ($self, $r) = @_;
    $self->{status} = $r->{status};
    $self->{headers} = $r->{headers};
    $self->{response} = $r;
    if (($r->{headers}{'transfer-encoding'} // '') =~ /chunked/i) {
        $self->{chunked} = ChannelsTest::Chunked->new;
    } elsif (defined $r->{headers}{'content-length'}) {
        $self->{remaining} = $r->{headers}{'content-length'};
    }
}

sub _read_rest {
    my ($self, $deadline) = @_;
    my $c = $self->{conn};
    if (my $dec = $self->{chunked}) {
        my $out = '';
        while (1) {
            $out .= $dec->feed($c->{buf});
            $c->{buf} = '';
            last if $dec->done || $dec->error;
            last unless $c->fill($deadline);
        }
        return $out;
    }
    if (defined(my $cl = $self->{remaining})) {
        while (length $c->{buf} < $cl) { last unless $c->fill($deadline) }
        return substr($c->{buf}, 0, $cl);
    }
    1 while $c->fill($deadline);
    return $c->{buf};
}

sub status    { $_[0]{status} }
sub headers   { $_[0]{headers} || {} }
sub header    { my ($self, $n) = @_; $self->headers->{ lc $n } }
sub body      { $_[0]{body} }
sub error     { $_[0]{error} }
sub eof       { $_[0]{eof} }
sub clean_end { $_[0]{clean_end} }
sub timed_out { $_[0]{timed_out} }
sub raw       { $_[0]{raw} }
sub last_id   { $_[0]{last_id} }
sub retry     { $_[0]{retry} }
sub comments  { my $self = shift; (@{ $self->{comments} }, $self->{parser}->partial_comments) }
sub socket    { $_[0]{conn}->socket }
sub close     { my $self = shift; $self->{conn}->close; $self->{eof} = 1 }
sub started   { defined $_[0]{status} }
sub received  { $_[0]{received} }

# Moves bytes from the connection buffer through the body decoding into parsed blocks.
sub _consume {
    my $self = shift;
    my $c = $self->{conn};
    my $data;
    if (my $dec = $self->{chunked}) {
        $data = $dec->feed($c->{buf});
        $c->{buf} = '';
        if ($dec->done) {
            $self->{eof} = $self->{clean_end} = 1;
        } elsif ($dec->error) {
            $self->{error} = $dec->error;
            $self->{eof} = 1;
        }
    } elsif (defined $self->{remaining}) {
        $data = substr($c->{buf}, 0, $self->{remaining}, '');
        $self->{remaining} -= length $data;
        $self->{eof} = $self->{clean_end} = 1 if $self->{remaining} == 0;
    } else {
        $data = $c->{buf};
        $c->{buf} = '';
    }
    $self->{eof} = 1 if $c->{eof};
    $self->{raw} .= $data if defined $self->{raw};
    my $p = $self->{parser};
    for my $b ($p->feed($data), $self->{eof} ? $p->end : ()) {
        push @{ $self->{comments} }, @{ $b->{comments} };
        push @{ $self->{blocks} }, $b;
    }
}

sub _finish_block {
    my ($self, $b) = @_;
    $self->{last_id} = $b->{id} if defined $b->{id};
    $self->{retry} = $b->{retry} if defined $b->{retry};
    return $b;
}

sub _next {
    my ($self, $want_event, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // 5);
    $self->{timed_out} = 0;
    while (1) {
        while (my $b = shift @{ $self->{blocks} }) {
            if ($want_event && $b->{ping}) {
                # comment-only blocks (pings): attached to the next event, not returned alone
                push @{ $self->{pending_comments} }, @{ $b->{comments} };
                next;
            }
            if ($want_event && @{ $self->{pending_comments} }) {
                unshift @{ $b->{comments} }, @{ $self->{pending_comments} };
                $self->{pending_comments} = [];
            }
            return $self->_finish_block($b);
        }
        return undef if $self->{eof};
        my $n = $self->{conn}->fill($deadline);
        if (!defined $n) {
            $self->{timed_out} = 1;
            return undef;
        }
        $self->_consume;
    }
}

sub next_event { my $self = shift; $self->_next(1, @_) }
sub next_block { my $self = shift; $self->_next(0, @_) }

# Collects every event that arrives within the timeout (or until EOF).
sub events_for { my ($self, %o) = @_; $self->events_until(sub { 0 }, timeout => $o{timeout} // 1) }

sub events_until {
    my ($self, $until, %o) = @_;
    my $match = ref $until eq 'CODE' ? $until : sub { defined $_[0]{data} && $_[0]{data} eq $until };
    my $deadline = Time::HiRes::time() + ($o{timeout} // 5);
    my @ev;
    while (1) {
        my $left = $deadline - Time::HiRes::time();
        last if $left <= 0;
        my $e = $self->next_event(timeout => $left) or last;
        push @ev, $e;
        last if $match->($e);
    }
    return @ev;
}

sub wait_eof {
    my ($self, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // 5);
    while (!$self->{eof}) {
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        $self->next_block(timeout => $left);
    }
    return 1;
}

# ---------------------------------------------------------------- many streams at once

# Takes what the socket holds, never waiting: the response header once it is whole, then the
# events, those with data appended to received(). Dies on a body that is not HTTP/1.1 framing.
sub read {
    my $self = shift;
    my $c = $self->{conn};
    $c->drain;
    if (!$self->started) {
        my $r = $c->take_head;
        if (!$r) {
            die "SSE $self->{path}: $c->{head_error}\n" if defined $r;
            $self->{eof} = 1 if $c->{eof};
            return;
        }
        $self->_head($r);
    }
    $self->_consume;
    die "SSE $self->{path}: bad chunked framing: $self->{error}\n" if $self->{error};
    for my $b (splice @{ $self->{blocks} }) {
        $self->_finish_block($b);
        push @{ $self->{received} }, { id => $b->{id}, event => $b->{event}, data => $b->{data}, retry => $b->{retry} }
            if defined $b->{data};
    }
}

# Reads the streams that have something, waiting at most $wait seconds for one; returns those
# it read (the ended ones are left alone).
sub read_ready {
    my ($streams, $wait) = @_;
    my @open = grep { !$_->{eof} } @$streams;
    my $bits = '';
    vec($bits, $_->{fd}, 1) = 1 for @open;
    my $n = select(my $ready = $bits, undef, undef, $wait);
    my @ready = $n > 0 ? grep { vec($ready, $_->{fd}, 1) } @open : ();
    $_->read for @ready;
    return @ready;
}

# Reads the streams until $done->() holds (true) or the timeout passes (false).
sub pump {
    my ($streams, $done, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (1) {
        return 1 if $done->();
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        read_ready($streams, $left < 0.1 ? $left : 0.1);
    }
}

1;
