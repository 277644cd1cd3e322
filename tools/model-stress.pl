#!/usr/bin/perl
# `make stress`: many schedules of the model-checked random test (t/model.t, issue 12), in
# parallel. Each job is one t/model.t process with its own nginx, running a contiguous range
# of seeds one after the other; the jobs run side by side.
#
#   perl tools/model-stress.pl [--schedules N] [--jobs J] [--first SEED] [--out DIR]
#
# Prints progress every 30 s, then the seeds that diverged (replay one with
# MODEL_SEEDS=<seed> prove -v t/model.t) and the duration; the full diagnostics are in
# DIR/job-K.log (default build/stress). Exits 1 if any schedule diverged.
use strict;
$| = 1;
use warnings;
use Getopt::Long;
use POSIX ();
use Time::HiRes qw(time sleep);
use File::Basename ();
use File::Path ();
use Cwd ();

my $repo = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/..');
my ($n, $jobs, $first, $out) = (1000, 3, 100_000, "$repo/build/stress");
GetOptions('schedules=i' => \$n, 'jobs=i' => \$jobs, 'first=i' => \$first, 'out=s' => \$out)
    or die "usage: $0 [--schedules N] [--jobs J] [--first SEED] [--out DIR]\n";
$jobs = $n if $jobs > $n;
File::Path::make_path($out);

my $t0 = time;
my (@kids, %range);
my $per = int(($n + $jobs - 1) / $jobs);
for my $j (0 .. $jobs - 1) {
    my $from = $first + $j * $per;
    my $to = $from + $per - 1;
    $to = $first + $n - 1 if $to > $first + $n - 1;
    last if $from > $to;
    my $log = "$out/job-$j.log";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>', $log or die "$log: $!";
        open STDERR, '>&', \*STDOUT;
        $ENV{MODEL_SEEDS} = "$from-$to";
        exec $^X, "$repo/t/model.t" or POSIX::_exit(127);
    }
    push @kids, $pid;
    $range{$pid} = [ $j, $from, $to, $log ];
}
printf "%d schedules (seeds %d-%d) in %d jobs, logs in %s\n", $n, $first, $first + $n - 1, scalar @kids, $out;

sub tally {
    my ($ok, $bad, @seeds) = (0, 0);
    for my $pid (@kids) {
        open my $fh, '<', $range{$pid}[3] or next;
        while (<$fh>) {
            if (/^ok \d+ - seed (\d+)/) { $ok++ }
            elsif (/^not ok \d+ - seed (\d+)/) { $bad++; push @seeds, $1 }
        }
    }
    return ($ok, $bad, sort { $a <=> $b } @seeds);
}

my %alive = map { $_ => 1 } @kids;
my $next_report = time + 30;
while (%alive) {
    my $pid = waitpid(-1, POSIX::WNOHANG());
    if ($pid > 0) { delete $alive{$pid}; next }
    sleep 0.5;
    if (time >= $next_report) {
        my ($ok, $bad) = tally();
        printf "  %4.0fs: %d done, %d diverged\n", time - $t0, $ok + $bad, $bad;
        $next_report = time + 30;
    }
}
my ($ok, $bad, @seeds) = tally();
my $took = time - $t0;
printf "%d schedules run, %d diverged, in %.0f s (%.1f min; %.2f s per schedule per job)\n",
    $ok + $bad, $bad, $took, $took / 60, $took * @kids / (($ok + $bad) || 1);
print "diverging seeds: @seeds\n" if @seeds;
print "missing: ", $n - $ok - $bad, " schedules did not report (see the logs)\n" if $ok + $bad < $n;
open my $sum, '>', "$out/summary.txt";
printf $sum "%d schedules, %d diverged, %.0f s, %d jobs; seeds %d-%d\ndiverging: @seeds\n", $ok + $bad, $bad, $took, scalar @kids, $first, $first + $n - 1;
exit($bad || $ok + $bad < $n ? 1 : 0);
