#!/bin/sh
# valgrind memcheck of a single-process nginx (master_process off; daemon off) with the module,
# driven over loopback through a representative subset: publish (POST/PUT, event types, content
# types, temp-file bodies, 400/405/413/507), channel info and DELETE, SSE (single, multi-channel,
# replay, gap, channel-deleted, client aborts, a never-reading client), long-poll (json/raw,
# immediate, waiting, timeout 204, 410, aborted), stats (JSON, Prometheus, listing), and a
# graceful stop with subscribers still connected (streams ended, long-polls answered 204).
#
#   tools/valgrind.sh            uses build/ngx_http_channels_module.so and /usr/sbin/nginx
#   CHANNELS_MODULE=... NGINX_BIN=... tools/valgrind.sh
#   VALGRIND_KEEP=1 keeps the work directory (config, logs, valgrind.log)
#
# Exit status 0 only if the driver's checks pass and valgrind reports no error at all. Leaks:
# "definitely lost" blocks allocated from the module's code are listed; more than
# VALGRIND_MODULE_LEAK_BLOCKS (default 8) of them fails the run — a per-request leak over
# hundreds of requests shows as hundreds of blocks, a few per-process objects left at exit
# do not.
#
# Noise outside the module would be suppressed by the reviewed list at the end of this file
# (copied to the work directory as nginx.supp); it is empty today: nginx, PCRE2 and glibc raise
# no memcheck error with this driver.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
MODULE=${CHANNELS_MODULE:-$repo/build/ngx_http_channels_module.so}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
LEAK_LIMIT=${VALGRIND_MODULE_LEAK_BLOCKS:-8}

command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)" >&2; exit 2; }
[ -f "$MODULE" ] || { echo "valgrind: no module at $MODULE (run make)" >&2; exit 2; }

work=$(mktemp -d /tmp/channels-valgrind-XXXXXX)
chmod 755 "$work"
mkdir -p "$work/conf" "$work/logs"
sed -n '/^# ---- suppressions ----$/,$p' "$0" | sed '1d; s/^#| \{0,1\}//' >"$work/nginx.supp"

export CHANNELS_MODULE="$MODULE" NGINX_BIN VG_WORK="$work" VG_REPO="$repo"
set +e
perl -I"$repo/t/lib" - <<'PERL'
use strict;
use warnings;
use ChannelsTest ();
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

my ($work, $module, $nginx) = @ENV{qw(VG_WORK CHANNELS_MODULE NGINX_BIN)};
$SIG{PIPE} = 'IGNORE';
my ($checks, @failed) = (0);
sub check { my ($ok, $what) = @_; $checks++; push @failed, $what unless $ok; print(($ok ? 'ok   ' : 'FAIL '), "$what\n"); $ok }

my @ports = map { my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1) or die; $s } 1 .. 2;
my ($pub, $sub) = map { $_->sockport } @ports;
close $_ for @ports;

open my $cf, '>', "$work/conf/nginx.conf" or die;
print $cf <<"CONF";
load_module $module;
master_process off;
daemon off;
worker_processes 1;
error_log $work/logs/error.log info;
pid $work/logs/nginx.pid;
events { worker_connections 256; }
http {
    access_log $work/logs/access.log;
    client_body_temp_path $work/body;
    channel_zone zone=vg:1m history=50 ttl=1h;
    channel_zone zone=fl:1m history=5 ttl=1h;
    longpoll_timeout 2s;
    sse_ping 1s;
    sse_retry 2s;
    server {
        listen 127.0.0.1:$sub;
        location ~ ^/events/(?<ch>[^/]+)\$ { sse_channel \$ch zone=vg; }
        location = /multi                 { sse_channel \$arg_ch zone=vg; }
        location ~ ^/poll/(?<ch>[^/]+)\$   { longpoll_channel \$ch zone=vg; }
        location ~ ^/raw/(?<ch>[^/]+)\$    { longpoll_channel \$ch format=raw zone=vg; }
        location ~ ^/oldest/(?<ch>[^/]+)\$ { channel_first_message oldest; sse_channel \$ch zone=vg; }
        location ~ ^/flood/(?<ch>[^/]+)\$  { sse_channel \$ch zone=fl; }
    }
    server {
        listen 127.0.0.1:$pub;
        client_max_body_size 2m;
        client_body_buffer_size 4k;
        location ~ ^/pub/(?<ch>[^/]+)\$    { publish_channel \$ch zone=vg; }
        location = /pub                   { publish_channel \$arg_ch zone=vg; }
        location ~ ^/fpub/(?<ch>[^/]+)\$   { publish_channel \$ch zone=fl; }
        location = /stats                 { channel_stats; }
        location = /vgstats               { channel_stats zone=vg; }
    }
}
CONF
close $cf;

