package Model::Http;

=head1 NAME

Model::Http - one non-blocking HTTP/1.x exchange on its own connection, for a select loop

=head1 DESCRIPTION

C<< Model::Http->new(port => $p, method => 'GET', path => '/x', headers => [name => value, ...],
body => $bytes, hold => $n, version => '1.1', rcvbuf => $bytes, on_head => sub {},
on_data => sub { my ($self, $bytes) = @_ }, on_end => sub {}) >> connects at once and
queues the request (with C<Connection: close> on HTTP/1.1). C<hold> keeps the last C<$n>
bytes of the body back until C<release> (a publish that straddles a reload).

The caller's loop selects C<fh> for reading when C<want_read> and for writing when
C<want_write>, and calls C<on_readable> / C<on_writable>. C<pause> / C<resume> stop and
restart reading (the client stalls); C<slow> limits reading to 4 KB per 10 ms (C<next_time>
says when reading may go on). The answer: C<status>, C<headers> (lower-cased names),
C<body> (decoded: chunked or Content-Length or up to EOF; unless C<on_data> takes the bytes),
C<t_send>, C<t_head>, C<t_end>, C<end> (C<clean>: the response ended as framed; C<eof>: the
connection ended without framing; C<error: ...>; C<closed>: by us).

=cut

use strict;
use warnings;
use Socket qw(:all);
use Time::HiRes ();
use Errno ();
use Fcntl ();
use ChannelsTest::Chunked;

sub now { Time::HiRes::time() }

sub connect_tcp {
    my ($port, $rcvbuf) = @_;
    socket(my $s, PF_INET, SOCK_STREAM, 0) or return (undef, "socket: $!");
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, $rcvbuf) if $rcvbuf;
    connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1'))) or return (undef, "connect: $!");
    binmode $s;
    my $fl = fcntl($s, Fcntl::F_GETFL(), 0);
    fcntl($s, Fcntl::F_SETFL(), $fl | Fcntl::O_NONBLOCK());
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    return ($s, undef);
}

sub new {
    my ($class, %o) = @_;
    my $self = bless { %o, in => '', body => '', status => 0, headers => {}, t_send => now(),
                       out => '', held => '', paused => 0 }, $class;
    my ($sock, $err) = connect_tcp($o{port}, $o{rcvbuf});
    if (!$sock) {
        $self->_finish("error: $err");
        return $self;
    }
    $self->{fh} = $sock;
    my $version = $o{version} // '1.1';
    my @h = @{ $o{headers} || [] };
    my $req = "$o{method} $o{path} HTTP/$version\r\nHost: localhost\r\n";
    $req .= "Connection: close\r\n" if $version eq '1.1';
    while (@h) { my ($n, $v) = splice @h, 0, 2; $req .= "$n: $v\r\n" }
    my $body = $o{body};
    $req .= 'Content-Length: ' . length($body) . "\r\n" if defined $body;
    $req .= "\r\n";
    $req .= $body if defined $body;
    if ($o{hold} && defined $body) {
        $self->{held} = substr($req, -$o{hold}, $o{hold}, '');
    }
    $self->{out} = $req;
    $self->{head_only} = $o{method} eq 'HEAD';
    return $self;
}

