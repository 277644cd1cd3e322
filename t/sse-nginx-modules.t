#!/usr/bin/perl
# SSE locations keep working with what nginx already does (README "Deployment and security", issue
# 3): auth_request (to a local location answering 204 or 403), limit_conn (the second stream gets
# 503; the slot is released when the stream ends), limit_req, add_header for CORS on the stream,
# allow/deny, and send_timeout closing a stream whose client stopped reading.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    limit_conn_zone $binary_remote_addr zone=perip:1m;
    limit_req_zone  $binary_remote_addr zone=slow:1m rate=1r/m;
    server {
        listen 127.0.0.1:%%PORT_0%% reuseport;

        location = /auth {
            internal;
            if ($http_x_token = "letmein") { return 204; }
            return 403;
        }
        location ~ ^/auth/(?<ch>[^/]+)$    { auth_request /auth; sse_channel $ch; }
        location ~ ^/limited/(?<ch>[^/]+)$ { limit_conn perip 1; sse_channel $ch; }
        location ~ ^/rate/(?<ch>[^/]+)$    { limit_req zone=slow; sse_channel $ch; }
        location ~ ^/cors/(?<ch>[^/]+)$ {
            add_header Access-Control-Allow-Origin "https://app.example";
            add_header Access-Control-Allow-Credentials true;
            sse_channel $ch;
        }
        location ~ ^/denied/(?<ch>[^/]+)$  { deny 127.0.0.1; allow all; sse_channel $ch; }
        location ~ ^/allowed/(?<ch>[^/]+)$ { allow 127.0.0.1; deny all; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% sndbuf=32k;    # what a stalled client does not take stays in nginx
        location ~ ^/st/(?<ch>[^/]+)$      { send_timeout 1s; sse_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

sub zone_subscribers { ($t->zone_stats('/stats', 'events', port => 1) || {})->{subscribers} // -1 }

# A stream that works: subscribed, a message arrives.
sub works {
    my ($s, $ch, $label) = @_;
    is($s->status, 200, "$label: 200");
    ok($t->wait_for(sub { $t->subscribers($ch) >= 1 }, timeout => 5), "$label: subscribed");
    my $id = $t->publish($ch, "to $ch");
    my $e = $s->next_event(timeout => 5);
    is($e && $e->{id}, $id, "$label: receives messages");
}

# ---- send_timeout closes a stream whose client stopped reading (HTTP/1.1 and HTTP/1.0)
{
    my @s = ($t->sse_open('/st/stalled', port => 2, rcvbuf => 4096),
             $t->sse_open('/st/stalled', port => 2, rcvbuf => 4096, version => '1.0'));
    ok($t->wait_for(sub { $t->subscribers('stalled') == 2 }, timeout => 5), 'two stalled subscribers (send_timeout 1s)');
    my $mark = $t->log_mark;
    my $c = $t->client(port => 1);
    my @st = map { $c->request(POST => '/pub/stalled', body => 'T' x (100 * 1024))->{status} } 1 .. 5;
    $c->close;
    is("@st", '201 201 201 201 201', '500 KiB published (under the 1 MiB cut-off)');
    my $t0 = Time::HiRes::time();
    ok($t->wait_for(sub { $t->subscribers('stalled') == 0 }, timeout => 10),
       sprintf('send_timeout closed both (%.1fs)', Time::HiRes::time() - $t0));
    like($t->log_since($mark), qr/\[info\].*timed out/, 'logged at info: timed out');
    $_->close for @s;
}

# ---- auth_request
{
    my $no = $t->sse_open('/auth/secret');
    is($no->status, 403, 'auth_request answering 403: 403');
    my $bad = $t->sse_open('/auth/secret', headers => { 'X-Token' => 'wrong' });
    is($bad->status, 403, 'auth_request, wrong token: 403');
    is($t->subscribers('secret'), 0, 'refused requests made no subscriber');
    my $yes = $t->sse_open('/auth/secret', headers => { 'X-Token' => 'letmein' });
    works($yes, 'secret', 'auth_request answering 204');
    is($yes->header('content-type'), 'text/event-stream; charset=utf-8', 'auth_request: the stream\'s own Content-Type');
    $yes->close;
    ok($t->wait_for(sub { $t->subscribers('secret') == 0 }, timeout => 5), 'auth_request stream closed: 0 subscribers');
}

# ---- limit_conn
{
    my $first = $t->sse_open('/limited/lc');
    works($first, 'lc', 'limit_conn, first stream');
    my $second = $t->sse_open('/limited/lc');
    is($second->status, 503, 'limit_conn 1: the second stream from the address gets 503');
    is($t->subscribers('lc'), 1, 'the refused one is no subscriber');
    my $id = $t->publish('lc', 'still there');
    my $e = $first->next_event(timeout => 5);
    is($e && $e->{id}, $id, 'the first stream goes on');
    $first->close;
    # Its slot is released when it ends.
    my $third;
    ok($t->wait_for(sub {
        $third->close if $third;
        $third = $t->sse_open('/limited/lc');
        $third->status == 200;
    }, timeout => 5), 'after the first closed, a new stream gets 200 (the slot was released)');
    works($third, 'lc', 'limit_conn, stream after release') if $third && $third->status == 200;
    $third->close if $third;
}

# ---- limit_req
{
    my $one = $t->sse_open('/rate/lr');
    works($one, 'lr', 'limit_req, first request');
    my $two = $t->sse_open('/rate/lr');
    is($two->status, 503, 'limit_req 1r/m: the second request gets 503');
    $one->close;
}

# ---- CORS headers on the stream
{
    my $s = $t->sse_open('/cors/co', headers => { Origin => 'https://app.example' });
    works($s, 'co', 'add_header CORS');
    is($s->header('access-control-allow-origin'), 'https://app.example', 'the stream carries Access-Control-Allow-Origin');
    is($s->header('access-control-allow-credentials'), 'true', 'and Access-Control-Allow-Credentials');
    is($s->header('cache-control'), 'no-cache', 'beside the module\'s own headers');
    $s->close;
    my $h = $t->http(HEAD => '/cors/co');
    is($h->{headers}{'access-control-allow-origin'}, 'https://app.example', 'HEAD: Access-Control-Allow-Origin too');
}

# ---- allow / deny
{
    my $d = $t->sse_open('/denied/ad');
    is($d->status, 403, 'deny 127.0.0.1: 403');
    is($t->subscribers('ad'), 0, 'no subscriber for the denied request');
    my $al = $t->sse_open("/allowed/ad");
    works($al, "ad", "allow 127.0.0.1");
    $al->close;
}

ok($t->wait_for(sub { zone_subscribers() == 0 }, timeout => 5), 'stats: 0 subscribers at the end');

done_testing;
