package CurlStream;

=head1 NAME

CurlStream - a real HTTP client (curl) in the background, its response read as it comes

=head1 SYNOPSIS

    my $s = CurlStream->new(url => "http://127.0.0.1:$port/events/a", http2 => 1,
                            headers => { 'Last-Event-ID' => $id });
    $s->wait_head(timeout => 5) or die $s->error;
    my $ev = $s->next_event(timeout => 5);     # SSE, parsed by ChannelsTest::SseParser
    my $r  = $s->response(timeout => 5);       # or the whole answer (long-poll)
    $s->pause; $s->resume;                     # SIGSTOP / SIGCONT: the client stops reading
    $s->close;                                 # ends curl (by its pid) and reaps it

=head1 DESCRIPTION

Runs C<curl -sS -i -N> (with C<--http2-prior-knowledge> for h2c, or C<--http1.0>) with
its output on a pipe, and parses the status line and headers curl prints (C<-i>), then
the body: SSE blocks through L<ChannelsTest::SseParser>, or the whole body for C<response>.
C<fh> and C<pump> let a caller's own select loop drive it. C<eof> is set when curl
exits; C<exit_code> is then its exit status (0: the server ended the response cleanly).

=cut

use strict;
use warnings;
use IO::Select;
use POSIX ();
use Time::HiRes ();
use Fcntl ();
use ChannelsTest::SseParser;

sub new {
    my ($class, %o) = @_;
    my @cmd = ('curl', '-sS', '-i', '-N', '--max-time', $o{max_time} // 120);
    push @cmd, '--http2-prior-knowledge' if $o{http2};
    push @cmd, '--http1.0' if $o{http10};
    push @cmd, '--limit-rate', $o{limit_rate} if $o{limit_rate};
    push @cmd, '-X', $o{method} if $o{method};
    push @cmd, '-v' if $o{stderr};
    my %h = %{ $o{headers} || {} };
    push @cmd, '-H', "$_: $h{$_}" for sort keys %h;
    push @cmd, $o{url};
    pipe(my $rd, my $wr) or die "pipe: $!";
    # Until exec the child is a copy of the caller: a signal must not run the caller's
    # handlers there (ChannelsTest's die on TERM: the copy then ran END blocks and global
    # destruction while the caller, closing it, waited in waitpid). TERM, INT and HUP stay
    # blocked across fork until the child has its default handlers.
    my $sigs = POSIX::SigSet->new(POSIX::SIGTERM(), POSIX::SIGINT(), POSIX::SIGHUP());
    my $old = POSIX::SigSet->new;
    POSIX::sigprocmask(POSIX::SIG_BLOCK(), $sigs, $old);
    my $pid = fork;
    if (!defined $pid) {
        my $err = $!;
        POSIX::sigprocmask(POSIX::SIG_SETMASK(), $old);
        die "fork: $err";
    }
    if (!$pid) {
        $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP PIPE);
        POSIX::sigprocmask(POSIX::SIG_SETMASK(), $old);   # a TERM sent meanwhile ends it now
        close $rd;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>&', $wr or POSIX::_exit(127);
        open STDERR, '>', $o{stderr} // '/dev/null';
        exec @cmd or POSIX::_exit(127);
    }
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), $old);
    close $wr;
    binmode $rd;
    my $fl = fcntl($rd, Fcntl::F_GETFL(), 0);
    fcntl($rd, Fcntl::F_SETFL(), $fl | Fcntl::O_NONBLOCK());
    return bless {
        pid => $pid, owner => $$, fh => $rd, raw => '', body => '', head => undef, status => 0, headers => {},
        parser => ChannelsTest::SseParser->new, blocks => [], eof => 0, exit_code => undef, cmd => \@cmd,
    }, $class;
}

