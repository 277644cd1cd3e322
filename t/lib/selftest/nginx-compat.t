#!/usr/bin/perl
# t/lib/NginxCompat.pm: configurations written for current nginx, rewritten for an older one
# (`http2 on;` -> `listen ... http2` before 1.25.1); then the nginx under test (NGINX_BIN)
# takes a rewritten HTTP/2 server without a warning, and the harness fails a log holding a
# deprecation warning.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use Test::More;
use NginxCompat qw(nginx_version version_cmp conf_for_version);
use ChannelsTest;

is(version_cmp('1.22.1', '1.25.1'), -1, 'version_cmp: 1.22.1 < 1.25.1');
is(version_cmp('1.25.1', '1.25.1'), 0, 'version_cmp: equal');
is(version_cmp('1.31.4', '1.25.10'), 1, 'version_cmp: numeric, not textual');

my $conf = <<'EOF';
server {
    listen 127.0.0.1:8443 ssl;            # comment; with http2 on; in it
    listen [::1]:8443 ssl sndbuf=32k;
    http2 on;   # the server speaks HTTP/2
    location / { return 200 "http2 on;"; }
}
server {
    listen 8080;
    http2 off;
    location /x { listen_not_a_directive; }
}
server { listen 8081; http2 on; }
EOF

is(conf_for_version($conf, '1.25.1'), $conf, '1.25.1 and later: unchanged');
is(conf_for_version($conf, '1.31.4'), $conf, '1.31.4: unchanged');

my $old = conf_for_version($conf, '1.22.1');
is($old, <<'EOF', '1.22.1: http2 on; becomes a listen parameter of its own server only');
server {
    listen 127.0.0.1:8443 ssl http2;            # comment; with http2 on; in it
    listen [::1]:8443 ssl sndbuf=32k http2;
    location / { return 200 "http2 on;"; }
}
server {
    listen 8080;
    location /x { listen_not_a_directive; }
}
server { listen 8081 http2;  }
EOF
is(conf_for_version("listen 1 http2;\nhttp2 on;\n", '1.22.1'), "listen 1 http2;\n",
    'a listen that already has http2 keeps one');

my $nginx = $ENV{NGINX_BIN} || '/usr/sbin/nginx';
my $version = nginx_version($nginx);
like($version, qr/^\d+\.\d+\.\d+$/, "nginx_version of $nginx: $version");

# h2c (HTTP/2 without TLS) needs no certificate: the same statements as a TLS server.
my $t = ChannelsTest->new(module => 0, start => 0, conf => <<'EOF');
    server {
        listen 127.0.0.1:%%PORT_0%%;
        http2 on;
        location / { return 200 "ok\n"; }
    }
EOF
my ($ok, $out) = $t->test_config;
ok($ok, "nginx $version takes the HTTP/2 server as written for it") or diag($out);
unlike($out, qr/\[warn\]/, "nginx $version: no warning") or diag($out);
my $written = $t->conf_text;
if (version_cmp($version, '1.25.1') < 0) {
    like($written, qr/listen 127\.0\.0\.1:\d+ http2;/, 'older nginx: written as a listen parameter');
} else {
    like($written, qr/^\s*http2 on;/m, 'current nginx: written as http2 on;');
}
$t->start;
my $port = $t->port(0);
my $h2 = `curl -sS --max-time 10 --http2-prior-knowledge -w '%{http_version} %{http_code}' http://127.0.0.1:$port/ 2>&1`;
is($h2, "ok\n2 200", 'the server answers over HTTP/2');
$t->finish;

# The log check counts a deprecation warning as a failure: a config that prints one was
# not written for the nginx it runs on. Checked on a log line, with any nginx.
{
    my $probe = ChannelsTest->new(module => 0, conf => 'server { listen 127.0.0.1:%%PORT_0%%; }');
    my $log = $probe->prefix . '/logs/error.log';
    open(my $fh, '>>', $log) or die "$log: $!";
    print $fh '2026/12/06 12:00:00 [warn] 1#1: the "listen ... http2" directive is deprecated, '
        . "use the \"http2\" directive instead in conf/nginx.conf:3\n";
    close $fh;
    my @problems = $probe->log_problems;
    ok((grep { /is deprecated/ } @problems), 'a deprecation warning in the log is a problem');
    $probe->allow_log(qr/planted|is deprecated/);
    $probe->finish;
}

done_testing;
