#!/usr/bin/perl
# The deployment model and injection safety (README "Deployment and security", "Publishing", "SSE",
# "Errors and failures").
# - publish and stats exist only on the internal listener: the public server has no such
#   location (404), and its subscriber locations refuse to publish (405);
# - where one listener serves both, allow/deny and auth_request guard publish and stats, and a
#   refused request publishes nothing;
# - nothing a client sends through a channel id, an event type, a cursor or the data can add a
#   response header or start a new SSE field: CR/LF in ids and event types -> 400, data with
#   "\n\nid: 999\nevent: x\n" inside arrives as data lines of one event.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MIME::Base64 ();
use ChannelsTest qw(id_parse id_cmp json_decode);

sub is_id { my @p = id_parse($_[0]); return scalar(@p) == 2 }

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=sec:2m history=100 ttl=1h;
    longpoll_timeout 1s;
    server {                                   # public: subscribers only
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/events/(?<ch>[^/]+)$ { sse_channel $ch; }
        location = /multi                 { sse_channel $arg_ch; }
        location ~ ^/poll/(?<ch>[^/]+)$   { longpoll_channel $ch; }
        location ~ ^/raw/(?<ch>[^/]+)$    { longpoll_channel $ch format=raw; }
    }
    server {                                   # internal
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$    { publish_channel $ch; }
        location = /pub                   { publish_channel $arg_ch; }
        location = /stats                 { channel_stats; }
    }
    server {                                   # one listener, guarded locations
        listen 127.0.0.1:%%PORT_2%%;
        location ~ ^/events/(?<ch>[^/]+)$ { sse_channel $ch; }
        location ~ ^/pub/(?<ch>[^/]+)$    { allow 127.0.0.1; deny all; publish_channel $ch; }
        location ~ ^/locked/(?<ch>[^/]+)$ { deny 127.0.0.1; allow all; publish_channel $ch; }
        location ~ ^/authpub/(?<ch>[^/]+)$ { auth_request /auth; publish_channel $ch; }
        location = /auth {
            internal;
            if ($http_x_token = "s3cret") { return 204; }
            return 401;
        }
        location = /stats                 { deny all; channel_stats; }
        location = /open-stats            { allow 127.0.0.1; deny all; channel_stats; }
    }
CONF

