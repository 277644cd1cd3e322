#!/usr/bin/perl
# The demo page in headless Chromium (t/js/browser-test.mjs, playwright-core driving
# /usr/bin/chromium) against conf-examples/demo.conf on free ports: live events, the
# publish form reaching both views, the status panel, the long-poll fallback, and a
# screenshot saved as build/demo-screenshot.png.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use NodeRunner qw(repo demo_nginx run_node report);

my $REPO = repo();
my $SCRIPT = 'browser-test.mjs';

my $t = demo_nginx();

mkdir "$REPO/build";
my $shot = "$REPO/build/demo-screenshot.png";
unlink $shot;
my @out = run_node($SCRIPT, 'http://127.0.0.1:' . $t->port(0), 'http://127.0.0.1:' . $t->port(1), $shot);
report($SCRIPT, @out);
ok(-s $shot, "screenshot saved: $shot") unless grep { /^SKIP / } @out;

done_testing;
