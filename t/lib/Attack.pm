package Attack;

=head1 NAME

Attack - measuring helpers shared by the t/attack-*.t files (issue 11, SPEC §9)

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

=item C<rand_ids($n, $len)>

C<$n> distinct random channel ids of C<$len> letters.

=back

=cut

use strict;
use warnings;
use POSIX ();
use Time::HiRes ();
use Exporter 'import';

our @EXPORT_OK = qw(anon_kb rss_kb cpu_ticks settle_kb percentile median sanitized timed_request
                    rand_ids);

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

sub rand_ids {
    my ($n, $len) = @_;
    my %seen;
    my @letters = ('a' .. 'z');
    while (keys %seen < $n) {
        $seen{ join '', map { $letters[rand @letters] } 1 .. $len } = 1;
    }
    return keys %seen;
}

1;
