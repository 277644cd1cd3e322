package ChannelsTest::Conn;

=head1 NAME

ChannelsTest::Conn - one client connection of the test harness: requests out, HTTP/1.x answers in

=head1 DESCRIPTION

What C<< $t->client >>, C<< $t->http >>, C<< $t->raw_request >> and C<< $t->request_start >>
of L<ChannelsTest> run on; its public methods are documented there ("HTTP"). For the
other modules of the harness: C<fill($deadline)> (wait for bytes), C<drain> (take what
the socket holds, never waiting), C<read_head($deadline)> and C<take_head> (the response
header, waiting or not), C<send_request>; the buffer is C<< $c->{buf} >>.

C<ChannelsTest::Conn::json_decode($bytes)> is the JSON decoding every answer gets
(undef if not JSON).

=cut

use strict;
use warnings;
use IO::Socket::INET;
use IO::Select;
use Socket ();
use Time::HiRes ();
use Errno ();
use JSON::PP ();
use ChannelsTest::Chunked;

my $JSON = JSON::PP->new->utf8->allow_nonref;

sub json_decode { my $j = eval { $JSON->decode($_[0]) }; $j }

sub new {
    my ($class, %o) = @_;
    my $timeout = $o{timeout} // 10;
    my $sock = IO::Socket::INET->new(Proto => 'tcp', Timeout => $timeout) or die "socket: $!\n";
    # Set before connect(): the window the client advertises is sized from it then.
    setsockopt($sock, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), $o{rcvbuf}) or die "SO_RCVBUF: $!\n"
        if $o{rcvbuf};
    my $addr = Socket::pack_sockaddr_in($o{port}, Socket::inet_aton($o{host} // '127.0.0.1'));
    $sock->connect($addr) or die "connect to port $o{port}: $!\n";
    binmode $sock;
    $sock->blocking(0);
    return bless { sock => $sock, buf => '', eof => 0, timeout => $timeout, port => $o{port} }, $class;
}

sub socket { $_[0]{sock} }
sub closed { $_[0]{eof} }

sub close {
    my $self = shift;
    if ($self->{sock}) {
        CORE::close($self->{sock});
        $self->{sock} = undef;
    }
    $self->{eof} = 1;
}

sub send_raw {
    my ($self, $bytes, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // $self->{timeout});
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($self->{sock}, $bytes, 65536, $off);
        if (defined $n) {
            $off += $n;
            next;
        }
        if (!$!{EAGAIN} && !$!{EWOULDBLOCK} && !$!{EINTR}) {
            $self->{write_error} = "$!";
            return 0;
        }
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        IO::Select->new($self->{sock})->can_write($left);
    }
    return 1;
}

# Reads what is available within the deadline (past it, what is there already): >0 bytes
# appended, 0 at EOF, undef on timeout.
sub fill {
    my ($self, $deadline) = @_;
    return 0 if $self->{eof};
    my $sel = IO::Select->new($self->{sock});
    while (1) {
        my $left = $deadline - Time::HiRes::time();
        if (!$sel->can_read($left > 0 ? $left : 0)) {
            return undef if Time::HiRes::time() >= $deadline;
            next;
        }
        my $n = sysread($self->{sock}, $self->{buf}, 262144, length $self->{buf});
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
            $self->{read_error} = "$!";
            $self->{eof} = 1;
            return 0;
        }
        if ($n == 0) {
            $self->{eof} = 1;
            return 0;
        }
        return $n;
    }
}

# Takes what the socket holds now, never waiting: the bytes appended (0 if none); sets eof.
sub drain {
    my $self = shift;
    my $got = 0;
    while (!$self->{eof}) {
        my $n = sysread($self->{sock}, $self->{buf}, 262144, length $self->{buf});
        if (!defined $n) {
            next if $!{EINTR};
            last if $!{EAGAIN} || $!{EWOULDBLOCK};
            $self->{read_error} = "$!";
        }
        $self->{eof} = 1 unless $n;
        $got += $n // 0;
    }
    return $got;
}

