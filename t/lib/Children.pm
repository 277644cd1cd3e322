package Children;

# Forked helper processes for the fault tests: spawn($kind, sub { my $wr = shift; ... })
# runs the code in a child that reports lines on $wr (an error as "ERROR ..."); pump($cond,
# $timeout) gathers the children's lines until $cond->() holds or the deadline passes;
# has_line($child, qr/.../) counts matching lines; children() lists them (for waitpid).

use strict;
use warnings;
use Exporter 'import';
use IO::Select;
use POSIX ();
use Time::HiRes ();

our @EXPORT = qw(spawn pump has_line children);

my @children;    # { pid, fh, kind, lines => [], buf, open }

sub children { @children }

sub spawn {
    my ($kind, $code) = @_;
    pipe(my $rd, my $wr) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $rd;
        $wr->autoflush(1);
        srand($$);
        my $ok = eval { $code->($wr); 1 };
        print $wr "ERROR $@\n" unless $ok;
        close $wr;
        POSIX::_exit(0);
    }
    close $wr;
    my $c = { pid => $pid, fh => $rd, kind => $kind, lines => [], buf => '', open => 1 };
    push @children, $c;
    return $c;
}

sub pump {
    my ($cond, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    while (1) {
        return 1 if $cond->();
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        my %by_fh = map { ($_->{fh} => $_) } grep { $_->{open} } @children;
        return 0 unless %by_fh;   # every child is done: nothing more will come
        my @ready = IO::Select->new(map { $_->{fh} } values %by_fh)->can_read($left > 0.2 ? 0.2 : $left);
        for my $fh (@ready) {
            my $c = $by_fh{$fh};
            my $n = sysread($fh, $c->{buf}, 65536, length $c->{buf});
            if (!$n) { $c->{open} = 0; next }
            while ($c->{buf} =~ s/^([^\n]*)\n//) { push @{ $c->{lines} }, $1 }
        }
    }
}

sub has_line { my ($c, $re) = @_; scalar grep { /$re/ } @{ $c->{lines} } }

1;
