#!/usr/bin/perl
# Issue 11, finding 8, without fault injection (README "What one client can cost": failures stay
# local): a worker whose address space is limited (as in a container, `ulimit -v`) and runs out
# while answering a request does not die.
#
# nginx runs under `ulimit -v` = the VmSize its worker has after warming up + 64 MiB. A long-poll
# waits on a channel; its worker is stopped (SIGSTOP) while 100 messages of 300,000 control bytes
# are published from the other worker, then continued: its delivery pass hands all of them to the
# waiting request at once. The answer must respect README "Long polling" (about 1 MiB of data, at
# least one message) and fit; whatever fails for lack of memory ends that request at most. The
# worker survives (same pid, no "exited on signal") and the client gets an answer.
#
# Before the fix: the answer was built from all 100 messages: 180 MB of escaped JSON in a
# std::string, whose std::bad_alloc was thrown inside on_flush(), called from a noexcept
# event handler outside any try: std::terminate, the worker died (signal 6) with every
# subscriber it held.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use ChannelsTest;
use Attack qw(sanitized pipeline_publish);

plan skip_all => 'an address-space limit and a sanitizer do not mix' if sanitized();

my $CONF = <<'CONF';
    channel_zone zone=events:64m history=1000 ttl=1h;
    longpoll_timeout 30s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/poll/(?<ch>[\w.:-]+)$ { longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

sub vmsize_kb {
    my $max = 0;
    for my $pid (@_) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) { $max = $1 if /^VmSize:\s+(\d+)/ && $1 > $max }
    }
    return $max;
}

# ---- calibration: the worker's address space once warm
my $limit_kb;
{
    my $t = ChannelsTest->new(workers => 2, conf => $CONF);
    my $p = $t->poll_start('/poll/warm');
    $t->wait_for(sub { $t->subscribers('warm') == 1 }, timeout => 5);
    $t->publish('warm', 'x' x 300_000);
    $p->result(timeout => 5);
    $limit_kb = vmsize_kb($t->worker_pids) + 64 * 1024;
    note("workers' VmSize when warm + 64 MiB: ulimit -v $limit_kb");
    $t->finish;
}

my $dir = File::Temp::tempdir('attack-ulimit-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $real = $ENV{NGINX_BIN} || '/usr/sbin/nginx';
open my $fh, '>', "$dir/nginx" or die "write wrapper: $!";
print $fh "#!/bin/sh\nulimit -v $limit_kb || exit 1\nexec $real \"\$@\"\n";
close $fh;
chmod 0755, "$dir/nginx";

my $t = do {
    local $ENV{NGINX_BIN} = "$dir/nginx";
    ChannelsTest->new(workers => 2, conf => $CONF);
};
my @workers = $t->worker_pids;
is(scalar @workers, 2, 'nginx runs under the address-space limit');

my $poll = $t->poll_start('/poll/big');
my $holder = Attack::holder_pid($t);
ok($holder, 'a long-poll waits on "big"') or BAIL_OUT('no worker holds the long-poll');

kill 'STOP', $holder;
my $st = pipeline_publish($t, [ map { ['big', "\x01" x 300_000] } 1 .. 100 ], depth => 10);
kill 'CONT', $holder;
is($st->{201}, 100, '100 messages of 300,000 control bytes published while its worker was stopped');

my $r = $poll->result(timeout => 20);
my @ids = $r->{body} =~ /"id":"([^"]+)"/g;
note("the long-poll: status $r->{status}, " . length($r->{body} // '') . ' bytes, ' . scalar(@ids) . ' messages'
   . ($r->{error} ? ", $r->{error}" : ''));
ok($r->{status} == 200 || $r->{status} == 500, 'the waiting long-poll got an answer (200, or 500 for lack of memory)');
ok($r->{status} != 200 || (@ids >= 1 && length($r->{body}) <= 6 * (1024 * 1024 + 300_000) + 65536),
   'a 200 holds at least one message and about 1 MiB of data');

is_deeply([$t->worker_pids], \@workers, 'both workers are the same processes');
my @died = grep { /exited on signal|terminate called/ } split /\n/, $t->error_log;
ok(!@died, 'no worker died') or diag join "\n", @died;
$t->allow_log(qr/exited on signal/) if @died;   # reported above, once

my $after = $t->poll('/poll/big', cursor => $ids[-1] // '0-0', timeout => 10);
is($after->{status}, 200, 'the next long-poll is answered');

done_testing;
