#!/usr/bin/perl
# Review finding: any local user can keep nginx's workers from starting by binding their
# wake-up socket names first (a local denial of service at the next reload or respawn).
#
# Each worker binds a datagram socket in Linux's abstract namespace named
# "nginx-channels/<master pid>/<own pid>" (ngx_http_channels_wake.cpp, wake_init_worker()).
# Abstract names have no owner and no permissions: whoever binds a name first has it. The
# master's pid is public (the pid file, ps), and pids are handed out in sequence, so a user
# who binds the names of the next few hundred pids takes those of the workers a reload
# starts. A worker whose bind() fails logs "[emerg] ... bind() of the wake-up socket failed",
# returns NGX_ERROR from init_process and exits with code 2, which nginx's master takes as
# fatal: "exited with fatal code 2 and cannot be respawned". The old workers exit as a
# reload asks; nginx is left without workers, and stays so.
#
# The test binds the names of the next 900 pids (as any user could; the test happens to run
# as root, which changes nothing for abstract names), reloads nginx, and asks for a page.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Socket qw(AF_UNIX SOCK_DGRAM);
use ChannelsTest;

plan skip_all => 'Linux only (abstract unix sockets)' unless $^O eq 'linux';

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=z:1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[\w.-]+)$ { publish_channel $ch; }
    }
CONF
$t->allow_log(qr/bind\(\) of the wake-up socket failed/, qr/exited with fatal code 2/);

is($t->http(POST => '/pub/x', body => 'before')->{status}, 201, 'nginx serves');

my $master = $t->master_pid;
open my $fh, '<', '/proc/sys/kernel/ns_last_pid' or plan skip_all => 'no ns_last_pid';
my $last = <$fh>;
chomp $last;
my @held;
for my $pid ($last + 1 .. $last + 900) {
    socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or last;
    my $name = "\0nginx-channels/$master/$pid";
    push @held, $s if bind($s, pack('S', AF_UNIX) . $name);
}
note(sprintf('bound %d abstract names "nginx-channels/%d/<pid>" for pids %d..%d', scalar @held, $master,
             $last + 1, $last + 900));

my @old = $t->all_worker_pids;
my $mark = $t->log_mark;
$t->reload(timeout => 10);
my $log = $t->log_since($mark);
my $failed = () = $log =~ /bind\(\) of the wake-up socket failed/g;
note("workers that could not bind their wake-up socket: $failed");
$t->wait_for(sub { !grep { $_ } map { kill 0, $_ } @old }, timeout => 10);
my @live = $t->all_worker_pids;
note('worker processes now: ' . (@live ? join(' ', @live) : 'none'));
my $r = $t->http(POST => '/pub/x', body => 'after', timeout => 5);
is($r->{status}, 201, 'after a reload, nginx still serves') or diag "status $r->{status} ($r->{error})";
is($failed, 0, 'no new worker was kept from starting by names another process took');
close $_ for @held;

done_testing;
