#!/usr/bin/perl
# The module's SSE streams read by the npm `eventsource` package, a WHATWG EventSource for
# Node.js (t/js/eventsource-test.mjs; README "SSE"): data with LF, CRLF, CR, blank lines,
# leading spaces, NUL and UTF-8 comes out exactly as the WHATWG parser defines; typed and
# multi-channel event names; channel-deleted; after a dropped connection, and after
# `nginx -s reload` (done here when the script prints RELOAD), the client reconnects on its own
# with Last-Event-ID and misses nothing; a malformed Last-Event-ID is not an error.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;
use NodeRunner qw(report run_node_with_reloads);

my $SCRIPT = 'eventsource-test.mjs';
NodeRunner::ensure_deps();

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:8m history=1000 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[^/]+)$ { sse_retry 300ms; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 1m;
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch; }
        location = /stats              { channel_stats; }
    }
CONF

my ($out, $reloads) = run_node_with_reloads($t, $SCRIPT, 120);
my @lines = @$out;
report($SCRIPT, @lines);
is($reloads, 1, 'the script asked for one reload') unless grep { /^SKIP / } @lines;
ok($t->wait_for(sub { ($t->zone_stats('/stats', 'events', port => 1) || {})->{subscribers} == 0 }, timeout => 5),
   'all clients gone: 0 subscribers');

done_testing;