sub pid       { $_[0]{pid} }
sub fh        { $_[0]{fh} }
sub status    { $_[0]{status} }
sub headers   { $_[0]{headers} }
sub header    { $_[0]{headers}{ lc $_[1] } }
sub eof       { $_[0]{eof} }
sub exit_code { $_[0]{exit_code} }
sub exit_signal { $_[0]{exit_signal} }
sub clean_exit { my $s = shift; $s->{eof} && !$s->{exit_signal} && defined $s->{exit_code} && $s->{exit_code} == 0 }
sub body      { $_[0]{body} }
sub error     { $_[0]{error} // '' }
sub command   { join ' ', @{ $_[0]{cmd} } }

# Reads what the pipe holds; returns the number of bytes (0 at EOF, undef if none yet).
sub pump {
    my $self = shift;
    return 0 if $self->{eof};
    my $n = sysread($self->{fh}, my $buf, 262144);
    if (!defined $n) {
        return undef if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR};
        $n = 0;
    }
    if ($n == 0) {
        $self->_ended;
        return 0;
    }
    $self->_take($buf);
    return $n;
}

sub _ended {
    my $self = shift;
    $self->{eof} = 1;
    close $self->{fh};
    waitpid($self->{pid}, 0);
    $self->{exit_code} = $? >> 8;
    $self->{exit_signal} = $? & 127;   # killed: not a clean end, whatever the exit code says
    $self->{pid} = undef;
}

sub _take {
    my ($self, $buf) = @_;
    if (!defined $self->{head}) {
        $self->{raw} .= $buf;
        # curl -i prints interim (1xx) heads too; the final one is followed by the body
        while ($self->{raw} =~ /\r?\n\r?\n/) {
            my $end = $+[0];
            my $head = substr($self->{raw}, 0, $end, '');
            my ($sl, @lines) = split /\r?\n/, $head;
            next unless defined $sl && $sl =~ m{^HTTP/[\d.]+ (\d{3})};
            my $st = $1;
            next if $st >= 100 && $st < 200;
            $self->{status} = $st + 0;
            for my $l (@lines) {
                next unless $l =~ /^([^:\s]+):[ \t]*(.*?)[ \t]*$/;
                my ($n, $v) = (lc $1, $2);
                $self->{headers}{$n} = exists $self->{headers}{$n} ? "$self->{headers}{$n}, $v" : $v;
            }
            $self->{head} = $head;
            $buf = $self->{raw};
            $self->{raw} = '';
            last;
        }
        return unless defined $self->{head};
    }
    $self->{body} .= $buf;
    push @{ $self->{blocks} }, $self->{parser}->feed($buf);
}

sub _wait {
    my ($self, $cond, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (!$cond->()) {
        return 0 if $self->{eof};
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        next unless IO::Select->new($self->{fh})->can_read($left);
        $self->pump;
    }
    return 1;
}

sub wait_head {
    my ($self, %o) = @_;
    my $ok = $self->_wait(sub { defined $self->{head} }, $o{timeout} // 10);
    $self->{error} = 'no response head' . ($self->{eof} ? " (curl exited $self->{exit_code})" : '') unless $ok;
    return $ok;
}

# The next SSE block that is not a ping (comment-only), or undef on timeout/EOF.
sub next_event {
    my ($self, %o) = @_;
    my $found;
    $self->_wait(sub {
        while (my $b = shift @{ $self->{blocks} }) {
            next if $b->{ping};
            $found = $b;
            return 1;
        }
        return 0;
    }, $o{timeout} // 5);
    return $found;
}

# The whole response: waits for curl to exit. {status, headers, body, exit_code}
sub response {
    my ($self, %o) = @_;
    $self->_wait(sub { 0 }, $o{timeout} // 10);
    return { status => $self->{status}, headers => $self->{headers}, body => $self->{body},
             exit_code => $self->{exit_code}, eof => $self->{eof} };
}

# SSE blocks parsed since the last call (pings included), for a caller's own loop.
sub take_blocks { my $self = shift; my @b = @{ $self->{blocks} }; $self->{blocks} = []; @b }
sub head_seen   { defined $_[0]{head} }

sub pause  { my $self = shift; kill 'STOP', $self->{pid} if $self->{pid} }
sub resume { my $self = shift; kill 'CONT', $self->{pid} if $self->{pid} }

sub close {
    my $self = shift;
    return if $self->{eof} || $$ != $self->{owner};
    if ($self->{pid}) {
        kill 'CONT', $self->{pid};
        kill 'TERM', $self->{pid};
    }
    $self->_ended;
}

sub DESTROY { my $self = shift; $self->close if $self->{pid} && !$self->{eof} && $$ == $self->{owner} }

1;