my @vg = ('valgrind', '--tool=memcheck', '--error-exitcode=99', '--track-origins=yes', '--num-callers=40',
          '--leak-check=full', '--show-leak-kinds=definite', '--errors-for-leak-kinds=none',
          "--suppressions=$work/nginx.supp", '--gen-suppressions=all', "--log-file=$work/valgrind.log");
my $pid = fork // die;
if (!$pid) {
    open STDIN, '<', '/dev/null';
    open STDOUT, '>', "$work/logs/stdout.log";
    open STDERR, '>&', \*STDOUT;
    exec @vg, $nginx, '-p', "$work/", '-c', 'conf/nginx.conf' or POSIX::_exit(127);
}
sub up { my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $_[0], Timeout => 1); $s ? (close($s), 1) : 0 }
my $deadline = time + 60;
sleep 0.2 until (up($pub) && up($sub)) || time > $deadline || waitpid($pid, POSIX::WNOHANG()) == $pid;
die "nginx under valgrind did not start; see $work/logs\n" unless up($pub) && up($sub);

sub http {
    my ($m, $path, %o) = @_;
    my $port = delete $o{port} // $pub;
    my $c = ChannelsTest::Conn->new(port => $port, timeout => 30);
    my $r = $c->request($m, $path, timeout => 30, %o, close => 1);
    $c->close;
    return $r;
}
sub sse { ChannelsTest::SSE->open(port => $sub, path => $_[0], timeout => 30, @_[1 .. $#_]) }
# The next event with data (skips the retry: block that sse_retry puts first).
sub ev { my ($s, $t) = @_; while (my $e = $s->next_event(timeout => $t // 10)) { return $e if defined $e->{data} } return {} }
sub poll {
    my ($path, $cursor) = @_;
    my $c = ChannelsTest::Conn->new(port => $sub, timeout => 30);
    my $r = $c->request(GET => $path, timeout => 30, close => 1, headers => defined $cursor ? { 'Last-Event-ID' => $cursor } : {});
    $c->close;
    $r->{json} = ChannelsTest::json_decode($r->{body}) if ($r->{headers}{'content-type'} // '') =~ /json/;
    return $r;
}
sub start_poll {
    my ($path, $cursor) = @_;
    my $c = ChannelsTest::Conn->new(port => $sub, timeout => 30);
    $c->send_request(GET => $path, close => 1, headers => defined $cursor ? { 'Last-Event-ID' => $cursor } : {});
    return $c;
}
sub zone_stat { my $r = http(GET => '/stats'); my ($z) = grep { $_->{name} eq $_[0] } @{ ($r->{json} || {})->{zones} || [] }; $z || {} }
sub wait_until { my ($cond, $t) = @_; my $d = time + ($t // 20); while (time < $d) { return 1 if $cond->(); sleep 0.05 } $cond->() }

# ---- publish
my $p1 = http(POST => '/pub/news', body => 'hello');
check($p1->{status} == 201, 'publish 201');
check(http(PUT => '/pub/news', body => "line1\nline2\r\nline3", headers => { 'Event-Type' => 'upd' })->{status} == 201, 'PUT with an event type');
check(http(POST => '/pub/news?event=ev%20t', body => '{"a":1}', headers => { 'Content-Type' => 'application/json' })->{status} == 201, '?event= and a content type');
check(http(POST => '/pub/news', body => 'B' x 20000)->{status} == 201, 'a body through a temp file');
check(http(POST => '/pub/bin', body => join('', map { chr } 0 .. 255))->{status} == 201, 'binary data');
check(http(POST => '/pub/news', body => '')->{status} == 201, 'empty data');
check(http(POST => '/pub/a%20b', body => 'x')->{status} == 400, 'bad channel id 400');
check(http(POST => '/pub?ch=a,b', body => 'x')->{status} == 400, 'two channels 400');
check(http(POST => '/pub/news?event=' . ('e' x 65), body => 'x')->{status} == 400, 'long event type 400');
check(http(POST => '/pub/news', body => 'x', headers => { 'Content-Type' => 'c' x 300 })->{status} == 400, 'long content type 400');
check(http(PATCH => '/pub/news', body => 'x')->{status} == 405, 'PATCH 405');
check(http(POST => '/pub/news', body => 'x' x (2100 * 1024))->{status} == 413, '413 over client_max_body_size');
check(http(POST => '/pub/big', body => 'x' x (1100 * 1024))->{status} == 507, '507 larger than the zone');
check(http(GET => '/pub/news')->{status} == 200, 'channel info 200');
check(http(HEAD => '/pub/news')->{status} == 200, 'channel info HEAD');
check(http(GET => '/pub/none')->{status} == 404, 'channel info 404');

# ---- SSE
my $s1 = sse('/events/news');
my $s2 = sse('/multi?ch=news,other,bin');
my $s3 = sse('/events/news', headers => { 'Last-Event-ID' => $p1->{json}{id} });
my $s4 = sse('/oldest/bin');
check($s1->status == 200 && $s2->status == 200 && $s3->status == 200 && $s4->status == 200, 'SSE subscribers 200');
my @replay = grep { defined $_->{data} } $s3->events_for(timeout => 3);
check(join('|', map { length $_->{data} } @replay) eq '17|7|20000|0', 'SSE replay after a cursor: the 4 newer messages');
check((ev($s4)->{data} // '') eq join('', map { chr } 0 .. 255) =~ s/\r\n|\r/\n/gr, 'first_message oldest replays binary data');
my $idle = ChannelsTest::Conn->new(port => $sub, rcvbuf => 4096);
$idle->send_request(GET => '/flood/f');          # never reads
my $aborted = sse('/events/news');
$aborted->close;                                  # client gone before any message
my $p2 = http(POST => '/pub/news', body => "live\n\nid: 999");
check((ev($s1)->{data} // '') eq "live\n\nid: 999", 'SSE live message');
check((ev($s2)->{event} // '') eq 'news', 'multi-channel event named by its channel');
# the never-reading client falls more than the kernel's buffer + 1 MiB behind: cut off
http(POST => '/fpub/f', body => 'F' x 60000) for 1 .. 100;
check(wait_until(sub { (zone_stat('fl')->{dropped_slow} // 0) == 1 }, 30), 'the never-reading client was cut off (dropped_slow 1)');
check(defined($s1->next_block(timeout => 5)), 'ping on an idle stream (sse_ping 1s)');

# gap: a cursor older than what history (50) still holds
my $first = http(POST => '/pub/gappy', body => 'g0')->{json}{id};
http(POST => '/pub/gappy', body => "g$_") for 1 .. 60;
my $s5 = sse('/events/gappy', headers => { 'Last-Event-ID' => $first });
check((ev($s5)->{event} // '') eq 'channel-gap', 'SSE channel-gap');
$s5->close;

# ---- long-poll
my $r = poll('/poll/news', '1-0');
check($r->{status} == 200 && $r->{json} && @{ $r->{json}{messages} }, 'long-poll json answered at once');
check(scalar(poll('/poll/bin', '1-0')->{body} =~ /"encoding":"base64"/), 'long-poll json base64');
check(poll('/raw/news', '1-0')->{status} == 200, 'long-poll raw');
sub subs_of { (http(GET => "/pub/$_[0]")->{json} || {})->{subscribers} // -1 }
my $n0 = subs_of('news');
my $w = start_poll('/poll/news', $p2->{json}{id});
my $w2 = start_poll('/raw/other');
check(wait_until(sub { subs_of('news') == $n0 + 1 && subs_of('other') >= 1 }), 'long-polls waiting');
http(POST => '/pub/news', body => 'wake');
my $wr = $w->read_response(timeout => 30);
check($wr->{status} == 200 && $wr->{body} =~ /wake/, 'waiting long-poll woken by a publish');
check(poll('/poll/quiet')->{status} == 204, 'long-poll timeout 204');
my $gone = start_poll('/poll/doomed');
my $gone2 = start_poll('/poll/doomed');
check(wait_until(sub { subs_of('doomed') == 2 }), 'two long-polls waiting on doomed');
$gone2->close;                                    # a waiting client that leaves
check(wait_until(sub { subs_of('doomed') == 1 }), 'the one that left is forgotten');
my $doomed_sse = sse('/multi?ch=doomed,news');
check(http(DELETE => '/pub/doomed')->{status} == 200, 'DELETE 200');
check($gone->read_response(timeout => 30)->{status} == 410, 'long-poll 410 on delete');
check((ev($doomed_sse)->{event} // '') eq 'channel-deleted', 'SSE channel-deleted');
check(http(DELETE => '/pub/doomed')->{status} == 404, 'DELETE again 404');
check(poll('/poll/a%2C%2Cb')->{status} == 400, 'long-poll bad list 400');
check(http(POST => '/events/news', port => $sub, body => 'x')->{status} == 405, 'POST on SSE 405');
check(http(HEAD => '/events/news', port => $sub)->{status} == 200, 'HEAD on SSE');
check(http(HEAD => '/poll/news', port => $sub)->{status} == 200, 'HEAD on long-poll');

# ---- stats
my $st = http(GET => '/stats');
check($st->{status} == 200 && $st->{json}, 'stats JSON');
check(http(GET => '/stats?format=prometheus')->{body} =~ /nginx_channels_published_total/, 'stats Prometheus');
my $ls = http(GET => '/vgstats?channels&limit=2&prefix=n');
check($ls->{status} == 200 && $ls->{json}, 'stats channel listing');
check(http(GET => '/vgstats?channels&after=news')->{status} == 200, 'listing after=');
check(http(GET => '/vgstats?channels&limit=0')->{status} == 400, 'listing limit=0 400');
check(http(GET => '/vgstats?format=prometheus')->{status} == 200, 'one zone, Prometheus');

# ---- stop with subscribers connected. (Without a master process nginx has no graceful
# shutdown: -s quit runs exit_process and exits; the streams just close. The graceful path is
# covered by the t/ suite under ASan.)
$n0 = subs_of('news');
my $w3 = start_poll('/poll/news', $wr->{headers}{'last-event-id'});
check(wait_until(sub { subs_of('news') == $n0 + 1 }), 'a long-poll waiting at exit');
system($nginx, '-p', "$work/", '-c', 'conf/nginx.conf', '-s', 'quit') == 0 or check(0, 'nginx -s quit');
check($s1->wait_eof(timeout => 60), 'SSE stream closed at exit');
$_->close for $s2, $s3, $s4, $doomed_sse, $w2, $w3;
$idle->close;
$deadline = time + 120;
sleep 0.2 until waitpid($pid, POSIX::WNOHANG()) == $pid || time > $deadline;
my $status = $? >> 8;
if (time > $deadline) { kill 'KILL', $pid; waitpid $pid, 0; check(0, 'nginx exited after -s quit'); }
print "checks: $checks, failed: " . scalar(@failed) . "\n";
print "  failed: $_\n" for @failed;
open my $sf, '>', "$work/exit-status" or die;
print $sf "$status\n";
close $sf;
exit(@failed ? 1 : 0);
PERL
driver=$?
set -e

status=$(cat "$work/exit-status" 2>/dev/null || echo '?')
log="$work/valgrind.log"
errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -1)
echo "valgrind: nginx exited with $status; ERROR SUMMARY: ${errors:-?} errors (after suppressions)"
grep -E 'definitely lost:|indirectly lost:|suppressed:' "$log" | sed 's/^==[0-9]*== */valgrind: /' || true

# Definitely-lost blocks whose allocation stack passes through the module.
module_leaks=$(awk '
    /blocks? are definitely lost/ {
        inrec = 1; mod = 0; blocks = $0
        sub(/ blocks? are definitely lost.*/, "", blocks); sub(/.* in /, "", blocks); gsub(",", "", blocks)
        next
    }
    inrec && /(ngx_http_channels|chn::|channels::)/ { mod = 1 }
    inrec && /^==[0-9]+== $/ { if (mod) total += blocks; inrec = 0 }
    END { print total + 0 }' "$log")
echo "valgrind: definitely lost blocks allocated by the module: $module_leaks (limit $LEAK_LIMIT)"
if [ "$module_leaks" -gt 0 ]; then
    awk '/blocks? are definitely lost/ { rec = $0 "\n"; inrec = 1; next }
         inrec { rec = rec $0 "\n"; if ($0 ~ /^==[0-9]+== $/) { if (rec ~ /(ngx_http_channels|chn::|channels::)/) printf "%s", rec; inrec = 0 } }' "$log" | head -80
fi

rc=0
if [ "$driver" -ne 0 ]; then echo "valgrind: FAIL: driver checks failed" >&2; rc=1; fi
if [ "${errors:-1}" != 0 ]; then
    echo "valgrind: FAIL: memcheck errors; first ones:" >&2
    grep -B2 -A40 -m3 -E '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param|Mismatched|Source and dest)' "$log" | head -150 >&2
    rc=1
fi
if [ "$module_leaks" -gt "$LEAK_LIMIT" ]; then echo "valgrind: FAIL: module leaks over the limit" >&2; rc=1; fi
if grep -qE '\[(alert|emerg|crit)\]' "$work/logs/error.log"; then
    echo "valgrind: FAIL: error.log has alert/emerg/crit lines:" >&2
    grep -E '\[(alert|emerg|crit)\]' "$work/logs/error.log" | head >&2
    rc=1
fi
if [ "$rc" = 0 ] && [ -z "${VALGRIND_KEEP:-}" ]; then
    rm -rf "$work"
    echo "valgrind: PASS"
else
    echo "valgrind: work directory kept: $work"
fi
exit $rc

# ---- suppressions ----
# Reviewed list (valgrind 3.19, Debian 12's nginx 1.22.1, glibc 2.36): with this driver
# nginx, PCRE2 and glibc raise no memcheck error, so nothing is suppressed. An entry added
# here must name a frame outside the module and say why it is not the module's fault.
# Entries are the lines starting with "#|" (the rest stays a comment in the file valgrind reads).
# The entry below only keeps the file non-empty; it can never match.
#| {
#|    channels-placeholder-never-matches
#|    Memcheck:Addr1
#|    fun:channels_valgrind_no_such_function
#| }
