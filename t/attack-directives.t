#!/usr/bin/perl
# Issue 11, finding 6, the two new directives (README "Directives"):
#   channel_max_per_request N (1-64, default 64): a subscriber naming more channels gets 400
#     (duplicates count once);
#   channel_existing_only on: a subscriber naming a channel that does not exist (never
#     published, deleted, or collected) gets 404 at once instead of waiting for it.
# Both for SSE and long-poll; bad values fail `nginx -t`.
#
# Before the fix: neither directive existed (nginx does not start with them).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest;

my $CONF = <<'CONF';
    channel_zone zone=events:4m history=10 ttl=1h;
    longpoll_timeout 10s;
    sse_ping 0;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /list      { sse_channel $arg_ch; }
        location = /listpoll  { longpoll_channel $arg_ch; }
        location = /three     { sse_channel $arg_ch; channel_max_per_request 3; }
        location = /threepoll { longpoll_channel $arg_ch; channel_max_per_request 3; }
        location = /one       { sse_channel $arg_ch; channel_max_per_request 1; }
        location = /exist     { sse_channel $arg_ch; channel_existing_only on; }
        location = /existpoll { longpoll_channel $arg_ch; channel_existing_only on; }
        location = /existraw  { longpoll_channel $arg_ch format=raw; channel_existing_only on; }
        location /inherit {
            channel_max_per_request 2;
            channel_existing_only on;
            location = /inherit/sse { sse_channel $arg_ch; }
            location = /inherit/off { sse_channel $arg_ch; channel_existing_only off; }
        }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:-]+)$ { publish_channel $ch; }
        location = /stats                 { channel_stats; }
    }
CONF

my $t = ChannelsTest->new(workers => 1, start => 0, conf => $CONF);
my $started = $t->try_start;
ok($started, 'nginx starts with channel_max_per_request and channel_existing_only')
    or diag $t->startup_error;
if (!$started) {
    done_testing;
    exit;
}
my $mark = $t->log_mark;

sub ids { my ($prefix, $n) = @_; join ',', map { "$prefix$_" } 1 .. $n }

