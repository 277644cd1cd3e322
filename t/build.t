#!/usr/bin/perl
# The build itself (issue 14): the module exports only what nginx's load_module looks up
# (the linker version script written by `config`), every C++ unit was compiled with
# -std=c++17 (config.make), and a module built without hiredis (`make check-build`:
# CHANNELS_REDIS=no, as on a machine without libhiredis-dev) loads, serves, and refuses
# channel_redis at configuration time with a message saying why.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $module = $ENV{CHANNELS_MODULE} || "$FindBin::Bin/../build/ngx_http_channels_module.so";
my $noredis = $ENV{CHANNELS_MODULE_NOREDIS};

sub run_capture {
    my @cmd = @_;
    open(my $fh, '-|', @cmd) or die "$cmd[0]: $!";
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

# nginx's loader needs ngx_modules, ngx_module_names and ngx_module_order; the module
# structures (ngx_http_channels_module, and any ngx_http_channels_*_module beside it) are
# exported too. Nothing else: no C++ symbol, no helper.
sub check_exports {
    my ($so, $label) = @_;
    my ($rc, $out) = run_capture('nm', '-D', '--defined-only', $so);
    is($rc, 0, "$label: nm -D reads the module") or return;
    my @syms = map { (split ' ')[-1] } grep { /\S/ } split /\n/, $out;
    my @loader = grep { /^ngx_(modules|module_names|module_order)$/ } @syms;
    is(scalar @loader, 3, "$label: exports ngx_modules, ngx_module_names, ngx_module_order");
    ok((grep { $_ eq 'ngx_http_channels_module' } @syms), "$label: exports ngx_http_channels_module");
    my @other = grep { !/^ngx_(modules|module_names|module_order)$/ && !/^ngx_http_channels(_\w+)?_module$/ } @syms;
    is(scalar @other, 0, "$label: exports nothing else")
        or diag('also exported, e.g.: ' . join(' ', @other[0 .. ($#other < 4 ? $#other : 4)]));
}

check_exports($module, 'module');

# DW_AT_producer records each unit's compiler flags (the build uses -g).
{
    my ($rc, $out) = run_capture('readelf', '--debug-dump=info', $module);
    my @producers = $out =~ /DW_AT_producer\s*:.*?:\s*(GNU C\S* .*)$/mg;
    SKIP: {
        skip 'the module has no debug information (stripped)', 2 unless @producers;
        my @cxx = grep { /^GNU C\+\+/ } @producers;
        ok(scalar @cxx >= 9, 'C++ units in the debug information: ' . scalar @cxx);
        my @without = grep { !/ -std=c\+\+17\b/ } @cxx;
        is(scalar @without, 0, 'every C++ unit was compiled with -std=c++17')
            or diag(join "\n", @without[0 .. ($#without < 2 ? $#without : 2)]);
    }
}

sub needed_libs {
    my ($so) = @_;
    my (undef, $out) = run_capture('readelf', '-d', $so);
    return join ' ', $out =~ /\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g;
}

SKIP: {
    skip 'no module built without hiredis: `make check-build` builds one and runs this file', 11
        unless $noredis;
    like(needed_libs($module), qr/libhiredis/, 'the default build links hiredis (a build dependency)');
    check_exports($noredis, 'without hiredis');
    unlike(needed_libs($noredis), qr/hiredis/, 'without hiredis: not linked with libhiredis');

    local $ENV{CHANNELS_MODULE} = $noredis;
    my $zone = "channel_zone zone=events:1m;\n";
    my $t = ChannelsTest->new(start => 0, conf => $zone . <<'EOF');
    channel_redis zone=events url=redis://127.0.0.1:6379;
    server { listen 127.0.0.1:%%PORT_0%%; location / { sse_channel $arg_ch; } }
EOF
    my ($ok, $out) = $t->test_config;
    ok(!$ok, 'without hiredis: nginx -t refuses channel_redis');
    like($out, qr/\[emerg\] "channel_redis" directive is not available: .*built without hiredis.*libhiredis-dev/,
        'without hiredis: the [emerg] says why and what to install') or diag($out);

    my $s = ChannelsTest->new(conf => $zone . <<'EOF');
    server { listen 127.0.0.1:%%PORT_0%%; location ~ ^/events/(?<ch>\w+)$ { sse_channel $ch; } }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>\w+)$ { publish_channel $ch; }
        location = /stats { channel_stats; }
    }
EOF
    my $sub = $s->sse_open('/events/news');
    is($sub->status, 200, 'without hiredis: SSE subscriber 200');
    my $id = $s->publish('news', 'hello');
    my $ev = $sub->next_event(timeout => 5);
    is($ev && $ev->{data}, 'hello', 'without hiredis: the publish reaches the subscriber');
    my $z = $s->zone_stats('/stats', 'events', port => 1);
    ok($z && !exists $z->{redis}, 'without hiredis: stats carry no redis part');
    $sub->close;
    $s->finish;
}

done_testing;
