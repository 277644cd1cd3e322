#!/usr/bin/perl
# The Debian package (issue 16): `make deb` builds libnginx-mod-http-channels for Debian's
# nginx; `apt-get install ./….deb` installs it the way Debian installs nginx modules (the
# .so in /usr/lib/nginx/modules, mod-http-channels.conf in /usr/share/nginx/modules-available,
# enabled in /etc/nginx/modules-enabled); `nginx -T` with the system configuration loads it;
# every installed example passes `nginx -t`; an nginx started on a test prefix that loads
# the module through the enabled file serves an SSE subscriber and a publish on loopback
# ports; `apt-get remove` leaves nothing but Debian's ".removed" marker of the enabled link
# (the package has no conffiles), and `apt-get purge` restores /etc/nginx exactly.
#
# The system nginx service is never started (no nginx runs on the system configuration);
# the package is purged at the end whatever happens. Runs as root only (it installs a
# package); one run at a time on a machine (a lock). CHANNELS_DEB=path tests that .deb
# instead of running `make deb`.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Fcntl qw(:flock);
use File::Spec;
use File::Temp ();
use POSIX ();
use ChannelsTest;

plan skip_all => 'installs a Debian package: runs as root only' if $> != 0;

my $REPO = "$FindBin::Bin/..";
my $PKG = 'libnginx-mod-http-channels';
my $NGINX = '/usr/sbin/nginx';   # Debian's: the package is built for it, whatever NGINX_BIN says
my $ENABLED = '/etc/nginx/modules-enabled';
my $LINK = "$ENABLED/50-mod-http-channels.conf";
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-channels.conf';
my $DOC = "/usr/share/doc/$PKG";

