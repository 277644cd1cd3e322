#!/usr/bin/perl
# A real browser: headless Chromium (t/js/browser-test.mjs, playwright-core driving Debian's
# /usr/bin/chromium) against conf-examples/demo.conf on free ports, with one more server:
# 1. the demo page: live events, the publish form reaching both views, the status panel, the
#    long-poll fallback, and a screenshot saved as build/demo-screenshot.png;
# 2. a page with a bare EventSource (README "SSE", issue 3): it receives messages, survives
#    `nginx -s reload` (done here when the script prints RELOAD) through its own automatic
#    reconnect (sse_retry 200ms) and receives what was published meanwhile, exactly once. The
#    reconnect's Last-Event-ID is checked in an access log.
# Skips loudly if Chromium cannot start.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_parse slurp);
use NodeRunner qw(repo demo_nginx report run_node_with_reloads);

my $REPO = repo();
my $SCRIPT = 'browser-test.mjs';

# The bare EventSource's server: its own zone, so the demo's history bounds nothing here.
my $t = demo_nginx(extra => <<'CONF');
    channel_zone zone=events:4m history=1000 ttl=1h;
    log_format sse '"$request_uri" $status "$http_last_event_id"';
    server {
        listen 127.0.0.1:%%PORT_2%%;
        root %%PREFIX%%/html;
        location / { }
        location ~ ^/events/(?<ch>[^/]+)$ {
            sse_retry 200ms;
            access_log logs/sse.log sse;
            sse_channel $ch zone=events;
        }
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch zone=events; }
    }
CONF

mkdir $t->prefix . '/html' or die "mkdir: $!";
open my $html, '>', $t->prefix . '/html/sse-page.html' or die "page: $!";
print $html <<'HTML';
<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>sse test page</title></head>
<body>
<script>
  window.got = []; window.opens = 0; window.errors = 0; window.openTimes = []; window.errorTimes = [];
  window.es = window.firstEs = new EventSource('/events/' + location.hash.slice(1));
  window.es.onopen = function () { window.opens++; window.openTimes.push(Date.now()); };
  window.es.onerror = function () { window.errors++; window.errorTimes.push(Date.now()); };
  window.es.onmessage = function (e) { window.got.push({ id: e.lastEventId, data: e.data }); };
</script>
</body></html>
HTML
close $html;

mkdir "$REPO/build";
my $shot = "$REPO/build/demo-screenshot.png";
unlink $shot;
my ($out) = run_node_with_reloads($t, $SCRIPT, 180, $shot, 'http://127.0.0.1:' . $t->port(2));
my @lines = @$out;
my ($got) = map { /^GOTIDS (.*)/ ? $1 : () } @lines;
report($SCRIPT, grep { !/^GOTIDS / } @lines);
ok(-s $shot, "screenshot saved: $shot");

# The access log: the first request without Last-Event-ID, the reconnect with one the page had.
my @log = grep { m{^"/events/browser-} } split /\n/, slurp($t->prefix . '/logs/sse.log');
is(scalar @log, 2, 'two stream requests in the access log: the first and the reconnect') or diag explain \@log;
like($log[0] // '', qr/ 200 "-"$/, 'the first without Last-Event-ID');
my ($lei) = ($log[1] // '') =~ / 200 "([^"]*)"$/;
ok(defined $lei && scalar(() = id_parse($lei)), 'the reconnect sent Last-Event-ID: ' . ($lei // 'none'));
ok(defined $got && defined $lei && grep({ $_ eq $lei } split /,/, $got), 'an id the page had received');

done_testing;
