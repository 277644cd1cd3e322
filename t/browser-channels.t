#!/usr/bin/perl
# www/channels.js in headless Chromium (t/js/browser-channels-test.mjs) against
# conf-examples/demo.conf on free ports: multi-channel streams, channel-gap,
# channel-deleted, resuming across reconnects and across the switch to long polling,
# backoff, close(), fatal answers.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use NodeRunner qw(repo demo_nginx run_node report);

my $REPO = repo();
my $SCRIPT = 'browser-channels-test.mjs';

my $t = demo_nginx();

report($SCRIPT, run_node($SCRIPT, 'http://127.0.0.1:' . $t->port(0), 'http://127.0.0.1:' . $t->port(1)));

done_testing;
