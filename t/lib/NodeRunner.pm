package NodeRunner;

# Runs a Node.js test script from t/js against an nginx serving conf-examples/demo.conf,
# turning its PASS/FAIL/SKIP lines into Test::More tests. Shared by the browser and
# EventSource tests.
#
#   my $t = NodeRunner::demo_nginx(extra => $http_text);   # started, www/ linked in
#   NodeRunner::report($script, NodeRunner::run_node($script, @args));
#   my ($lines, $reloads) = NodeRunner::run_node_with_reloads($t, $script, $timeout, @more_args);

use strict;
use warnings;
use Exporter 'import';
use File::Spec;
use FindBin;
use Test::More;
use ChannelsTest;

our @EXPORT_OK = qw(repo demo_nginx run_node run_node_with_reloads report);

sub repo { File::Spec->rel2abs("$FindBin::Bin/..") }

# Installs t/js's npm packages if missing; fails the test file when that is impossible.
sub ensure_deps {
    my $repo = repo();
    my $out = `sh '$repo/t/js/ensure-deps.sh' 2>&1`;
    return 1 if $? == 0;
    fail("npm packages for t/js: $out");
    done_testing;
    exit;
}

# conf-examples/demo.conf's http block, its ports 8080/8081 as %%PORT_0%%/%%PORT_1%%.
sub demo_http_block {
    open my $fh, '<', repo() . '/conf-examples/demo.conf' or die "demo.conf: $!";
    my $text = do { local $/; <$fh> };
    my ($http) = $text =~ /^http \{\n(.*?)^\}$/ms or die "demo.conf: no http block\n";
    $http =~ s/127\.0\.0\.1:8080\b/127.0.0.1:%%PORT_0%%/g;
    $http =~ s/127\.0\.0\.1:8081\b/127.0.0.1:%%PORT_1%%/g;
    return $http;
}

# nginx with demo.conf's http block, and `extra` (more http-level text) after it.
sub demo_nginx {
    my (%o) = @_;
    ensure_deps();
    my $t = ChannelsTest->new(workers => 2, conf => demo_http_block() . ($o{extra} // ''), start => 0);
    symlink(repo() . '/www', $t->prefix . '/www') or die "symlink www: $!";
    $t->start;
    return $t;
}

sub run_node {
    my ($script, @args) = @_;
    my $cmd = join ' ', 'node', map { "'$_'" } repo() . "/t/js/$script", @args;
    my @lines = `$cmd 2>&1`;
    chomp @lines;
    push @lines, "EXIT $?";
    return @lines;
}

# Runs a script that may ask for `nginx -s reload` by printing RELOAD: the reload is done
# and answered "RELOADED ok" (or "RELOADED failed") on its stdin. Its arguments: the bases of
# ports 0 and 1, then @args. The script's stderr joins its output, so a failure outside a test
# still shows why. Returns the output lines (with "EXIT n" last) and how many reloads it asked
# for.
sub run_node_with_reloads {
    my ($t, $script, $timeout, @args) = @_;
    require IPC::Open2;
    require IO::Select;
    require Time::HiRes;
    my $pid = IPC::Open2::open2(my $from, my $to, 'sh', '-c', 'exec node "$@" 2>&1', 'node',
                                repo() . "/t/js/$script",
                                'http://127.0.0.1:' . $t->port(0), 'http://127.0.0.1:' . $t->port(1), @args);
    $to->autoflush(1);
    my @lines;
    my ($buf, $eof, $reloads) = ('', 0, 0);
    my $deadline = Time::HiRes::time() + $timeout;
    my $sel = IO::Select->new($from);
    while (!$eof && Time::HiRes::time() < $deadline) {
        next unless $sel->can_read(1);
        my $n = sysread($from, $buf, 4096, length $buf);
        $eof = 1 unless $n;
        while ($buf =~ s/^(.*)\n//) {
            my $l = $1;
            if ($l ne 'RELOAD') {
                push @lines, $l;
                next;
            }
            my $ok = $t->reload(timeout => 15);
            $reloads++;
            print $to ($ok ? "RELOADED ok\n" : "RELOADED failed\n");
            push @lines, 'NOTE reload ' . ($ok ? 'done' : 'FAILED');
        }
    }
    if (!$eof) {
        kill 'TERM', $pid;
        push @lines, "FAIL $script did not finish within ${timeout}s";
    }
    waitpid $pid, 0;
    push @lines, 'EXIT ' . ($? >> 8);
    return (\@lines, $reloads);
}

# PASS/FAIL lines become tests, SKIP skips the file loudly, anything else is a note.
sub report {
    my ($script, @lines) = @_;
    my ($exit) = map { /^EXIT (\d+)/ ? $1 : () } @lines;
    if (my ($skip) = grep { /^SKIP / } @lines) {
        diag('!' x 70);
        diag("SKIPPED: $skip");
        diag('!' x 70);
        plan skip_all => $skip;
    }
    my $n = 0;
    # Notes are shown only by prove -v; when something failed they become diagnostics, so
    # a failure in a parallel run (CI) still shows what the script printed.
    my $failed = ($exit // 1) != 0 || grep { /^FAIL / } @lines;
    for (@lines) {
        if (/^PASS (.*)/) { pass($1); $n++ }
        elsif (/^FAIL (.*)/) { fail($1); $n++ }
        elsif (!/^EXIT /) { $failed ? diag($_) : note($_) }
    }
    ok($n > 0, "$script ran its tests");
    is($exit, 0, "$script exited 0");
}

1;
