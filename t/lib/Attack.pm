package Attack;

=head1 NAME

Attack - measuring helpers (memory, CPU, latency, load) for the t/attack-*.t files and other tests

=head1 DESCRIPTION

The attack files (issue 11) hold the bounds of README.md "What one client can cost"; the
functions below measure them.

=head1 FUNCTIONS

=over

=item C<anon_kb(@pids)>

Sum of C<RssAnon> (KiB) of the processes: the worker's private memory (heap, buffers),
without the shared zone (C<RssShmem>) and the mapped files. That is what a client can make
a worker hold.

=item C<rss_kb(@pids)>

Sum of C<VmRSS> (KiB).

=item C<cpu_ticks(@pids)>

utime + stime of the processes in clock ticks (C<POSIX::sysconf(_SC_CLK_TCK)> per second).

=item C<settle_kb($sub, timeout => 10, quiet => 0.5)>

Calls C<$sub> (a memory reading) until it stops changing by more than 1 % for C<quiet>
seconds or the deadline passes; returns the last reading.

=item C<percentile(\@values, $p)>, C<median(\@values)>

=item C<sanitized>

True under C<make sanitize> (memory figures mean nothing there: ASan keeps freed
memory in quarantine).

=item C<timed_request($t, $method, $path, %opt)>

C<< $t->http(...) >> and the time it took: C<($answer, $seconds)>.

=item C<holder_pid($t, timeout => 5)>

The pid of the worker that holds the one subscriber there is (the zone C<events> in
C</stats> on port 1 lists it with one), once it does; undef after the timeout.

=item C<rand_ids($n, $len)>

C<$n> distinct random channel ids of C<$len> letters.

=item C<pipeline_publish($t, \@messages, port => 1, location => 'pub', depth => 200, headers => {...})>

Publishes C<[channel, data]> pairs fast: requests are pipelined on a keep-alive connection,
C<depth> at a time (a connection the server closes, e.g. at C<keepalive_requests>, is
reopened and the rest sent again). Returns a hashref of status => count.

=item C<spawn_readers($n, $port, $path, seconds => 10, again => 0, bytes => 0, idle => 0)>

Forks C<$n> processes that each open C<GET $path> and read (and discard) as fast as they
can until the stream ends or the time is up. C<again>: then open it again, until the
time is up; C<bytes>: a stream is left after that many bytes; C<idle>: or after that many
seconds without any. Returns their pids; C<reap(@pids)> waits for
them (and kills by pid those still running after 15 s).

=back

=cut

use strict;
use warnings;
use POSIX ();
use Time::HiRes ();
use IO::Select;
use Exporter 'import';

our @EXPORT_OK = qw(anon_kb rss_kb cpu_ticks settle_kb percentile median sanitized timed_request
                    holder_pid rand_ids pipeline_publish spawn_readers reap);

sub _status_field {
    my ($field, @pids) = @_;
    my $sum = 0;
    for my $pid (@pids) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) { $sum += $1 if /^\Q$field\E:\s+(\d+)/ }
    }
    return $sum;
}

sub anon_kb { _status_field('RssAnon', @_) }
sub rss_kb  { _status_field('VmRSS', @_) }

sub cpu_ticks {
    my $sum = 0;
    for my $pid (@_) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh> // '';
        $stat =~ s/^.*\) //s;             # the command name may hold spaces
        my @f = split ' ', $stat;
        $sum += $f[11] + $f[12];          # fields 14 and 15: utime, stime
    }
    return $sum;
}

