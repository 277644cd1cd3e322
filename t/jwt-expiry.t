#!/usr/bin/perl
# Tokens that expire while a subscriber holds on (README "Authorization (JWT)"): an SSE stream ends
# at the token's exp with `event: token-expired` / `data: {"exp":N}` and then the end of the stream
# (HTTP/1.1 detached streams, HTTP/1.0 request-mode streams, HTTP/2); a long poll waits no longer
# than exp and then answers 204 with its cursor; a cached token is refused once its exp has passed.
# Tokens minted by the npm jose package.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(json_decode);
use Jwt qw(make_keys jose);

my $t = ChannelsTest->new(workers => 2, start => 0, conf => <<'EOF');
    channel_zone zone=z:4m;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        channel_auth jwt;
        channel_jwt_key %%PREFIX%%/keys/ec256.pub;
        location ~ ^/events/(?<ch>[\w.:@~-]+)$ { sse_channel $ch; }
        location ~ ^/poll/(?<ch>[\w.:@~-]+)$   { longpoll_channel $ch; longpoll_timeout 30s; }
    }

    server {   # the same over h2c (http2 on: every listen of its server)
        listen 127.0.0.1:%%PORT_2%%;
        http2 on;
        channel_auth jwt;
        channel_jwt_key %%PREFIX%%/keys/ec256.pub;
        location ~ ^/events/(?<ch>[\w.:@~-]+)$ { sse_channel $ch; }
        location ~ ^/poll/(?<ch>[\w.:@~-]+)$   { longpoll_channel $ch; longpoll_timeout 30s; }
    }

    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:@~-]+)$ { publish_channel $ch; }
    }
EOF

my $k = make_keys($t->prefix . '/keys');
$t->start;

my $grants = { subscribe => ['*'] };
# A token expiring $secs seconds from now (whole seconds, as exp is usually written).
sub token_for {
    my ($secs) = @_;
    my $exp = int(Time::HiRes::time()) + $secs;
    my $tok = jose({ tokens => { t => { alg => 'ES256', pkcs8 => $k->{ec256},
                                        claims => { sub => 'u', exp => $exp, channels => $grants } } } });
    return ($tok->{t}, $exp);
}

sub bearer { return { Authorization => "Bearer $_[0]" } }

