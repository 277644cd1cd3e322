#!/usr/bin/perl
# A real browser (issue 3): headless Chromium (Debian chromium, driven by playwright-core in
# t/js/sse-browser.mjs) loads a page served by this test's nginx; its EventSource receives
# messages, survives `nginx -s reload` through its own automatic reconnect (sse_retry 200ms)
# and receives what was published meanwhile, exactly once. The reconnect's Last-Event-ID is
# checked in an access log. Skips loudly if Chromium cannot start.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_parse);
use NodeRunner qw(repo report run_node_with_reloads);

my $SCRIPT = 'sse-browser.mjs';
NodeRunner::ensure_deps();

my $t = ChannelsTest->new(workers => 2, start => 0, conf => <<'CONF');
    channel_zone zone=events:4m history=1000 ttl=1h;
    log_format sse '"$request_uri" $status "$http_last_event_id"';
    types { text/html html; }
    server {
        listen 127.0.0.1:%%PORT_0%%;
        root %%PREFIX%%/html;
        location / { }
        location ~ ^/events/(?<ch>[^/]+)$ {
            sse_retry 200ms;
            access_log logs/sse.log sse;
            sse_channel $ch;
        }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$ { publish_channel $ch; }
        location = /stats              { channel_stats; }
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
$t->start;

my ($out) = run_node_with_reloads($t, $SCRIPT, 120);
my @lines = @$out;

my ($got) = map { /^GOTIDS (.*)/ ? $1 : () } @lines;
report($SCRIPT, grep { !/^GOTIDS / } @lines);

# The access log: the first request without Last-Event-ID, the reconnect with one the page had.
my @log = grep { m{^"/events/browser-} } split /\n/, do {
    open my $fh, '<', $t->prefix . '/logs/sse.log' or die "sse.log: $!"; local $/; <$fh>
};
is(scalar @log, 2, 'two stream requests in the access log: the first and the reconnect') or diag explain \@log;
like($log[0] // '', qr/ 200 "-"$/, 'the first without Last-Event-ID');
my ($lei) = ($log[1] // '') =~ / 200 "([^"]*)"$/;
ok(defined $lei && scalar(() = id_parse($lei)), 'the reconnect sent Last-Event-ID: ' . ($lei // 'none'));
ok(defined $got && defined $lei && grep({ $_ eq $lei } split /,/, $got), 'an id the page had received');

done_testing;