sub _build_request {
    my ($self, $method, $path, %o) = @_;
    my @hdr;
    if (ref $o{headers} eq 'ARRAY') {
        my @h = @{ $o{headers} };
        push @hdr, [ splice(@h, 0, 2) ] while @h;
    } elsif (ref $o{headers} eq 'HASH') {
        push @hdr, [ $_, $o{headers}{$_} ] for sort keys %{ $o{headers} };
    }
    my %have = map { lc($_->[0]) => 1 } @hdr;
    my $body = $o{body};
    $body = '' if !defined $body && $method =~ /^(?:POST|PUT)$/;
    my @def;
    push @def, [ Host => 'localhost' ] unless $have{host};
    push @def, [ Connection => 'close' ] if $o{close} && !$have{connection};
    if (defined $body) {
        if ($o{chunked}) {
            push @def, [ 'Transfer-Encoding' => 'chunked' ] unless $have{'transfer-encoding'};
            my $size = $o{chunk_size} || 8192;
            my $enc = '';
            for (my $i = 0; $i < length $body; $i += $size) {
                my $piece = substr($body, $i, $size);
                $enc .= sprintf("%x\r\n", length $piece) . $piece . "\r\n";
            }
            $body = $enc . "0\r\n\r\n";
        } elsif (!$have{'content-length'}) {
            push @def, [ 'Content-Length' => length $body ];
        }
    }
    my $version = $o{version} // '1.1';
    my $req = "$method $path HTTP/$version\r\n";
    $req .= "$_->[0]: $_->[1]\r\n" for @def, @hdr;
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

sub send_request {
    my ($self, $method, $path, %o) = @_;
    return $self->send_raw($self->_build_request($method, $path, %o), timeout => $o{timeout});
}

sub request {
    my ($self, $method, $path, %o) = @_;
    return _fail('connection closed') if !$self->{sock};
    my $sent = $self->send_request($method, $path, %o);
    # Even if writing failed (e.g. a 413 answered early), a response may be there.
    my $r = $self->read_response(method => $method, timeout => $o{timeout});
    $r->{error} //= "write failed: $self->{write_error}" if !$sent && !$r->{status};
    return $r;
}

sub _fail {
    return { status => 0, reason => '', error => shift, headers => {}, header_list => [], body => '' };
}

# Reads one complete response.
sub read_response {
    my ($self, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // $self->{timeout});
    my $method = $o{method} // 'GET';
    my $r;
    while (1) {
        $r = $self->read_head($deadline) or return _fail($self->{head_error});
        last unless $r->{status} >= 100 && $r->{status} < 200 && $r->{status} != 101;
    }
    my $need_body = !($method eq 'HEAD' || $r->{status} == 204 || $r->{status} == 304);
    $r->{body} = '';
    return $r unless $need_body;
    my $te = $r->{headers}{'transfer-encoding'} // '';
    my $cl = $r->{headers}{'content-length'};
    if ($te =~ /chunked/i) {
        my $dec = ChannelsTest::Chunked->new;
        while (1) {
            $r->{body} .= $dec->feed($self->{buf});
            $self->{buf} = '';
            if ($dec->{error}) { $r->{error} = "bad chunked encoding: $dec->{error}"; $r->{status} = 0; return $r }
            if ($dec->done) { $self->{buf} = $dec->leftover; last }
            my $n = $self->fill($deadline);
            if (!$n) {
                $r->{error} = defined $n ? 'connection closed inside chunked body' : 'timeout reading body';
                $r->{status} = 0;
                return $r;
            }
        }
    } elsif (defined $cl) {
        while (length $self->{buf} < $cl) {
            my $n = $self->fill($deadline);
            if (!$n) {
                $r->{error} = defined $n ? 'connection closed before Content-Length' : 'timeout reading body';
                $r->{body} = $self->{buf};
                $r->{status} = 0;
                return $r;
            }
        }
        $r->{body} = substr($self->{buf}, 0, $cl, '');
    } else {
        while (1) {
            my $n = $self->fill($deadline);
            last if defined $n && $n == 0;
            if (!defined $n) {
                $r->{error} = 'timeout reading body to EOF';
                $r->{body} = $self->{buf};
                $r->{status} = 0;
                return $r;
            }
        }
        $r->{body} = $self->{buf};
        $self->{buf} = '';
    }
    if (length $r->{body} && ($r->{headers}{'content-type'} // '') =~ m{[/+]json\b}) {
        $r->{json} = json_decode($r->{body});
    }
    return $r;
}

# Reads and parses a response header; leaves the rest in the buffer.
sub read_head {
    my ($self, $deadline) = @_;
    while (1) {
        my $r = $self->take_head;
        return $r || undef if defined $r;
        my $n = $self->fill($deadline);
        if (!$n) {
            $self->{head_error} = defined $n
                ? 'connection closed before a response header' . (length $self->{buf} ? " (got: $self->{buf})" : '')
                : 'timeout waiting for a response header';
            return undef;
        }
    }
}

# The response header if the buffer holds a whole one (taken out of it), undef if not yet,
# 0 if it is not HTTP (head_error says why).
sub take_head {
    my $self = shift;
    return undef unless $self->{buf} =~ /\r?\n\r?\n/;
    my $head = substr($self->{buf}, 0, $+[0], '');
    my ($sl, @lines) = split /\r?\n/, $head;
    unless ($sl =~ m{^HTTP/(\d\.\d) (\d{3})(?: (.*))?$}) {
        $self->{head_error} = "bad status line: $sl";
        return 0;
    }
    my $r = { version => $1, status => $2 + 0, reason => $3 // '', headers => {}, header_list => [] };
    for my $l (@lines) {
        next unless $l =~ /^([^:\s]+):[ \t]*(.*?)[ \t]*$/;
        my ($n, $v) = (lc $1, $2);
        push @{ $r->{header_list} }, [ $1, $v ];
        $r->{headers}{$n} = exists $r->{headers}{$n} ? "$r->{headers}{$n}, $v" : $v;
    }
    return $r;
}

1;
