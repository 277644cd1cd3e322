#!/usr/bin/perl
# Token-protected channels in headless Chromium (t/js/browser-jwt-test.mjs) against
# conf-examples/demo.conf on free ports: EventSource with the cookie channels_jwt,
# channels.js renewing its token after token-expired (SSE, with access_token or the
# cookie) and after a 401 (long poll, Bearer), and the demo page's private panel.
# Tokens minted by the npm jose package.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use NodeRunner qw(demo_nginx run_node report);

my $SCRIPT = 'browser-jwt-test.mjs';
my $t = demo_nginx();
report($SCRIPT, run_node($SCRIPT, 'http://127.0.0.1:' . $t->port(0), 'http://127.0.0.1:' . $t->port(1)));

done_testing;
