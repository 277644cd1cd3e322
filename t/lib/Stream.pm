# A non-blocking SSE reader for tests that hold many streams at once (fan-out, reload,
# slow consumers): Stream->new($port, $path, headers => {...}, rcvbuf => N) connects and
# sends the request; $s->read takes what the socket has and parses complete events into
# $s->{events}; $s->{head} is set once the response header arrived, $s->{eof} at the end.
package Stream;

use strict;
use warnings;
use IO::Socket::INET;
use Socket ();
use Errno ();

sub new {
    my ($class, $port, $path, %o) = @_;
    my $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!\n";
    # A receive buffer set before connecting also limits the window the client advertises.
    setsockopt($sock, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), $o{rcvbuf}) or die "SO_RCVBUF: $!\n" if $o{rcvbuf};
    connect($sock, Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1'))) or die "connect: $!\n";
    my $req = "GET $path HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n";
    $req .= "$_: $o{headers}{$_}\r\n" for sort keys %{ $o{headers} || {} };
    $req .= "\r\n";
    defined syswrite($sock, $req) or die "write: $!\n";
    $sock->blocking(0);
    return bless { sock => $sock, in => '', head => 0, left => 0, state => 'size', text => '', events => [],
                   eof => 0, ended => 0 }, $class;
}

sub read {
    my $self = shift;
    while (1) {
        my $n = sysread($self->{sock}, $self->{in}, 262144, length $self->{in});
        if (!defined $n) {
            last if $!{EAGAIN} || $!{EWOULDBLOCK};
            next if $!{EINTR};
            $self->{eof} = 1;
            last;
        }
        if ($n == 0) { $self->{eof} = 1; last }
    }
    $self->_process;
}

sub _process {
    my $self = shift;
    if (!$self->{head}) {
        return unless $self->{in} =~ /\r\n\r\n/;
        my $head = substr($self->{in}, 0, $+[0], '');
        ($self->{status}) = $head =~ m{^HTTP/1\.\d (\d{3})};
        $self->{chunked} = $head =~ /^Transfer-Encoding:\s*chunked/mi ? 1 : 0;
        $self->{head} = 1;
    }
    if (!$self->{chunked}) {
        $self->{text} .= $self->{in};
        $self->{in} = '';
    }
    while ($self->{chunked} && length $self->{in}) {
        if ($self->{state} eq 'size') {
            last unless $self->{in} =~ s/^([0-9a-fA-F]+)\r\n//;
            $self->{left} = hex $1;
            $self->{state} = $self->{left} ? 'data' : 'end';
        } elsif ($self->{state} eq 'data') {
            my $take = substr($self->{in}, 0, $self->{left}, '');
            $self->{text} .= $take;
            $self->{left} -= length $take;
            $self->{state} = 'crlf' unless $self->{left};
        } elsif ($self->{state} eq 'crlf') {
            last if length $self->{in} < 2;
            substr($self->{in}, 0, 2, '') eq "\r\n" or die "bad chunk framing\n";
            $self->{state} = 'size';
        } else {
            $self->{ended} = 1;    # last chunk
            last;
        }
    }
    # Events as this module frames them: LF line ends, a blank line after each.
    while ($self->{text} =~ /\n\n/) {
        my $block = substr($self->{text}, 0, $+[0], '');
        my %e;
        for my $line (split /\n/, $block) {
            next if $line =~ /^:/;
            my ($k, $v) = $line =~ /^([^:]*):? ?(.*)$/s;
            if ($k eq 'data') { $e{data} = defined $e{data} ? "$e{data}\n$v" : $v }
            else { $e{$k} = $v }
        }
        push @{ $self->{events} }, \%e if defined $e{data};
    }
}

1;
