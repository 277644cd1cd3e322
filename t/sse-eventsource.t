#!/usr/bin/perl
# The npm `eventsource` client (t/js/sse-eventsource.mjs) against the module (issue 3): data
# with LF, CRLF, CR, blank lines, leading spaces, NUL and UTF-8 comes out exactly as the WHATWG
# parser defines; typed and multi-channel event names; after `nginx -s reload` (done here when
# the script prints RELOAD) the client reconnects on its own with Last-Event-ID and misses
# nothing; a malformed Last-Event-ID is not an error.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IPC::Open2 ();
use Time::HiRes ();
use ChannelsTest;
use NodeRunner qw(repo report);

my $SCRIPT = 'sse-eventsource.mjs';
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

# stderr joins stdout, so a script that fails outside a test still shows why (as notes)
my $pid = IPC::Open2::open2(my $from, my $to, 'sh', '-c', 'exec node "$@" 2>&1', 'node', repo() . "/t/js/$SCRIPT",
                            'http://127.0.0.1:' . $t->port(0), 'http://127.0.0.1:' . $t->port(1));
$to->autoflush(1);
my @lines;
my $buf = '';
my $deadline = Time::HiRes::time() + 90;
my $sel = IO::Select->new($from);
my $eof = 0;
my $reloads = 0;
while (!$eof && Time::HiRes::time() < $deadline) {
    next unless $sel->can_read(1);
    my $n = sysread($from, $buf, 4096, length $buf);
    $eof = 1 unless $n;
    while ($buf =~ s/^(.*)\n//) {
        my $l = $1;
        if ($l eq 'RELOAD') {
            my $ok = $t->reload(timeout => 15);
            $reloads++;
            print $to ($ok ? "RELOADED ok\n" : "RELOADED failed\n");
        } else {
            push @lines, $l;
        }
    }
}
if (!$eof) {
    kill 'TERM', $pid;
    push @lines, "FAIL $SCRIPT did not finish within 90s";
}
waitpid $pid, 0;
push @lines, 'EXIT ' . ($? >> 8);
report($SCRIPT, @lines);
is($reloads, 1, 'the script asked for one reload') unless grep { /^SKIP / } @lines;
ok($t->wait_for(sub { ($t->zone_stats('/stats', 'events', port => 1) || {})->{subscribers} == 0 }, timeout => 5),
   'all clients gone: 0 subscribers');

done_testing;
