#!/usr/bin/perl
# Issue 12, finding 7 (last part): a dead worker whose pid was reused must not keep its record: the
# stats' subscriber count returns to the true number (README "Statistics", "Errors and failures").
#
# nginx runs in its own pid namespace (`unshare --pid --fork`, util-linux), so that a pid can
# be handed out again on purpose: with the master stopped (SIGSTOP), a worker holding
# subscribers is killed with -9; the namespace's next pid is set to the dead worker's
# (/proc/sys/kernel/ns_last_pid, written from inside the namespace with nsenter); the
# master, continued, reaps the worker and forks its replacement, which gets the very same
# pid. The dead worker's subscribers are gone, and so must be their count, within the
# collection interval. Every process is addressed by its pid as seen from the test.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(time);
use ChannelsTest qw(json_decode slurp);

plan skip_all => 'needs root' if $> != 0;
plan skip_all => 'unshare/nsenter (util-linux) cannot make a pid namespace here'
    if system('unshare --pid --fork true >/dev/null 2>&1') != 0 || system('nsenter --version >/dev/null 2>&1') != 0;

# The config and ports come from ChannelsTest; nginx is started here (never by ChannelsTest,
# whose signals would go to the namespace's pid 1 as written in the pid file).
my $t = ChannelsTest->new(workers => 2, start => 0, conf => <<'CONF');
    channel_zone zone=reuse:4m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;
        location ~ ^/events/(?<ch>[\w.-]+)$ { sse_ping 0; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location = /stats { channel_stats; }
    }
CONF
my $P = $t->prefix;

sub children { my $p = shift; split ' ', slurp("/proc/$p/task/$p/children") }
sub inner_pid { slurp("/proc/$_[0]/status") =~ /^NSpid:\s+\d+\s+(\d+)/m ? $1 : undef }
sub state { slurp("/proc/$_[0]/stat") =~ /^\d+ \(.*\) (\S)/s ? $1 : '' }

my $unshare = fork // die "fork: $!";
if (!$unshare) {
    open STDIN, '<', '/dev/null';
    open STDOUT, '>>', "$P/logs/stderr.log";
    open STDERR, '>&', \*STDOUT;
    exec 'unshare', '--pid', '--fork', '--kill-child', $ENV{NGINX_BIN} || '/usr/sbin/nginx',
         '-p', "$P/", '-c', 'conf/nginx.conf', '-e', 'logs/error.log' or POSIX::_exit(127);
}
my ($master, @workers);
# outer pids of the workers: children of the namespace's pid 1 (nginx's master)
sub workers { grep { slurp("/proc/$_/cmdline") =~ /^nginx: worker process/ && state($_) ne 'Z' } children($master) }
ok($t->wait_for(sub {
    ($master) = children($unshare);
    return 0 unless $master;
    @workers = workers();
    return @workers == 2 && ChannelsTest::_can_connect($t->port(0)) && ChannelsTest::_can_connect($t->port(1));
}, timeout => 20), 'nginx runs in its own pid namespace') or BAIL_OUT('nginx did not start: ' . slurp("$P/logs/error.log"));
is(inner_pid($master), 1, 'its master is pid 1 there');

sub zone {
    my $r = $t->http(GET => '/stats', port => 1);
    my $j = json_decode($r->{body}) || {};
    my ($z) = grep { $_->{name} eq 'reuse' } @{ $j->{zones} || [] };
    return $z;
}

my @streams = map { $t->sse_open('/events/reuse') } 1 .. 12;
is(scalar(grep { $_->status == 200 } @streams), 12, '12 SSE subscribers');
ok($t->wait_for(sub { (zone() || {})->{subscribers} == 12 }, timeout => 10), 'stats count 12');
my %inner = map { inner_pid($_) => $_ } @workers;
my ($victim) = sort { $b->{subscribers} <=> $a->{subscribers} } grep { $inner{ $_->{pid} } } @{ zone()->{workers} };
ok($victim && $victim->{subscribers} > 0, "worker $victim->{pid} (in the namespace) holds $victim->{subscribers} subscribers");
my ($p, $outer) = ($victim->{pid}, $inner{ $victim->{pid} });

# The master must not reap or respawn before the namespace's next pid is set.
kill 'STOP', $master;
kill 'KILL', $outer;
ok($t->wait_for(sub { state($outer) eq 'Z' }, timeout => 5), 'the worker is dead (a zombie until the master reaps it)');
my $set = system('nsenter', '--target', $master, '--pid', '--', 'sh', '-c',
                 'echo ' . ($p - 1) . ' > /proc/sys/kernel/ns_last_pid');
is($set, 0, 'the namespace hands out pid ' . $p . ' next');
kill 'CONT', $master;
ok($t->wait_for(sub { my @w = workers(); @w == 2 && !grep { $_ == $outer } @w }, timeout => 10),
   'the master started a replacement');
my @now = workers();
my ($new) = grep { my $o = $_; !grep { $_ == $o } @workers } @now;
my $reused = $new && (inner_pid($new) // 0) == $p;
ok($reused, "the replacement got the dead worker's pid $p") or diag('it got ' . ($new ? inner_pid($new) : 'none'));

# The dead worker's clients see their connection end; the others are closed by us.
$_->close for @streams;
my $z;
ok($t->wait_for(sub { $z = zone(); $z && $z->{subscribers} == 0 }, timeout => 5),
   'stats: 0 subscribers once every client is gone (the dead record released)')
    or diag("subscribers: $z->{subscribers}; workers: " . join(', ', map { "$_->{pid}=$_->{subscribers}" } @{ $z->{workers} }));
ok(!grep({ $_->{subscribers} > 0 } @{ $z->{workers} }), 'no worker record keeps subscribers')
    or diag explain $z->{workers};

kill 'QUIT', $master;
my $deadline = time + 15;
while (time < $deadline) { last if waitpid($unshare, POSIX::WNOHANG()) == $unshare; Time::HiRes::sleep(0.05) }
if (kill 0, $unshare) { kill 'KILL', $unshare; waitpid($unshare, 0); fail('nginx exited after QUIT') }
my @bad = grep { /\[(alert|crit|emerg)\]/ && !/exited on signal 9/ } split /\n/, slurp("$P/logs/error.log");
is_deeply(\@bad, [], 'nginx error log clean');

done_testing;
