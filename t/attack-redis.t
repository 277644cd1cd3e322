#!/usr/bin/perl
# Issue 11, finding 13 (README "channel_redis": what a host reads from Redis): what a host reads
# from Redis is untrusted.
#
# Two nginx hosts share one Redis (prefix `atk:`). Entries are written straight into the
# shared log stream (`atk:#log`, fields c, e, t, d; see ARCHITECTURE.md "Redis"), as a hostile
# or buggy peer could:
#   - an event type holding CR/LF (would forge an `id:` line on SSE streams),
#   - a content type holding CRLF (would inject `Set-Cookie` into raw long-poll answers),
#   - an event type and a content type of 300 bytes (over the 255 a host stores),
#   - an id of 9223372036854775807-0 (far ahead of any clock).
# Each is skipped: never delivered (the SSE subscribers on both hosts and a waiting raw
# long-poll get the next legitimate message instead, their cursor is its id), one `error` log
# line per host and entry (at most one per worker), and publishing and delivery go on on
# every host; after the huge id, publishing continues from the clock.
#
# Before the fix: entries were barely checked. The CR/LF event type forged SSE fields (an
# `id:` moved clients' cursors), the CRLF content type injected a header, lengths over 255
# were truncated (garbled messages), and the huge id overflowed the id script so every later
# publish on every host answered 503.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_parse id_cmp);
use RedisServer;

RedisServer->skip_all_unless_available;

my $PREFIX = 'atk:';
my $redis = RedisServer->new;
my $extra = <<'HTTP';
    longpoll_timeout 10s;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location ~ ^/raw/(?<ch>[\w.:-]+)$ { longpoll_channel $ch format=raw; }
    }
HTTP
my $A = $redis->host(prefix => $PREFIX, http => $extra);
my $B = $redis->host(prefix => $PREFIX, http => $extra);
my %name = ($A => 'A', $B => 'B');

sub now_ms { int(Time::HiRes::time() * 1000) }

