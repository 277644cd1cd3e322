#!/usr/bin/perl
# The module's SSE streams read by the npm `eventsource` package in Node.js
# (t/js/eventsource-test.mjs) against conf-examples/demo.conf on free ports: data exactly
# as the WHATWG parser defines it (multi-line, CRLF, CR, unicode), event types,
# multi-channel event names, channel-deleted, reconnect with Last-Event-ID.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use NodeRunner qw(repo demo_nginx run_node report);

my $REPO = repo();
my $SCRIPT = 'eventsource-test.mjs';

my $t = demo_nginx();

report($SCRIPT, run_node($SCRIPT, 'http://127.0.0.1:' . $t->port(0), 'http://127.0.0.1:' . $t->port(1)));

done_testing;