sub one_line { like($_[1] // '', qr/^[^\n]+\n?$/, "$_[0]: one-line reason") }

# ---------------------------------------------------------------- channel_max_per_request
{
    my $s = $t->sse_open('/list?ch=' . ids('d', 64));
    is($s->status, 200, 'default limit: 64 channels accepted');
    $s->close;
    $s = $t->sse_open('/list?ch=' . ids('d', 65));
    is($s->status, 400, 'default limit: 65 channels: 400');
    one_line('default limit, 65 channels', $s->body);
    $s->close;

    $s = $t->sse_open('/three?ch=a,b,c');
    is($s->status, 200, 'limit 3: 3 channels accepted');
    $s->close;
    $s = $t->sse_open('/three?ch=a,b,a,c,b');
    is($s->status, 200, 'limit 3: duplicates count once (a,b,a,c,b)');
    $s->close;
    $s = $t->sse_open('/three?ch=a,b,c,d');
    is($s->status, 400, 'limit 3: 4 channels: 400');
    one_line('limit 3, 4 channels', $s->body);
    $s->close;
    $s = $t->sse_open('/three?ch=a%2Cb%2Cc%2Cd');
    is($s->status, 400, 'limit 3: 4 channels with %2C: 400');
    $s->close;

    my $r = $t->poll('/threepoll?ch=a,b,c,d', timeout => 5);
    is($r->{status}, 400, 'long-poll, limit 3: 4 channels: 400');
    cmp_ok($r->{elapsed}, '<', 2, 'long-poll, limit 3: refused at once');
    one_line('long-poll, limit 3', $r->{body});
    my $p = $t->poll_start('/threepoll?ch=x1,x2,x3');
    ok($t->wait_for(sub { $t->subscribers('x3') == 1 }, timeout => 5), 'long-poll, limit 3: 3 channels wait');
    $t->publish('x3', 'three');
    is($p->result(timeout => 5)->{status}, 200, 'long-poll, limit 3: answered');

    $s = $t->sse_open('/one?ch=solo');
    is($s->status, 200, 'limit 1: one channel accepted');
    $s->close;
    $s = $t->sse_open('/one?ch=solo,duo');
    is($s->status, 400, 'limit 1: two channels: 400');
    $s->close;

    $s = $t->sse_open('/inherit/sse?ch=' . ids('i', 3));
    is($s->status, 400, 'limit inherited from the enclosing location (2): 3 channels: 400');
    $s->close;
}

# ---------------------------------------------------------------- channel_existing_only
{
    for my $loc ('/exist', '/existpoll', '/existraw') {
        my $t0 = Time::HiRes::time();
        my $r = $t->http(GET => "$loc?ch=nothere", timeout => 5);
        my $dt = Time::HiRes::time() - $t0;
        is($r->{status}, 404, "existing_only $loc: a channel never published: 404");
        cmp_ok($dt, '<', 2, "existing_only $loc: answered at once");
        one_line("existing_only $loc", $r->{body});
    }
    is($t->subscribers('nothere'), 0, 'existing_only: nothing subscribed to nothere');

    $t->publish('here', 'm1');
    my $s = $t->sse_open('/exist?ch=here');
    is($s->status, 200, 'existing_only: a published channel: 200');
    $t->publish('here', 'm2');
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{data}, 'm2', 'existing_only: it receives');
    $s->close;

    my $r = $t->http(GET => '/exist?ch=here,nothere', timeout => 5);
    is($r->{status}, 404, 'existing_only: one of several channels missing: 404');
    $r = $t->http(GET => '/existpoll?ch=here,nothere', timeout => 5);
    is($r->{status}, 404, 'existing_only: long-poll, one of several channels missing: 404');

    my $p = $t->poll_start('/existpoll?ch=here', headers => { 'Last-Event-ID' => '0-0' });
    $r = $p->result(timeout => 5);
    is($r->{status}, 200, 'existing_only: long-poll of a published channel: 200');

    # A channel only waited on elsewhere (a location without the directive) was never published.
    my $w = $t->sse_open('/list?ch=waited');
    is($w->status, 200, 'a subscriber elsewhere waits on "waited"');
    ok($t->wait_for(sub { $t->subscribers('waited') == 1 }, timeout => 5), 'it is counted');
    $r = $t->http(GET => '/exist?ch=waited', timeout => 5);
    is($r->{status}, 404, 'existing_only: a channel that only has waiting subscribers: 404');
    $w->close;

    # Deleted: 404 again.
    is($t->http(DELETE => '/pub/here', port => 1)->{status}, 200, 'DELETE here');
    $r = $t->http(GET => '/exist?ch=here', timeout => 5);
    is($r->{status}, 404, 'existing_only: a deleted channel: 404');
    $r = $t->http(GET => '/existpoll?ch=here', timeout => 5);
    is($r->{status}, 404, 'existing_only: long-poll of a deleted channel: 404');

    # off (default, and switched off inside an enclosing "on"): waits.
    $s = $t->sse_open('/list?ch=nothere2');
    is($s->status, 200, 'default (off): a channel that does not exist: 200, waiting');
    $s->close;
    $r = $t->http(GET => '/inherit/sse?ch=nothere3', timeout => 5);
    is($r->{status}, 404, 'existing_only inherited from the enclosing location: 404');
    $s = $t->sse_open('/inherit/off?ch=nothere4');
    is($s->status, 200, 'existing_only off inside an enclosing "on": 200');
    $s->close;
}

my @above = grep { /\[(warn|error|crit|alert|emerg)\]/ } split /\n/, $t->log_since($mark);
ok(!@above, 'refusals are logged at info at most') or diag join "\n", @above[0 .. ($#above < 4 ? $#above : 4)];

# ---------------------------------------------------------------- bad values fail nginx -t
for my $bad ('channel_max_per_request 0;', 'channel_max_per_request 65;', 'channel_max_per_request many;',
             'channel_existing_only maybe;') {
    my $c = ChannelsTest->new(workers => 1, start => 0, conf => <<"CONF");
    channel_zone zone=events:1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location = /x { sse_channel \$arg_ch; $bad }
    }
CONF
    my ($ok, $out) = $c->test_config;
    ok(!$ok, "nginx -t refuses \"$bad\"") or diag $out;
}
{
    my $c = ChannelsTest->new(workers => 1, start => 0, conf => <<'CONF');
    channel_zone zone=events:1m;
    channel_max_per_request 64;
    channel_existing_only off;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        channel_max_per_request 1;
        location = /x { sse_channel $arg_ch; channel_existing_only on; }
    }
CONF
    my ($ok, $out) = $c->test_config;
    ok($ok, 'both directives are accepted at http, server and location level') or diag $out;
}

done_testing;