# Appends a hostile entry to the shared log after the newest id, as the id script would
# (and moves #last, as the script does), so that only its content is wrong.
sub inject {
    my (%f) = @_;
    my $last = $redis->command('GET', "${PREFIX}#last") // '0-0';
    my ($ms) = id_parse($last);
    $ms = now_ms() if now_ms() > $ms;
    my $id = ($ms + 1) . '-0';
    my $r = $redis->command('XADD', "${PREFIX}#log", $id, map { ($_, $f{$_}) } qw(c e t d));
    die 'XADD failed: ' . ($redis->error // '') . "\n" unless defined $r;
    $redis->command('SET', "${PREFIX}#last", $id);
    return $id;
}

my @sse = ($A->sse_open('/events/h'), $B->sse_open('/events/h'));
is($_->status, 200, 'an SSE subscriber of "h" on host ' . ($_ == $sse[0] ? 'A' : 'B')) for @sse;
ok($A->wait_for(sub { $A->subscribers('h') == 1 && $B->subscribers('h') == 1 }, timeout => 5), 'both counted');

# A legitimate message published on A must be what every subscriber gets next.
sub legit_next {
    my ($case, $raw) = @_;
    my $r = $A->http(POST => '/pub/h', port => 1, body => "after $case");
    is($r->{status}, 201, "$case: publishing goes on") or diag $r->{body};
    my $id = $r->{json} ? $r->{json}{id} : 'none';
    for my $i (0, 1) {
        my $host = $i ? 'B' : 'A';
        my $e = $sse[$i]->next_event(timeout => 5);
        ok($e && $e->{id} eq $id && ($e->{data} // '') eq "after $case",
           "$case: host ${host}'s SSE subscriber gets the legitimate message next, nothing else")
            or diag explain $e;
        my @other = $e ? grep({ $_->[0] !~ /^(?:id|data)$/ } @{ $e->{fields} || [] }) : ();
        ok($e && !defined $e->{event} && !@other, "$case: host $host: no other field in that event");
        is($sse[$i]->last_id, $id, "$case: host ${host}'s cursor is the legitimate id");
    }
    if ($raw) {
        my $r = $raw->result(timeout => 5);
        is($r->{status}, 200, "$case: host B's waiting raw long-poll answered");
        is($r->{body}, "after $case", "$case: with the legitimate message");
        # (an answer with the hostile entry leaves the legitimate message for the next poll)
        ok(!exists $r->{headers}{'set-cookie'}, "$case: no injected header");
        is($r->{headers}{'content-type'}, 'text/plain', "$case: its own content type");
    }
    return $id;
}

sub error_lines {
    my ($t, $mark) = @_;
    return scalar grep { /\[error\]/ } split /\n/, $t->log_since($mark);
}

my @cases = (
    ['CR/LF in the event type', e => "x\r\nid: 99999999999999-0\r\ndata: forged", t => '', d => 'evil'],
    ['CRLF in the content type', e => '', t => "text/plain\r\nSet-Cookie: stolen=1", d => 'evil'],
    ['a 300-byte event type', e => 'E' x 300, t => '', d => 'evil'],
    ['a 300-byte content type', e => '', t => 'text/' . ('x' x 295), d => 'evil'],
);
for my $c (@cases) {
    my ($case, %f) = @$c;
    $_->events_for(timeout => 0.3) for @sse;   # what an earlier case left (none once fixed)
    my %mark = ($A => $A->log_mark, $B => $B->log_mark);
    my $raw = $B->poll_start('/raw/h', port => 2);
    ok($B->wait_for(sub { $B->subscribers('h') == 2 }, timeout => 5), "$case: a raw long-poll waits on B");
    inject(c => 'h', %f);
    legit_next($case, $raw);
    for my $t ($A, $B) {
        my $n = error_lines($t, $mark{$t});
        ok($n >= 1 && $n <= 2, "$case: host $name{$t} logged it at error level ($n line(s), one per worker at most)");
    }
}

# ---- an id far ahead of any clock, written straight into the stream
{
    my %mark = ($A => $A->log_mark, $B => $B->log_mark);
    my $r = $redis->command('XADD', "${PREFIX}#log", '9223372036854775807-0', c => 'h', e => '', t => '', d => 'evil');
    ok(defined $r, 'an entry with id 9223372036854775807-0 is in the shared log');
    my $p;
    for my $t ($A, $B) {
        $p = $t->http(POST => '/pub/h', port => 1, body => "after the huge id on $name{$t}");
        is($p->{status}, 201, "publishing on host $name{$t} goes on (201)") or diag $p->{body};
        my ($ms) = id_parse($p->{json} ? $p->{json}{id} : '');
        ok($ms && abs($ms - now_ms()) < 86_400_000, "host $name{$t}: the new id is from the clock (" . ($p->{json}{id} // 'none') . ')');
        for my $i (0, 1) {
            my $e = $sse[$i]->next_event(timeout => 5);
            is($e && $e->{data}, "after the huge id on $name{$t}",
               "host " . ($i ? 'B' : 'A') . "'s subscriber gets it, and never the entry with the huge id");
        }
    }
    for my $t ($A, $B) {   # logged by whichever worker reads the entry: awaited
        my $n = 0;
        $t->wait_for(sub { ($n = error_lines($t, $mark{$t})) >= 1 }, timeout => 5);
        ok($n >= 1, "the huge id: host $name{$t} logged an error ($n line(s))");
    }
    $_->events_for(timeout => 0.3) for @sse;
    my $r = $A->http(POST => '/pub/h', port => 1, body => 'and again');
    is($r->{status}, 201, 'publishing on A still goes on');
    my $e = $sse[1]->next_event(timeout => 5);
    is($e && $e->{data}, 'and again', 'delivery across hosts goes on');
}

done_testing;
