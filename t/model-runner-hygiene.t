#!/usr/bin/perl
# The model test's runner (t/lib/Model/Runner.pm) and its curl clients (t/lib/CurlStream.pm)
# must not slow themselves down over a long `make stress`:
#
# - a schedule's clients are freed when it ends. They and their last transport referred to
#   each other, so every schedule's clients stayed in memory with all they received (about
#   7 MB a schedule; 3.7 GB per job after 2,500 schedules), and every curl client forks the
#   runner: fork() of a 3 GB process took 0.4-1 s on the loaded machine, during which no
#   client read. The h2 and curl clients (one fork per long-poll request) fell seconds behind
#   and barriers failed ("h2 stalls", /work/notes/h2stall.md).
# - a curl client closed right after it was started is not killed while it is still a copy
#   of the caller: ChannelsTest's TERM handler (die) ran in that copy ("caught SIGTERM" in
#   the stress logs), which then ran END blocks and global destruction while the caller
#   waited for it in waitpid.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Scalar::Util qw(weaken);
use File::Temp ();
use ChannelsTest;
use CurlStream;
use Model::Runner;
use Model::Schedule;

# Every client object of a schedule, weakly held: gone once run() returned.
{
    my @weak;
    no warnings 'redefine';
    my $act = \&Model::Runner::act;
    local *Model::Runner::act = sub {
        my $self = $_[0];
        my @r = $act->(@_);
        for my $c (@{ $self->{clients} }) {
            next if grep { defined $_ && $_ == $c } @weak;
            push @weak, $c;
            weaken($weak[-1]);
        }
        return @r;
    };
    my $runner = Model::Runner->new;
    # 1: SSE over curl (1.1, h2) and Perl sockets, long-poll over 1.0; 131: long-poll over
    # h2 (curl), 1.0 and 1.1, SSE over 1.0 and 1.1: every client class and transport
    for my $seed (1, 131) {
        @weak = ();
        my $tr = $runner->run(Model::Schedule->generate($seed));
        my %kinds = map { ref($_) => 1 } grep { defined } @weak;
        my $n = @weak;
        my @left = map { ref $_ } grep { defined } @weak;
        ok($n > 0 && !@left, "seed $seed: all $n clients freed when the schedule ended")
            or diag("still alive: @left");
        ok(scalar @{ $tr->{clients} }, "seed $seed: the trace keeps its client records");
    }
}

# A curl client closed at once, many times: no copy of this process ever runs its handlers.
{
    my $err = File::Temp->new;
    open my $saved, '>&', \*STDERR or die "dup: $!";
    open STDERR, '>', $err->filename or die "$err: $!";
    for (1 .. 60) {
        my $s = CurlStream->new(url => 'http://127.0.0.1:9/');
        $s->close;
    }
    open STDERR, '>&', $saved or die "restore: $!";
    my $text = do { local $/; open my $fh, '<', $err->filename; <$fh> // '' };
    my $caught = () = $text =~ /caught SIG/g;
    is($caught, 0, '60 curl clients closed right after starting: no child ran the caller\'s signal handler');
}

done_testing;
