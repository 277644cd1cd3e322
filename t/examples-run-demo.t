#!/usr/bin/perl
# tools/run-demo.sh (what `make run` calls): on free ports and a temporary prefix, it
# prints the demo URL and two curl lines, runs nginx in the foreground, and the printed
# curl lines work as printed.
use strict;
use warnings;
use FindBin;
use File::Spec;
use Cwd ();
use File::Temp ();
use IO::Socket::INET;
use POSIX ();
use Time::HiRes ();
use Test::More;

my $REPO = File::Spec->rel2abs("$FindBin::Bin/..");
my $MODULE = $ENV{CHANNELS_MODULE} || "$REPO/build/ngx_http_channels_module.so";
my $NGINX = $ENV{NGINX_BIN} || '/usr/sbin/nginx';
my $SCRIPT = "$REPO/tools/run-demo.sh";

sub slurp {
    my $f = shift;
    open my $fh, '<:raw', $f or return '';
    local $/;
    return scalar <$fh>;
}

sub free_ports {
    my @s = map {
        IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, Proto => 'tcp')
            or die "port: $!"
    } 1 .. shift;
    my @p = map { $_->sockport } @s;
    close $_ for @s;
    return @p;
}

sub wait_until {
    my ($cond, $timeout) = @_;
    my $deadline = Time::HiRes::time() + ($timeout // 10);
    while (Time::HiRes::time() < $deadline) {
        my $v = $cond->();
        return $v if $v;
        Time::HiRes::sleep(0.02);
    }
    return undef;
}

sub can_connect {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => shift, Proto => 'tcp', Timeout => 1);
    return $s ? 1 : 0;
}

# ---- argument checks
my $usage = `sh '$SCRIPT' 2>&1`;
is($? >> 8, 2, 'no arguments: exit status 2');
like($usage, qr/usage: .*MODULE NGINX_BIN/, 'no arguments: usage line');
my $missing = `sh '$SCRIPT' /nonexistent/module.so '$NGINX' 2>&1`;
isnt($? >> 8, 0, 'a missing module: non-zero exit');
like($missing, qr/module not found/, 'a missing module: says so');

# ---- a real run
my $dir = File::Temp::tempdir('channels-demo-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $dir;    # nginx's workers (nobody) reach the prefix inside
my $prefix = "$dir/prefix";
my ($port, $pub) = free_ports(2);
my $pid = fork // die "fork: $!";
if (!$pid) {
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', "$dir/out";
    open STDERR, '>', "$dir/err";
    $ENV{CHANNELS_DEMO_PORT} = $port;
    $ENV{CHANNELS_DEMO_PUBLISH_PORT} = $pub;
    $ENV{CHANNELS_DEMO_PREFIX} = $prefix;
    exec 'sh', $SCRIPT, $MODULE, $NGINX or POSIX::_exit(127);
}
my $stopped = 0;
END { if ($pid && !$stopped) { kill 'TERM', $pid; waitpid $pid, 0; } }

ok(wait_until(sub { can_connect($port) && can_connect($pub) }, 20), 'nginx listens on both ports')
    or diag(slurp("$dir/err"));
my $out = slurp("$dir/out");
like($out, qr{http://127\.0\.0\.1:$port/\s}, 'prints the demo URL');
my ($sub_line) = $out =~ /^\s*(curl -N http:\S+)\s*$/m;
my ($pub_line) = $out =~ /^\s*(curl -d 'hello' http:\S+)\s*$/m;
is($sub_line, "curl -N http://127.0.0.1:$port/events/demo", 'prints the subscribe curl line');
is($pub_line, "curl -d 'hello' http://127.0.0.1:$pub/pub/demo", 'prints the publish curl line');

my $conf = slurp("$prefix/conf/nginx.conf");
my $abs_module = Cwd::abs_path($MODULE);
like($conf, qr/^load_module \Q$abs_module\E;$/m, 'nginx.conf loads the module by its absolute path');
like($conf, qr/^daemon off;$/m, 'nginx.conf: daemon off');
like($conf, qr/^error_log stderr info;$/m, 'nginx.conf: error log on stderr at info');
ok(-l "$prefix/www", 'www/ linked into the prefix');

# The printed lines, run as printed (the subscriber with a time limit so it ends).
my $curl_pid = fork // die "fork: $!";
if (!$curl_pid) {
    open STDOUT, '>', "$dir/sub.out";
    open STDERR, '>', "$dir/sub.err";
    exec 'sh', '-c', "$sub_line --max-time 20" or POSIX::_exit(127);
}
my $subscribed = wait_until(sub {
    my $s = `curl -s http://127.0.0.1:$port/status`;
    $s =~ /"subscribers":([1-9]\d*)/;
}, 10);
ok($subscribed, 'the printed subscribe line subscribes (seen in /status)');
my $answer = `$pub_line 2>/dev/null`;
like($answer, qr/^\{"channel":"demo","id":"\d+-\d+","subscribers":1,"messages":\d+\}/, 'the printed publish line publishes');
my $events = wait_until(sub { my $c = slurp("$dir/sub.out"); $c =~ /data: hello\n\n/ ? $c : undef }, 10);
like($events // '', qr/^id: \d+-\d+\ndata: hello\n\n/m, 'the subscriber printed the event');
kill 'TERM', $curl_pid;
waitpid $curl_pid, 0;

my $page = `curl -s http://127.0.0.1:$port/`;
like($page, qr/nginx-channels demo/, 'the demo page is served at /');

# nginx ran in the foreground as the process we started (the script execs it): stop it.
ok(kill('QUIT', $pid), 'nginx is the process the script became');
my $exited = wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, 15);
ok($exited, 'graceful stop ends it');
$stopped = 1;
is($? >> 8, 0, 'exit status 0') if $exited;
my $err = slurp("$dir/err");
like($err, qr/\[notice\].*start worker process/, 'error log went to stderr');
unlike($err, qr/\[(?:alert|emerg|crit)\]/, 'no alert/emerg/crit on stderr') or diag($err);

done_testing;