# Reads events until token-expired (or the end); returns it and when it came.
sub until_expired {
    my ($s) = @_;
    while (my $ev = $s->next_event(timeout => 10)) {
        return ($ev, Time::HiRes::time()) if ($ev->{event} // '') eq 'token-expired';
    }
    return (undef, Time::HiRes::time());
}

sub expiry_ok {
    my ($s, $exp, $name) = @_;
    my ($ev, $when) = until_expired($s);
    ok($ev, "$name: token-expired arrives");
    is($ev && $ev->{data}, qq({"exp":$exp}), "$name: data carries exp");
    ok($ev && !defined $ev->{id}, "$name: no id (the client's cursor stays)");
    cmp_ok($when, '>=', $exp - 0.05, "$name: not before exp");
    cmp_ok($when, '<', $exp + 3, "$name: soon after exp");
    ok($s->wait_eof(timeout => 5), "$name: then the stream ends");
    ok($s->clean_end, "$name: cleanly");
}

# ---- SSE over HTTP/1.1 (the stream detaches from its request) ----

{
    my ($tok, $exp) = token_for(3);
    my $s = $t->sse_open('/events/a', headers => bearer($tok));
    is($s->status, 200, 'HTTP/1.1 stream: 200');
    ok($t->wait_for(sub { $t->subscribers('a') == 1 }), 'subscribed');
    $t->publish('a', 'before exp');
    my $ev = $s->next_event(timeout => 5);
    is($ev && $ev->{data}, 'before exp', 'HTTP/1.1 stream: delivers until exp');
    expiry_ok($s, $exp, 'HTTP/1.1 stream');
    ok($t->wait_for(sub { $t->subscribers('a') == 0 }), 'HTTP/1.1 stream: the subscriber is gone');
}

# ---- SSE over HTTP/1.0 (the stream stays a request) ----

{
    my ($tok, $exp) = token_for(2);
    my $s = $t->sse_open('/events/b', version => '1.0', headers => { %{ bearer($tok) }, Connection => 'close' });
    is($s->status, 200, 'HTTP/1.0 stream: 200');
    my ($ev, $when) = until_expired($s);
    ok($ev, 'HTTP/1.0 stream: token-expired arrives');
    is($ev && $ev->{data}, qq({"exp":$exp}), 'HTTP/1.0 stream: data carries exp');
    cmp_ok($when, '>=', $exp - 0.05, 'HTTP/1.0 stream: not before exp');
    ok($s->wait_eof(timeout => 5), 'HTTP/1.0 stream: then the connection closes');
}

# ---- SSE over HTTP/2 (curl) ----

SKIP: {
    my $v = `curl -V 2>&1`;
    skip 'curl without HTTP/2', 5 unless $v =~ /^Features:.*\bHTTP2\b/m;
    my $refused = `curl -sS -i --http2-prior-knowledge --max-time 10 http://127.0.0.1:@{[$t->port(2)]}/events/c 2>&1`;
    like($refused, qr{^HTTP/2 401}m, 'HTTP/2 without a token: 401');
    like($refused, qr/\r\n\r\ntoken required\n\z/, 'HTTP/2: the one-line body');
    my ($tok, $exp) = token_for(2);
    my $t0 = Time::HiRes::time();
    my $out = `curl -sS -N --http2-prior-knowledge --max-time 20 -H 'Authorization: Bearer $tok' http://127.0.0.1:@{[$t->port(2)]}/events/c 2>&1`;
    my $rc = $? >> 8;
    is($rc, 0, 'HTTP/2 stream: curl ends by itself (the stream ended)') or diag($out);
    like($out, qr/^event: token-expired\ndata: \{"exp":$exp\}\n\n\z/m, 'HTTP/2 stream: token-expired last');
    cmp_ok(Time::HiRes::time() - $t0, '<', 15, 'HTTP/2 stream: ended at exp, not at curl\'s limit');
}

# ---- long poll: no longer than exp ----

{
    my ($tok, $exp) = token_for(2);
    my $id = $t->publish('d', 'old');
    my $t0 = Time::HiRes::time();
    my $r = $t->poll('/poll/d', cursor => $id, headers => bearer($tok), timeout => 40);
    my $took = Time::HiRes::time() - $t0;
    is($r->{status}, 204, 'long poll: 204 at exp (longpoll_timeout is 30s)');
    is($r->{headers}{'last-event-id'}, $id, 'long poll: with its cursor');
    cmp_ok(Time::HiRes::time(), '>=', $exp - 0.05, 'long poll: not before exp');
    cmp_ok($took, '<', 10, 'long poll: well before longpoll_timeout');

    # The same token, cached by the worker that verified it, is refused after exp (both
    # workers are asked: a connection lands on either).
    for my $n (1 .. 4) {
        my $again = $t->http(GET => '/poll/d', headers => bearer($tok), timeout => 5);
        is($again->{status}, 401, "after exp, request $n: 401");
        is($again->{body}, "invalid token: token expired\n", "after exp, request $n: token expired");
    }
}

# A message published before exp still reaches a waiting long poll.
{
    my ($tok) = token_for(20);
    my $p = $t->poll_start('/poll/e', headers => bearer($tok), timeout => 10);
    ok($t->wait_for(sub { $t->subscribers('e') == 1 }), 'long poll waiting');
    $t->publish('e', 'in time');
    my $r = $p->result(timeout => 10);
    is($r->{status}, 200, 'long poll with a token still valid: 200');
    is($r->{json} && $r->{json}{messages}[0]{data}, 'in time', 'long poll: the message');
}

done_testing;