sub settle_kb {
    my ($read, %o) = @_;
    my $deadline = Time::HiRes::time() + ($o{timeout} // 10);
    my $quiet = $o{quiet} // 0.5;
    my $last = $read->();
    my $since = Time::HiRes::time();
    while (Time::HiRes::time() < $deadline) {
        Time::HiRes::sleep(0.1);
        my $now = $read->();
        if (abs($now - $last) > 0.01 * $last + 64) {
            ($last, $since) = ($now, Time::HiRes::time());
        } elsif (Time::HiRes::time() - $since >= $quiet) {
            return $now;
        }
    }
    return $last;
}

sub percentile {
    my ($v, $p) = @_;
    return undef unless @$v;
    my @s = sort { $a <=> $b } @$v;
    my $i = int($p / 100 * @s + 0.999999) - 1;
    $i = 0 if $i < 0;
    $i = $#s if $i > $#s;
    return $s[$i];
}

sub median { percentile($_[0], 50) }

sub sanitized { $ENV{CHANNELS_SANITIZE} || ($ENV{NGINX_BIN} // '') =~ /asan|san\b/ }

sub timed_request {
    my ($t, $method, $path, %o) = @_;
    my $t0 = Time::HiRes::time();
    my $r = $t->http($method, $path, %o);
    return ($r, Time::HiRes::time() - $t0);
}

sub holder_pid {
    my ($t, %o) = @_;
    my $holder;
    $t->wait_for(sub {
        my $z = $t->zone_stats('/stats', 'events', port => 1) or return 0;
        ($holder) = map { $_->{pid} } grep { $_->{subscribers} == 1 } @{ $z->{workers} || [] };
        $holder;
    }, timeout => $o{timeout} // 5);
    return $holder;
}

sub rand_ids {
    my ($n, $len) = @_;
    my %seen;
    my @letters = ('a' .. 'z');
    while (keys %seen < $n) {
        $seen{ join '', map { $letters[rand @letters] } 1 .. $len } = 1;
    }
    return keys %seen;
}

sub _connect {
    my $port = shift;
    require IO::Socket::INET;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
        or die "Attack: connect to $port: $!\n";
    binmode $s;
    return $s;
}

sub pipeline_publish {
    my ($t, $msgs, %o) = @_;
    my $port = $t->port($o{port} // 1);
    my $loc = $o{location} // 'pub';
    my $depth = $o{depth} // 200;
    my $extra = join '', map { "$_: $o{headers}{$_}\r\n" } sort keys %{ $o{headers} || {} };
    my %status;
    my $s;
    my $i = 0;
    while ($i < @$msgs) {
        $s //= _connect($port);
        my $last = $i + $depth - 1 < $#$msgs ? $i + $depth - 1 : $#$msgs;
        my @batch = @$msgs[$i .. $last];
        my $req = '';
        for my $m (@batch) {
            $req .= "POST /$loc/$m->[0] HTTP/1.1\r\nHost: x\r\n${extra}Content-Length: "
                  . length($m->[1]) . "\r\n\r\n$m->[1]";
        }
        my $off = 0;
        while ($off < length $req) {
            my $n = syswrite($s, $req, length($req) - $off, $off);
            die "Attack: pipelined write: $!\n" unless defined $n;
            $off += $n;
        }
        my ($buf, $got) = ('', 0);
        while ($got < @batch) {
            if ($buf =~ /\A(HTTP\/1\.\d (\d+)[^\r]*\r\n(.*?)\r\n\r\n)/s) {
                my ($all, $code, $head) = ($1, $2, $3);
                my ($cl) = $head =~ /^Content-Length:\s*(\d+)/mi;
                $cl //= 0;
                if (length($buf) >= length($all) + $cl) {
                    substr($buf, 0, length($all) + $cl, '');
                    $status{$code}++;
                    $got++;
                    next;
                }
            }
            my $n = sysread($s, $buf, 1 << 16, length $buf);
            last unless $n;
        }
        if ($got < @batch) {
            # The server closed the connection (keepalive_requests): the rest is sent again.
            close $s;
            undef $s;
            die "Attack: pipelined publishing makes no progress\n" if !$got && $o{_stalled}++ > 3;
        }
        $i += $got;
    }
    close $s if $s;
    return \%status;
}

sub spawn_readers {
    my ($n, $port, $path, %o) = @_;
    my $seconds = $o{seconds} // 10;
    my @pids;
    for (1 .. $n) {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            my $end = Time::HiRes::time() + $seconds;
            my $ok = eval {
                do {
                    my $s = _connect($port);
                    print $s "GET $path HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
                    my $sel = IO::Select->new($s);
                    my ($buf, $got) = ('', 0);
                    while (Time::HiRes::time() < $end) {
                        last if $o{idle} && !$sel->can_read($o{idle});
                        my $r = sysread($s, $buf, 1 << 16);
                        last unless $r;
                        $got += $r;
                        last if $o{bytes} && $got >= $o{bytes};
                    }
                    close $s;
                } while ($o{again} && Time::HiRes::time() < $end);
                1;
            };
            POSIX::_exit($ok ? 0 : 1);
        }
        push @pids, $pid;
    }
    return @pids;
}

sub reap {
    my @pids = @_;
    my $deadline = Time::HiRes::time() + 15;
    my %left = map { $_ => 1 } @pids;
    while (%left && Time::HiRes::time() < $deadline) {
        for my $pid (keys %left) {
            delete $left{$pid} if waitpid($pid, POSIX::WNOHANG()) != 0;
        }
        Time::HiRes::sleep(0.05) if %left;
    }
    for my $pid (keys %left) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
}

1;