sub fh         { $_[0]{fh} }
sub done       { defined $_[0]{end} }
sub want_write { my $s = shift; !$s->done && length $s->{out} }
sub want_read  { my $s = shift; !$s->done && !$s->{paused} && (!$s->{slow} || now() >= ($s->{next_read} // 0)) }
sub next_time  { my $s = shift; $s->{slow} && !$s->{paused} && !$s->done ? $s->{next_read} : undef }
sub pause      { $_[0]{paused} = 1 }
sub resume     { $_[0]{paused} = 0 }
sub slow       { $_[0]{slow} = 1 }

sub release {
    my $self = shift;
    $self->{out} .= $self->{held};
    $self->{held} = '';
}

sub on_writable {
    my $self = shift;
    my $n = syswrite($self->{fh}, $self->{out});
    if (!defined $n) {
        return if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
        # the server may have answered and closed already (a 4xx for a body it did not
        # want, a worker going away): read what is there before judging
        $self->{out} = '';
        $self->{write_error} = "$!";
        return;
    }
    substr($self->{out}, 0, $n, '');
}

sub on_readable {
    my $self = shift;
    my $max = $self->{slow} ? 4096 : 262144;
    my $n = sysread($self->{fh}, my $buf, $max);
    if (!defined $n) {
        return if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
        $self->_eof("error: read: $!");
        return;
    }
    $self->{next_read} = now() + 0.01 if $self->{slow};
    if ($n == 0) {
        $self->_eof($self->{write_error} && !$self->{t_head} ? "error: write: $self->{write_error}" : 'eof');
        return;
    }
    $self->_feed($buf);
}

sub _eof {
    my ($self, $how) = @_;
    return if $self->done;
    # a body read up to EOF (no length, not chunked) is complete at EOF
    if ($how eq 'eof' && $self->{t_head} && $self->{mode} eq 'eof') {
        $self->_body(length $self->{in} ? $self->{in} : '');
        $self->{in} = '';
    }
    $self->_finish($how);
}

sub _feed {
    my ($self, $buf) = @_;
    $self->{in} .= $buf;
    if (!$self->{t_head}) {
        return unless $self->{in} =~ /\r?\n\r?\n/;
        my $end = $+[0];
        my $head = substr($self->{in}, 0, $end, '');
        my ($sl, @lines) = split /\r?\n/, $head;
        if (!defined $sl || $sl !~ m{^HTTP/(\d\.\d) (\d{3})}) {
            $self->_finish('error: bad status line ' . ($sl // ''));
            return;
        }
        $self->{status} = $2 + 0;
        for my $l (@lines) {
            next unless $l =~ /^([^:\s]+):[ \t]*(.*?)[ \t]*$/;
            my ($n, $v) = (lc $1, $2);
            $self->{headers}{$n} = exists $self->{headers}{$n} ? "$self->{headers}{$n}, $v" : $v;
        }
        $self->{t_head} = now();
        my $te = $self->{headers}{'transfer-encoding'} // '';
        my $cl = $self->{headers}{'content-length'};
        if ($self->{head_only} || $self->{status} == 204 || $self->{status} == 304) {
            $self->{mode} = 'none';
        } elsif ($te =~ /chunked/i) {
            $self->{mode} = 'chunked';
            $self->{dechunk} = ChannelsTest::Chunked->new;
        } elsif (defined $cl) {
            $self->{mode} = 'length';
            $self->{left} = $cl;
        } else {
            $self->{mode} = 'eof';
        }
        $self->{on_head}->($self) if $self->{on_head};
        if ($self->{mode} eq 'none') {
            $self->_finish('clean');
            return;
        }
    }
    my $mode = $self->{mode};
    if ($mode eq 'chunked') {
        my $data = $self->{dechunk}->feed($self->{in});
        $self->{in} = '';
        $self->_body($data) if length $data;
        if ($self->{dechunk}->error) { $self->_finish("error: chunked: " . $self->{dechunk}->error); return }
        $self->_finish('clean') if $self->{dechunk}->done;
    } elsif ($mode eq 'length') {
        my $take = substr($self->{in}, 0, $self->{left}, '');
        $self->{left} -= length $take;
        $self->_body($take) if length $take;
        $self->_finish('clean') if $self->{left} == 0;
    } else {
        my $take = $self->{in};
        $self->{in} = '';
        $self->_body($take) if length $take;
    }
}

sub _body {
    my ($self, $bytes) = @_;
    if ($self->{on_data}) { $self->{on_data}->($self, $bytes) } else { $self->{body} .= $bytes }
}

sub _finish {
    my ($self, $how) = @_;
    return if $self->done;
    $self->{end} = $how;
    $self->{t_end} = now();
    if ($self->{fh}) { close $self->{fh}; $self->{fh} = undef }
    $self->{on_end}->($self) if $self->{on_end};
}

# Ends the exchange from our side.
sub close { my $self = shift; $self->_finish('closed') }

1;