sub enc {
    my $s = shift;
    $s =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

sub info { $t->http(GET => "/pub/$_[0]", port => 1) }

# ---------------------------------------------------------------- the public listener

# No location there: GET and POST get 404; nginx's static handler answers PUT and DELETE 405.
# Either way nginx answers with its own page, the module is never reached.
for my $m (qw(POST PUT DELETE GET)) {
    my $r = $t->http($m => '/pub/news', port => 0, ($m =~ /POST|PUT/ ? (body => 'evil') : ()));
    my $want = $m =~ /GET|POST/ ? 404 : 405;
    is($r->{status}, $want, "public listener: $m /pub/news -> $want (no such location)");
    like($r->{body}, qr/<center>nginx/, "public listener: $m /pub/news answered by nginx itself");
}
is($t->http(GET => '/stats', port => 0)->{status}, 404, 'public listener: /stats -> 404');
is($t->http(GET => '/channels/stats', port => 0)->{status}, 404, 'public listener: /channels/stats -> 404');
is(info('news')->{status}, 404, 'nothing was created through the public listener');

for my $path ('/events/news', '/poll/news', '/raw/news') {
    for my $m (qw(POST PUT DELETE)) {
        my $r = $t->http($m => $path, port => 0, ($m ne 'DELETE' ? (body => 'evil') : ()));
        is($r->{status}, 405, "public $m $path -> 405");
        is($r->{headers}{allow}, 'GET, HEAD', "public $m $path: Allow: GET, HEAD");
    }
}
my $ni = info('news');
ok($ni->{status} == 404 || ($ni->{json} && $ni->{json}{messages} == 0),
   'no message reached channel news through subscriber locations');

# ---------------------------------------------------------------- allow / deny / auth_request

my $guard_sub = $t->sse_open('/events/guarded', port => 2);
is($guard_sub->status, 200, 'a subscriber on the guarded listener');
is($t->http(POST => '/locked/guarded', port => 2, body => 'denied')->{status}, 403,
   'deny 127.0.0.1: publish -> 403');
is($t->http(DELETE => '/locked/guarded', port => 2)->{status}, 403, 'deny 127.0.0.1: DELETE -> 403');
is($t->http(POST => '/authpub/guarded', port => 2, body => 'no token')->{status}, 401,
   'auth_request without a token -> 401');
is($t->http(POST => '/authpub/guarded', port => 2, body => 'bad token', headers => { 'X-Token' => 'guess' })->{status},
   401, 'auth_request with a wrong token -> 401');
my $ok1 = $t->http(POST => '/authpub/guarded', port => 2, body => 'with token', headers => { 'X-Token' => 's3cret' });
is($ok1->{status}, 201, 'auth_request with the token -> 201');
my $ok2 = $t->http(POST => '/pub/guarded', port => 2, body => 'allowed');
is($ok2->{status}, 201, 'allow 127.0.0.1: publish -> 201');
is($t->http(GET => '/stats', port => 2)->{status}, 403, 'stats behind deny all -> 403');
is($t->http(GET => '/open-stats', port => 2)->{status}, 200, 'stats behind allow 127.0.0.1 -> 200');

my @got = map { $_->{data} } $guard_sub->events_for(timeout => 1);
is_deeply(\@got, ['with token', 'allowed'], 'the subscriber saw exactly the two authorised messages');
is(info('guarded')->{json}{messages}, 2, 'the channel holds exactly the two authorised messages');
$guard_sub->close;

# ---------------------------------------------------------------- header injection via channel ids

my $mark = $t->log_mark;
my @evil_ids = (
    "a\r\nSet-Cookie: pwned=1",
    "a\nX-Injected: 1",
    "a\rX-Injected: 1",
    "a\0b",
    "news\r\n\r\nHTTP 200 OK",
);
for my $id (@evil_ids) {
    (my $label = $id) =~ s/([^ -~])/sprintf('\\x%02x', ord $1)/ge;
    for my $req (["/events/" . enc($id), 0, 'sse path'], ["/multi?ch=" . enc("ok,$id"), 0, 'sse list'],
                 ["/poll/" . enc($id), 0, 'long-poll'], ["/pub/" . enc($id), 1, 'publish'],
                 ["/pub?ch=" . enc($id), 1, 'publish arg']) {
        my ($path, $port, $what) = @$req;
        my $r = $t->http(($what =~ /publish/ ? 'POST' : 'GET') => $path, port => $port,
                         ($what =~ /publish/ ? (body => 'x') : ()));
        is($r->{status}, 400, "$what, channel id \"$label\": 400");
        my @names = map { lc $_->[0] } @{ $r->{header_list} };
        ok(!grep({ /^(?:set-cookie|x-injected)$/ } @names), "$what, \"$label\": no injected header")
            or diag explain $r->{header_list};
        # NUL in the URI is refused by nginx itself (its HTML page); the module answers the rest.
        if ($r->{body} !~ /<center>nginx/) {
            ok($r->{body} =~ /\A[^\r\n]*\n\z/, "$what, \"$label\": one-line reason") or diag explain $r->{body};
        }
        unlike($r->{body}, qr/pwned|Injected|HTTP\/1/, "$what, \"$label\": the reason does not echo the input");
    }
}
# Raw CR/LF in the request line is nginx's to refuse.
my $raw = $t->raw_request("GET /events/a\rSet-Cookie:x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
ok($raw->{status} == 400 || $raw->{status} == 0, "raw CR in the request line: refused ($raw->{status})");
ok(!exists $raw->{headers}{'set-cookie'}, 'raw CR: no Set-Cookie header');

# Bad ids are client errors: logged at info, never above.
my $log = $t->log_since($mark);
like($log, qr/\[info\].*invalid channel id/, 'bad channel ids are logged at info');
unlike($log, qr/\[(?:error|crit|alert|emerg)\].*invalid channel/, '... and never above info');

# ---------------------------------------------------------------- event types

my $ev_sub = $t->sse_open('/events/evt');
is($ev_sub->status, 200, 'subscriber on channel evt');
my @evil_events = ("x\r\nid: 999", "x\ndata: evil", "x\rretry: 1", "x\0y", "x\r", "\n", "x\r\n\r\nevent: y");
for my $ev (@evil_events) {
    (my $label = $ev) =~ s/([^ -~])/sprintf('\\x%02x', ord $1)/ge;
    my $r = $t->http(POST => '/pub/evt?event=' . enc($ev), port => 1, body => 'evil');
    is($r->{status}, 400, "event type \"$label\" via ?event=: 400");
}
# Through the header: CR/LF cannot be sent in a header value; a bare CR or a NUL is refused by
# nginx's parser (400) before the module sees it.
for my $bytes ("x\ry", "x\0y") {
    (my $label = $bytes) =~ s/([^ -~])/sprintf('\\x%02x', ord $1)/ge;
    my $r = $t->raw_request("POST /pub/evt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        . "Event-Type: $bytes\r\nContent-Length: 4\r\n\r\nevil", port => 1);
    ok($r->{status} == 400 || $r->{status} == 0, "Event-Type header \"$label\": refused ($r->{status})");
}
my $good = $t->http(POST => '/pub/evt', port => 1, body => 'fine', headers => { 'Event-Type' => 'upd:ate' });
is($good->{status}, 201, 'a valid event type with a colon: 201');
my @evs = $ev_sub->events_for(timeout => 1);
is(scalar(@evs), 1, 'the subscriber got only the valid message');
is_deeply([ map { [ $_->{id}, $_->{event}, $_->{data} ] } @evs ], [ [ $good->{json}{id}, 'upd:ate', 'fine' ] ],
          'id, event type and data as published');
is(info('evt')->{json}{messages}, 1, 'refused publishes stored nothing');
$ev_sub->close;

# ---------------------------------------------------------------- SSE field injection through data

my @payloads = (
    "before\n\nid: 999\nevent: x\n",
    "\n\nid: 999\nevent: x\ndata: y\n\n",
    "a\r\n\r\nid: 999\r\nevent: x\r\n\r\n",
    "a\r\rid: 999\revent: x\r\r",
    "retry: 1\n\nid\nevent\n: comment\n\ndata:\n",
    "\r\n\n\r",
    "id: 999",
);
my $single = $t->sse_open('/events/inj');
my $multi = $t->sse_open('/multi?ch=inj,other');
is($single->status, 200, 'single-channel subscriber');
is($multi->status, 200, 'multi-channel subscriber');
my @ids;
for my $p (@payloads, 'after') {
    my $r = $t->http(POST => '/pub/inj', port => 1, body => $p);
    is($r->{status}, 201, 'publish a payload with SSE fields inside: 201');
    push @ids, $r->{json}{id};
}
for my $case ([ $single, 'single', undef ], [ $multi, 'multi', 'inj' ]) {
    my ($s, $label, $want_event) = @$case;
    for my $i (0 .. $#payloads + 1) {
        my $want = $i <= $#payloads ? $payloads[$i] : 'after';
        (my $norm = $want) =~ s/\r\n|\r/\n/g;
        my $e = $s->next_event(timeout => 5);
        ok($e, "$label: event $i arrives") or last;
        is($e->{id}, $ids[$i], "$label: event $i carries the publish id, not an injected one");
        is($e->{event}, $want_event, "$label: event $i: no injected event type");
        is($e->{data}, $norm, "$label: event $i: the payload arrives as data (line ends normalised)");
        my @names = map { $_->[0] } @{ $e->{fields} };
        is(scalar(grep { $_ eq 'id' } @names), 1, "$label: event $i has exactly one id field");
        is(scalar(grep { $_ ne 'id' && $_ ne 'data' && $_ ne 'event' } @names), 0,
           "$label: event $i has no other field (retry, unknown)") or diag explain $e->{fields};
        # (the stream's opening ":" flush comment and pings are bare colons)
        is(scalar(grep { $_ ne '' } @{ $e->{comments} }), 0, "$label: event $i: no comment line injected")
            or diag explain $e->{comments};
    }
}
$single->close;
$multi->close;

# The exact bytes, not normalised, through long-poll json and raw.
my $cursor = $ids[0];
for my $i (1 .. $#payloads) {
    my $r = $t->poll('/poll/inj', cursor => $ids[$i - 1]);
    is($r->{status}, 200, "long-poll after payload " . ($i - 1) . ": 200");
    my $m = $r->{json} ? $r->{json}{messages}[0] : {};
    is($m->{data}, $payloads[$i], "long-poll json: payload $i exact");
    is($m->{id}, $ids[$i], "long-poll json: payload $i id");
    my $raw = $t->poll('/raw/inj', cursor => $ids[$i - 1]);
    is($raw->{body}, $payloads[$i], "long-poll raw: payload $i exact");
    my @names = sort map { lc $_->[0] } @{ $raw->{header_list} };
    ok(!grep({ !/^(?:server|date|content-type|content-length|connection|cache-control|last-event-id|event-type)$/ } @names),
       "long-poll raw: payload $i adds no header") or diag explain \@names;
}

# JSON escaping of hostile data: the answer parses and round-trips every byte.
my @nasty = ("\"}],\"last_event_id\":\"1-0\",\"x\":[{\"", "back\\slash\"quote", "\x00\x01\x1f\x7f",
             "\xe2\x80\xa8\xe2\x80\xa9", "</script><script>", "\xff\xfe not utf-8 \xc3");
for my $i (0 .. $#nasty) {
    my $p = $t->http(POST => "/pub/nasty$i", port => 1, body => $nasty[$i]);
    is($p->{status}, 201, "publish hostile JSON payload $i");
    my $r = $t->poll("/poll/nasty$i", cursor => '1-0');
    ok($r->{json}, "payload $i: the long-poll answer is valid JSON") or diag $r->{body};
    my $m = $r->{json} ? $r->{json}{messages}[0] : {};
    my $data = ($m->{encoding} // '') eq 'base64' ? MIME::Base64::decode_base64($m->{data}) : $m->{data};
    if (($m->{encoding} // '') ne 'base64') {
        utf8::encode($data);
    }
    is($data, $nasty[$i], "payload $i round-trips");
    is($r->{json}{last_event_id}, $p->{json}{id}, "payload $i: last_event_id is the real id");
}

# ---------------------------------------------------------------- cursors are never reflected

my $newest = info('inj')->{json}{last_event_id};
for my $c ("<script>alert(1)</script>", "1-0 X-Injected: 1", "99999999999999999999999-1", "1-0\tx") {
    (my $label = $c) =~ s/([^ -~])/sprintf('\\x%02x', ord $1)/ge;
    my $r = $t->poll('/poll/inj', cursor => $c, timeout => 5);
    ok($r->{status} == 200 || $r->{status} == 204, "long-poll cursor \"$label\": $r->{status} (treated as absent)");
    my $h = $r->{headers}{'last-event-id'} // '';
    ok(is_id($h), "cursor \"$label\": the Last-Event-ID answered is an id the module made ($h)");
    ok(!exists $r->{headers}{'x-injected'}, "cursor \"$label\": no injected header");
}
my $r = $t->poll('/poll/inj?last_event_id=' . enc("1-0\r\nX-Injected: 1"), timeout => 5);
ok($r->{status} == 200 || $r->{status} == 204, "cursor argument with CRLF: $r->{status}");
ok(!exists $r->{headers}{'x-injected'}, 'cursor argument with CRLF: no injected header');
my $answered = $r->{headers}{'last-event-id'} // '';
ok(is_id($answered), 'cursor argument with CRLF: Last-Event-ID is a real id');
ok(is_id($answered) && id_cmp($answered, $newest) >= 0,
   'malformed cursor = no cursor: the answered cursor misses nothing of the channel');

# ---------------------------------------------------------------- stats with hostile arguments

for my $q ('channels&prefix=' . enc("\"}]\r\n"), 'channels&after=' . enc("\"\\\0"), 'channels&limit=-1',
           'channels&limit=99999999999999999999', 'format=' . enc("prometheus\r\nX-Injected: 1")) {
    my $s = $t->http(GET => "/stats?$q", port => 1);
    ok($s->{status} == 200 || $s->{status} == 400, "stats ?$q: $s->{status}");
    ok(!exists $s->{headers}{'x-injected'}, "stats ?$q: no injected header");
    if ($s->{status} == 200 && ($s->{headers}{'content-type'} // '') =~ /json/) {
        ok(defined json_decode($s->{body}), "stats ?$q: valid JSON") or diag $s->{body};
    }
}

done_testing;