# Runs a command with its output captured; returns (exit status, output).
sub run {
    my (@cmd) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        open STDIN, '<', '/dev/null';
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

# dpkg's status of the package ('ii', 'rc', ...); '' when dpkg does not know it.
sub status {
    my ($rc, $s) = run('dpkg-query', '-W', '-f=${db:Status-Abbrev}', $PKG);
    return '' if $rc != 0;
    $s =~ s/\s+$//;
    return $s;
}

# What this test changes on the machine, to compare before and after.
sub snapshot {
    my @lines;
    for my $dir ($ENABLED, '/usr/share/nginx/modules-available', '/usr/lib/nginx/modules') {
        opendir(my $dh, $dir) or next;
        for my $e (sort grep { !/^\.\.?$/ } readdir $dh) {
            my $p = "$dir/$e";
            push @lines, -l $p ? "$p -> " . readlink($p) : $p;
        }
    }
    return join "\n", @lines;
}

# No nginx may run on the system configuration (the service); the tests' own run with -p.
sub system_nginx_masters {
    my (undef, $ps) = run('ps', '-eo', 'args');
    return grep { /^nginx: master process / && !/ -p / } split /\n/, $ps;
}

# One run of this test at a time on the machine (other worktrees' suites may run it too).
open(my $lock, '>', '/run/lock/nginx-channels-package-test.lock') or die "lock: $!";
flock($lock, LOCK_EX) or die "flock: $!";

my $before_status = status();
if ($before_status ne '' && $before_status !~ /^u/ && $before_status !~ /^pn/) {
    BAIL_OUT("$PKG is already installed (dpkg status '$before_status'): this test installs and "
        . "purges it; `apt-get purge $PKG` first");
}

# ---- the package
my $deb = $ENV{CHANNELS_DEB};
if (!$deb) {
    delete local $ENV{MAKEFLAGS};   # not the jobserver of a make that may have started prove
    delete local $ENV{MFLAGS};
    delete local $ENV{MAKELEVEL};
    my ($rc, $out) = run('make', '-C', $REPO, '--no-print-directory', 'deb');
    is($rc, 0, 'make deb') or diag($out);
    ($deb) = $out =~ m{build-deb: (/\S+\.deb)\s*$}m;
    if (!$deb) {
        my (undef, $v) = run('dpkg-parsechangelog', '-l', "$REPO/debian/changelog", '-S', 'Version');
        my (undef, $arch) = run('dpkg', '--print-architecture');
        chomp($v, $arch);
        $deb = "$REPO/build/${PKG}_${v}_$arch.deb";
    }
}
$deb = File::Spec->rel2abs($deb);
ok(-f $deb, "the package: $deb") or BAIL_OUT('no package to test');
like($deb, qr{/\Q$PKG\E_[^_/]+_[a-z0-9]+\.deb$}, 'named PACKAGE_VERSION_ARCH.deb');

my (undef, $provides) = run('dpkg-query', '-W', '-f=${Provides}', 'nginx');
my ($abi) = $provides =~ /\b(nginx-abi-[\w.+~-]+)/;
ok($abi, "Debian's nginx provides an ABI: " . ($abi // 'none'));
my (undef, $depends) = run('dpkg-deb', '-f', $deb, 'Depends');
my @abi_deps = $depends =~ /\b(nginx-abi-[\w.+~-]+)/g;
is("@abi_deps", $abi // '', 'depends on exactly the ABI the installed nginx provides') or diag($depends);
my (undef, $files) = run('dpkg-deb', '-c', $deb);
for my $want ('./usr/lib/nginx/modules/ngx_http_channels_module.so', ".$AVAILABLE", ".$DOC/copyright",
              ".$DOC/README.md.gz", ".$DOC/examples/basic.conf", ".$DOC/examples/tls-http2.conf") {
    like($files, qr/ \Q$want\E$/m, "ships $want");
}

# ---- install
my $snap = snapshot();
my $installed = 0;
END {
    # Whatever happened above, the machine is left as it was.
    if ($installed == 1) {
        my $keep = $?;
        system("apt-get purge -y -qq $PKG >/dev/null 2>&1");
        $? = $keep;
    }
}
local $ENV{DEBIAN_FRONTEND} = 'noninteractive';
my @apt = ('apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=300', '--no-install-recommends');

my ($base_rc, $base_out) = run($NGINX, '-t');
my @masters_before = system_nginx_masters();
my ($rc, $out) = run(@apt, 'install', $deb);
$installed = 1;
is($rc, 0, 'apt-get install ./….deb') or diag($out);
is(status(), 'ii', 'installed');
ok(-l $LINK, "enabled: $LINK");
is(readlink($LINK), $AVAILABLE, 'the enabled link points to modules-available');
my $load = do { local (@ARGV, $/) = ($AVAILABLE); <> } // '';
is($load, "load_module modules/ngx_http_channels_module.so;\n", 'mod-http-channels.conf loads the module');
ok(-f '/usr/lib/nginx/modules/ngx_http_channels_module.so', 'the module in /usr/lib/nginx/modules');

# ---- nginx -T with the system configuration (which includes modules-enabled/*.conf)
SKIP: {
    skip "the system configuration fails nginx -t even without the package: $base_out", 2 if $base_rc != 0;
    my ($trc, $tout) = run($NGINX, '-T');
    is($trc, 0, 'nginx -T with the system configuration and the module') or diag($tout);
    like($tout, qr{^load_module modules/ngx_http_channels_module\.so;$}m,
        'the system configuration loads it through modules-enabled');
}

# ---- every installed example: nginx -t as installed (log paths and certificates in a prefix)
{
    my $p = File::Temp::tempdir('channels-pkg-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    mkdir "$p/$_" for qw(conf logs conf/certs);
    symlink '/usr/lib/nginx/modules', "$p/modules" or die "symlink: $!";
    my ($grc, $gout) = run('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
        '-subj', '/CN=localhost', '-keyout', "$p/conf/certs/channels.key", '-out', "$p/conf/certs/channels.crt");
    is($grc, 0, 'a certificate for tls-http2.conf') or diag($gout);
    # what the examples read beside them: the demo's page (../www) and jwt.conf's key set
    system('cp', '-a', "$DOC/examples/www", "$p/www") == 0 or die "cp www: $?";
    system('cp', "$DOC/examples/channels-jwks.json", "$p/conf/") == 0 or die "cp channels-jwks.json: $?";
    opendir(my $dh, "$DOC/examples") or die "$DOC/examples: $!";
    my @examples = sort grep { /\.conf$/ } readdir $dh;
    ok(@examples >= 8, 'installed examples: ' . scalar @examples);
    for my $e (@examples) {
        my $text = do { local (@ARGV, $/) = ("$DOC/examples/$e"); <> };
        $text =~ s{/var/log/nginx/}{$p/logs/}g;
        open(my $fh, '>', "$p/conf/$e") or die "$e: $!";
        print $fh $text;
        close $fh;
        my ($erc, $eout) = run($NGINX, '-p', "$p/", '-c', "conf/$e", '-e', "$p/logs/error.log", '-t');
        ok($erc == 0 && $eout !~ /\[(?:warn|emerg|alert|crit)\]/, "nginx -t $e (as installed)") or diag($eout);
    }
}

# ---- an nginx on a test prefix, loading the module through the enabled file
{
    local $ENV{NGINX_BIN} = $NGINX;
    my $t = ChannelsTest->new(module => 0, start => 0, main_conf => "include $LINK;", conf => <<'EOF');
    channel_zone zone=events:1m;
    server { listen 127.0.0.1:%%PORT_0%%; location ~ ^/events/(?<ch>\w+)$ { sse_channel $ch; } }
    server { listen 127.0.0.1:%%PORT_1%%; location ~ ^/pub/(?<ch>\w+)$ { publish_channel $ch; } }
EOF
    # load_module's relative path is under the prefix, as /usr/share/nginx/modules is for Debian's.
    symlink '/usr/lib/nginx/modules', $t->prefix . '/modules' or die "symlink: $!";
    $t->start;
    my $s = $t->sse_open('/events/news');
    is($s->status, 200, 'SSE subscriber 200');
    ok($t->publish('news', 'hello from the package'), 'publish 201');
    my $ev = $s->next_event(timeout => 5);
    is($ev && $ev->{data}, 'hello from the package', 'the subscriber receives it');
    $s->close;
    $t->finish;
}

# ---- remove: nothing of the package's files is left (it has no conffiles)
my (undef, $list) = run('dpkg', '-L', $PKG);
my (undef, $conffiles) = run('dpkg-query', '-W', '-f=${Conffiles}', $PKG);
is($conffiles, '', 'the package has no conffiles');
($rc, $out) = run(@apt, 'remove', $PKG);
is($rc, 0, 'apt-get remove') or diag($out);
my $removed = status();
like($removed, qr/^rc/, "removed: dpkg keeps its record until purge (status '$removed')");
my @left = grep { -e $_ && !-d $_ } split /\n/, $list;
is("@left", '', 'no file of the package is left after remove');
ok(!-e $LINK && !-l $LINK, 'the enabled link is gone');
ok(-l "$LINK.removed", 'Debian keeps the .removed marker (a re-install re-enables the module), '
    . 'which modules-enabled/*.conf does not include');
SKIP: {
    skip 'the system configuration failed nginx -t before', 1 if $base_rc != 0;
    my ($trc, $tout) = run($NGINX, '-t');
    is($trc, 0, 'nginx -t with the system configuration after remove') or diag($tout);
}

# ---- purge: nothing at all
($rc, $out) = run(@apt, 'purge', $PKG);
is($rc, 0, 'apt-get purge') or diag($out);
$installed = 2;
like(status(), qr/^(?:un|pn)?$/, 'dpkg no longer knows the package');
is(snapshot(), $snap, '/etc/nginx/modules-enabled, modules-available and /usr/lib/nginx/modules as before');
ok(!-e $DOC, "$DOC is gone");

my %before = map { $_ => 1 } @masters_before;
is(join("\n", grep { !$before{$_} } system_nginx_masters()), '',
    'no nginx started on the system configuration (the service was not started)');

done_testing;
