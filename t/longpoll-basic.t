#!/usr/bin/perl
# Long-poll basics (README "Directives", "Publishing": ids, "Long polling", issue 4): an immediate
# answer when messages after the cursor are retained; a waiting request woken by a publish, from
# either worker; the headers every answer carries (Last-Event-ID, Cache-Control: no-cache); the json
# fields (id, channel, event only when typed, data, content_type as published), JSON escaping and
# base64 for data that is not UTF-8; at most 100 messages per answer; the timeout (204, cursor
# unchanged; without a cursor, a cursor that misses nothing published after it); HEAD; 405; 400 for
# bad channel ids (logged at info); a malformed cursor taken as absent; channel_first_message
# policies.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use MIME::Base64 ();
use Encode ();
use ChannelsTest qw(id_parse id_cmp json_decode);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:8m history=200 ttl=1h;
    longpoll_timeout 1s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/poll/(?<ch>[^/]+)$    { longpoll_channel $ch; }
        location ~ ^/long/(?<ch>[^/]+)$    { longpoll_timeout 20s; longpoll_channel $ch; }
        location = /p                      { longpoll_channel $arg_ch; }
        location ~ ^/oldest/(?<ch>[^/]+)$  { channel_first_message oldest; longpoll_timeout 20s;
                                             longpoll_channel $ch; }
        location ~ ^/last2/(?<ch>[^/]+)$   { channel_first_message -2; longpoll_timeout 20s;
                                             longpoll_channel $ch; }
        location ~ ^/newest/(?<ch>[^/]+)$  { channel_first_message newest; longpoll_timeout 20s;
                                             longpoll_channel $ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
        location = /stats                  { channel_stats; }
    }
CONF

# Publishes; returns the id. %o: headers, query (appended to the path).
# Checks what every long-poll answer carries; returns the Last-Event-ID.
sub common_ok {
    my ($r, $label) = @_;
    my $h = $r->{headers} || {};
    is($h->{'cache-control'}, 'no-cache', "$label: Cache-Control: no-cache");
    my $id = $h->{'last-event-id'};
    ok(defined $id && scalar(() = id_parse($id)), "$label: Last-Event-ID is an id")
        or diag 'Last-Event-ID: ' . ($id // 'absent');
    return $id;
}

# A 200 json answer: checks its shape, returns the messages.
sub json_ok {
    my ($r, $label) = @_;
    is($r->{status}, 200, "$label: 200") or diag explain $r;
    like($r->{headers}{'content-type'} // '', qr{^application/json\b}, "$label: Content-Type application/json");
    my $j = json_decode($r->{body});
    ok(ref $j eq 'HASH' && ref $j->{messages} eq 'ARRAY', "$label: body is {\"messages\":[...]}")
        or do { diag "body: $r->{body}"; return [] };
    my $hid = common_ok($r, $label);
    my $msgs = $j->{messages};
    ok(@$msgs >= 1, "$label: at least one message");
    is($j->{last_event_id}, $hid, "$label: last_event_id equals the Last-Event-ID header");
    is($j->{last_event_id}, @$msgs ? $msgs->[-1]{id} : undef, "$label: last_event_id is the last message's id");
    return $msgs;
}

sub ids_of { [ map { $_->{id} } @{ $_[0] } ] }

my $MARK = $t->log_mark;

# ---- an immediate answer when messages after the cursor are retained (header or argument)
{
    my $c0 = $t->publish('imm', 'zero');
    my @ids = map { $t->publish('imm', "m$_") } 1 .. 3;
    for my $in ('header', 'arg') {
        my $r = $t->poll('/long/imm', cursor => $c0, cursor_in => $in);
        my $m = json_ok($r, "cursor in $in, 3 retained after it");
        cmp_ok($r->{elapsed}, '<', 2, "cursor in $in: answered at once (timeout is 20 s)");
        is_deeply(ids_of($m), \@ids, "cursor in $in: the 3 messages after the cursor, in order");
        is_deeply([ map { $_->{data} } @$m ], [ 'm1', 'm2', 'm3' ], "cursor in $in: their data");
        ok(!exists json_decode($r->{body})->{gap}, "cursor in $in: no gap key (nothing was lost)");
    }
    # cursor in the middle
    my $r = $t->poll('/long/imm', cursor => $ids[1]);
    is_deeply(ids_of(json_ok($r, 'cursor = 2nd id')), [ $ids[2] ], 'cursor = 2nd id: only the 3rd message');
    # a cursor taken from another channel resumes by id order
    my $other = $t->publish('imm-other', 'x');
    my $c4 = $t->publish('imm', 'm4');
    $r = $t->poll('/long/imm', cursor => $other);
    is_deeply(ids_of(json_ok($r, 'cursor from another channel')), [ $c4 ],
              'a cursor of another channel: the messages published after it');
}

# ---- waiting, then woken by a publish
{
    my $c = $t->publish('wake', 'before');
    my $p = $t->poll_start('/long/wake', cursor => $c);
    ok($t->wait_subscribers('wake', 1, timeout => 10), 'the request waits: the channel has 1 subscriber');
    ok(!$p->ready, 'no answer while nothing was published');
    my $id = $t->publish('wake', 'after');
    my $r = $p->result(timeout => 10);
    my $m = json_ok($r, 'woken');
    cmp_ok($r->{elapsed}, '<', 10, 'answered on the publish, not at the 20 s timeout');
    is_deeply(ids_of($m), [ $id ], 'woken: exactly the message published');
    is($m->[0]{data}, 'after', 'woken: its data');
    ok($t->wait_subscribers('wake', 0, timeout => 10), 'answered: the channel has no subscriber left');
}

# ---- woken across workers: waiters on both workers, one publish reaches all of them
{
    my $c = $t->publish('xw', 'before');
    my @p;
    my $both = 0;
    my $workers;
    for my $try (1 .. 60) {
        push @p, $t->poll_start('/long/xw', cursor => $c);
        my $n = @p;
        next unless $t->wait_subscribers('xw', $n, timeout => 10);
        my $z = $t->zone_stats('/stats', 'events', port => 1) or next;
        $workers = $z->{workers} || [];
        if (2 == grep { ($_->{subscribers} // 0) >= 1 } @$workers) { $both = 1; last }
    }
    ok($both, scalar(@p) . ' waiters: both workers hold at least one')
        or diag explain $workers;
    my $wk0 = { map { $_->{pid} => $_->{wakeups} } @$workers };
    my $id = $t->publish('xw', 'to all');
    my $ok = 0;
    for my $p (@p) {
        my $r = $p->result(timeout => 10);
        $ok++ if $r->{status} == 200 && $r->{json} && @{ $r->{json}{messages} } == 1
              && $r->{json}{messages}[0]{id} eq $id && ($r->{headers}{'last-event-id'} // '') eq $id;
    }
    is($ok, scalar @p, 'every waiter, on either worker, got the message (200, its id in Last-Event-ID)');
}

# ---- json fields: id, channel, event (only when typed), data, content_type
{
    my $c = $t->publish('fields', 'before');
    my @cases = (
        [ 'untyped, no Content-Type'     => 'plain',  {},                                         undef, 'text/plain' ],
        [ 'Event-Type header'            => 'typed',  { 'Event-Type' => 'alert' },                'alert', 'text/plain' ],
        [ '?event= argument'             => 'typed2', {}, 'news.update', 'text/plain', 'event=news.update' ],
        [ 'percent-encoded ?event='      => 'typed3', {}, 'a b/c', 'text/plain', 'event=a%20b%2Fc' ],
        [ 'application/json'             => '{"k":[1,2]}', { 'Content-Type' => 'application/json' }, undef, 'application/json' ],
        [ 'Content-Type with parameters' => 'x',      { 'Content-Type' => 'text/html; charset=utf-8' }, undef,
          'text/html; charset=utf-8' ],
        [ 'typed and content type'       => 'y',      { 'Content-Type' => 'application/x-thing', 'Event-Type' => 'E:1' },
          'E:1', 'application/x-thing' ],
        [ 'empty data'                   => '',       {},                                         undef, 'text/plain' ],
    );
    my @ids = map { $t->publish('fields', $_->[1], headers => $_->[2], query => $_->[5]) } @cases;
    my $r = $t->poll('/long/fields', cursor => $c);
    my $m = json_ok($r, 'fields');
    is(scalar @$m, scalar @cases, 'one entry per message');
    for my $i (0 .. $#cases) {
        my ($label, $data, undef, $event, $ctype) = @{ $cases[$i] };
        my $e = $m->[$i] or next;
        is($e->{id}, $ids[$i], "$label: id is the publish id");
        is($e->{channel}, 'fields', "$label: channel");
        is($e->{data}, $data, "$label: data");
        is($e->{content_type}, $ctype, "$label: content_type");
        if (defined $event) {
            is($e->{event}, $event, "$label: event");
        } else {
            ok(!exists $e->{event}, "$label: no event key for an untyped message");
        }
        ok(!exists $e->{encoding}, "$label: no encoding key for UTF-8 data");
        my @extra = grep { !/^(?:id|channel|event|data|content_type)$/ } keys %$e;
        is("@extra", '', "$label: no other keys");
    }
    # the wire text: data and channel are JSON strings, ids JSON strings
    like($r->{body}, qr/"id":"\d+-\d+"/, 'ids are JSON strings on the wire');
}

# ---- JSON escaping: control characters, quotes, backslashes; non-ASCII UTF-8 passed through
{
    my $c = $t->publish('esc', 'before');
    my $ctl = join '', map { chr } 0 .. 31, 127;
    my @cases = (
        [ 'all control characters' => $ctl ],
        [ 'quotes and backslashes' => q{say "hi" \ \\ \" \u0041 \n} ],
        [ 'slash and angle brackets' => '</script><!--' ],
        [ '2-, 3-, 4-byte UTF-8'   => "caf\xc3\xa9 \xe2\x82\xac \xe4\xb8\xad \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbd" ],   # U+10FFFD: Perl's strict decoder refuses noncharacters
        [ 'U+2028, U+2029, BOM'    => "a\xe2\x80\xa8b\xe2\x80\xa9c\xef\xbb\xbf" ],
        [ 'newlines and tabs'      => "line1\r\nline2\n\tindented\r" ],
    );
    my @ids = map { $t->publish('esc', $_->[1], headers => { 'Content-Type' => 'text/plain; charset=utf-8' }) } @cases;
    my $r = $t->poll('/long/esc', cursor => $c);
    my $m = json_ok($r, 'escaping');
    (my $json_text = $r->{body}) =~ s/\n\z//;   # the answer ends with a newline (README)
    unlike($json_text, qr/[\x00-\x1f]/, 'no raw control character in the JSON text (they are escaped)');
    my $strict = eval { JSON::PP->new->utf8->decode($r->{body}) };
    ok($strict, 'the body is strict JSON') or diag "$@";
    for my $i (0 .. $#cases) {
        my ($label, $bytes) = @{ $cases[$i] };
        my $e = $m->[$i] or next;
        is($e->{id}, $ids[$i], "$label: id");
        is($e->{data}, Encode::decode('UTF-8', $bytes, Encode::FB_CROAK), "$label: data decodes back to what was published");
        ok(!exists $e->{encoding}, "$label: valid UTF-8 is not base64");
    }
    # non-ASCII passes through as UTF-8 bytes (not \u escapes)
    ok(index($r->{body}, "caf\xc3\xa9 \xe2\x82\xac \xe4\xb8\xad \xf0\x9f\x98\x80") >= 0,
       'non-ASCII UTF-8 appears as the published bytes in the body');
}

# ---- data that is not valid UTF-8: base64 with "encoding":"base64", decodes back to the bytes
{
    my $c = $t->publish('b64', 'before');
    my @cases = (
        [ '0xFF 0xFE and NUL'          => "\xff\xfe\x00abc" ],
        [ 'lone continuation byte'     => "ab\x80cd" ],
        [ 'overlong "/" (C0 AF)'       => "\xc0\xaf" ],
        [ 'UTF-16 surrogate (ED A0 80)' => "x\xed\xa0\x80y" ],
        [ 'above U+10FFFF (F4 90 80 80)' => "\xf4\x90\x80\x80" ],
        [ 'truncated sequence at end'  => "euro \xe2\x82" ],
        [ 'Latin-1 text'               => "caf\xe9" ],
        [ 'all 256 byte values'        => join('', map { chr } 0 .. 255) ],
    );
    my @ids = map { $t->publish('b64', $_->[1], headers => { 'Content-Type' => 'application/octet-stream' }) } @cases;
    my $r = $t->poll('/long/b64', cursor => $c);
    my $m = json_ok($r, 'base64');
    ok(eval { JSON::PP->new->utf8->decode($r->{body}); 1 }, 'the body is valid UTF-8 JSON') or diag "$@";
    for my $i (0 .. $#cases) {
        my ($label, $bytes) = @{ $cases[$i] };
        my $e = $m->[$i] or next;
        is($e->{id}, $ids[$i], "$label: id");
        is($e->{encoding}, 'base64', "$label: \"encoding\":\"base64\"");
        like($e->{data} // '', qr{^[A-Za-z0-9+/]*={0,2}$}, "$label: data is base64 text");
        is(MIME::Base64::decode_base64($e->{data} // ''), $bytes, "$label: decodes back to the published bytes");
        is($e->{content_type}, 'application/octet-stream', "$label: content_type kept");
    }
}

# ---- at most 100 messages per answer (one 64-message page when answered at once: README
# "What one client can cost"); the next poll gets the rest
{
    my $c = $t->publish('many', 'before');
    my @ids = map { $t->publish('many', "n$_") } 1 .. 150;
    my $r = $t->poll('/poll/many', cursor => $c);
    my $m = json_ok($r, '150 retained');
    is(scalar @$m, 64, 'the first answer holds one page, 64 messages');
    is_deeply(ids_of($m), [ @ids[0 .. 63] ], 'the oldest 64, in order');
    is($r->{headers}{'last-event-id'}, $ids[63], 'Last-Event-ID: the 64th');
    my @rest;
    for (1 .. 3) {
        $r = $t->poll('/poll/many', cursor => $r->{headers}{'last-event-id'});
        last if $r->{status} != 200;
        cmp_ok($r->{elapsed}, '<', 0.9, 'the next page at once');
        push @rest, @{ json_ok($r, 'a next page') };
        last if @rest >= 86;
    }
    is_deeply(ids_of(\@rest), [ @ids[64 .. 149] ], 'the next polls: the other 86, in order');
    $r = $t->poll('/poll/many', cursor => $ids[-1]);
    is($r->{status}, 204, 'then nothing: the next poll times out (204)');
}

# ---- timeout: 204 with the unchanged cursor, no body
{
    my $c = $t->publish('to', 'x');
    $t->publish('to-other', 'y');    # a later message of another channel: does not move this cursor
    for my $in ('header', 'arg') {
        my $r = $t->poll('/poll/to', cursor => $c, cursor_in => $in);
        is($r->{status}, 204, "timeout (cursor in $in): 204") or diag explain $r;
        cmp_ok($r->{elapsed}, '>=', 0.9, "timeout (cursor in $in): after longpoll_timeout (1 s)");
        cmp_ok($r->{elapsed}, '<', 5, "timeout (cursor in $in): not much later");
        is(common_ok($r, "timeout (cursor in $in)"), $c, "timeout (cursor in $in): Last-Event-ID is the cursor sent");
        is($r->{body}, '', "timeout (cursor in $in): no body");
        ok(!defined $r->{headers}{'content-length'} || $r->{headers}{'content-length'} == 0,
           "timeout (cursor in $in): no Content-Length body");
    }
}

# ---- timeout without a cursor: a cursor after which nothing is missed
{
    my @old = map { $t->publish('nc', "old$_") } 1 .. 2;
    my $r = $t->poll('/poll/nc');
    is($r->{status}, 204, 'no cursor, nothing new: 204');
    my $cur = common_ok($r, 'no cursor, timeout');
    ok(defined $cur && id_cmp($cur, $old[-1]) >= 0, 'its cursor is not before the newest retained message')
        or diag "cursor $cur, newest $old[-1]";
    my $id = $t->publish('nc', 'right after');
    $r = $t->poll('/poll/nc', cursor => $cur);
    is_deeply(ids_of(json_ok($r, 'poll with it')), [ $id ], 'the next poll gets exactly the message published right after');

    # a channel that never had a message
    $r = $t->poll('/poll/nc-new');
    is($r->{status}, 204, 'new channel, no cursor: 204');
    $cur = common_ok($r, 'new channel, no cursor');
    $id = $t->publish('nc-new', 'first ever');
    $r = $t->poll('/poll/nc-new', cursor => $cur);
    is_deeply(ids_of(json_ok($r, 'new channel, poll with it')), [ $id ], 'new channel: the first message is not missed');
}

# ---- HEAD: 200 at once, headers only
{
    my $c = $t->publish('head', 'x');
    my $t0 = Time::HiRes::time();
    my $r = $t->http(HEAD => '/long/head', headers => { 'Last-Event-ID' => $c });
    my $dt = Time::HiRes::time() - $t0;
    is($r->{status}, 200, 'HEAD: 200');
    cmp_ok($dt, '<', 2, 'HEAD: at once although nothing is after the cursor (timeout 20 s)');
    is($r->{body}, '', 'HEAD: no body');
    like($r->{headers}{'content-type'} // '', qr{^application/json\b}, 'HEAD: the Content-Type a GET would have');
    common_ok($r, 'HEAD');
    ok($t->wait_subscribers('head', 0, timeout => 10), 'HEAD: no subscriber left behind');
    # HEAD on a keep-alive connection, then a GET on the same connection
    my $cl = $t->client;
    $r = $cl->request(HEAD => '/long/head');
    is($r->{status}, 200, 'HEAD on keep-alive: 200');
    $t->publish('head', 'y');
    $r = $cl->request(GET => '/long/head', headers => { 'Last-Event-ID' => $c });
    is($r->{status}, 200, 'a GET after the HEAD on the same connection: 200');
    is($r->{json} && $r->{json}{messages}[0]{data}, 'y', 'with the message');
    $cl->close;
}

# ---- other methods: 405 with Allow
for my $method (qw(POST PUT DELETE PATCH OPTIONS)) {
    my $r = $t->http($method => '/poll/meth', body => ($method =~ /^P/ ? 'x' : undef));
    is($r->{status}, 405, "$method: 405");
    like($r->{headers}{allow} // '', qr/^GET, HEAD$/, "$method: Allow: GET, HEAD");
}
is($t->subscribers('meth'), 0, 'a refused method made no subscriber');

# ---- bad channel ids: 400 with a one-line reason, logged at info, never above
{
    my $mark = $t->log_mark;
    my @bad = (
        [ 'percent in an id'          => '/p?ch=a%2525b' ],
        [ 'space'                     => '/p?ch=a%20b' ],
        [ 'slash'                     => '/p?ch=a%2Fb' ],
        [ 'non-ASCII byte'            => '/p?ch=caf%C3%A9' ],
        [ 'empty list item'           => '/p?ch=a,,b' ],
        [ 'trailing comma'            => '/p?ch=a,' ],
        [ '256 bytes'                 => '/p?ch=' . ('x' x 256) ],
        [ '65 channels'               => '/p?ch=' . join(',', map { "c$_" } 1 .. 65) ],
    );
    for my $b (@bad) {
        my ($label, $path) = @$b;
        my $r = $t->http(GET => $path, headers => { 'Last-Event-ID' => '1-0' });
        is($r->{status}, 400, "$label: 400");
        like($r->{body}, qr/^[^\n]+\n?\z/, "$label: a one-line reason") or diag $r->{body};
    }
    my $log = $t->log_since($mark);
    my $info = () = $log =~ /\[info\].*(?:channel|invalid)/g;
    cmp_ok($info, '>=', scalar(@bad), 'an info line per refused request');
    unlike($log, qr/\[(?:warn|error|crit|alert|emerg)\]/, 'nothing above info');
    # the limits themselves are fine: 255 bytes, 64 channels (answered as polls: 204 on timeout)
    my $r = $t->poll('/p?ch=' . ('x' x 255));
    is($r->{status}, 204, '255-byte id: accepted (204 on timeout)');
    $r = $t->poll('/p?ch=' . join(',', map { "d$_" } 1 .. 64));
    is($r->{status}, 204, '64 channels: accepted (204 on timeout)');
    $r = $t->poll('/p?ch=A-z_0.9:@~x');
    is($r->{status}, 204, 'every allowed character: accepted');
}

# ---- a malformed cursor is taken as absent, never an error
{
    my @ids = map { $t->publish('mal', "v$_") } 1 .. 2;
    for my $bad ('garbage', '', '-', '12', '1-', '-1', '1-2-3', 'abc-0', '1.5-0', '1-0x') {
        my $r = $t->poll('/oldest/mal', cursor => $bad);
        is($r->{status}, 200, "malformed cursor '$bad': not an error, treated as absent");
        is_deeply($r->{json} ? ids_of($r->{json}{messages}) : [], \@ids,
                  "malformed cursor '$bad': first_message oldest applies (all retained)");
    }
    my $p = $t->poll_start('/newest/mal', cursor => 'nonsense');
    ok($t->wait_subscribers('mal', 1, timeout => 10), 'malformed cursor with first_message newest: waits');
    my $id = $t->publish('mal', 'v3');
    my $r = $p->result(timeout => 10);
    is_deeply($r->{json} ? ids_of($r->{json}{messages}) : [], [ $id ], '... and gets only the new message');
}

# ---- channel_first_message: what a request without a cursor gets
{
    my @ids = map { $t->publish('fm', "f$_") } 1 .. 5;

    my $r = $t->poll('/oldest/fm');
    my $m = json_ok($r, 'oldest');
    cmp_ok($r->{elapsed}, '<', 2, 'oldest: at once');
    is_deeply(ids_of($m), \@ids, 'oldest: every retained message');

    $r = $t->poll('/last2/fm');
    $m = json_ok($r, '-2');
    cmp_ok($r->{elapsed}, '<', 2, '-2: at once');
    is_deeply(ids_of($m), [ @ids[3, 4] ], '-2: the last 2');

    my $p = $t->poll_start('/newest/fm');
    ok($t->wait_subscribers('fm', 1, timeout => 10), 'newest: waits');
    my $id = $t->publish('fm', 'f6');
    $r = $p->result(timeout => 10);
    is_deeply(ids_of(json_ok($r, 'newest')), [ $id ], 'newest: only the message published while waiting');

    # default (no directive) is newest
    $p = $t->poll_start('/long/fm');
    ok($t->wait_subscribers('fm', 1, timeout => 10), 'default: waits');
    $id = $t->publish('fm', 'f7');
    $r = $p->result(timeout => 10);
    is_deeply(ids_of(json_ok($r, 'default')), [ $id ], 'default policy is newest');

    # a cursor wins over the policy
    $r = $t->poll('/oldest/fm', cursor => $ids[3]);
    my $got = json_ok($r, 'oldest with a cursor');
    is($got->[0]{id}, $ids[4], 'with a cursor, oldest does not apply: starts after the cursor');

    # oldest / -N on an empty channel: wait for the first message
    for my $loc ('oldest', 'last2') {
        my $p = $t->poll_start("/$loc/fm-empty-$loc");
        ok($t->wait_subscribers("fm-empty-$loc", 1, timeout => 10), "$loc on an empty channel: waits");
        my $id = $t->publish("fm-empty-$loc", 'first');
        my $r = $p->result(timeout => 10);
        is_deeply(ids_of(json_ok($r, "$loc, empty channel")), [ $id ], "$loc on an empty channel: gets the first message");
    }
}

# ---- waiting requests count as subscribers (channel info and zone stats), and stop counting
{
    my $c = $t->publish('cnt', 'x');
    my $z0 = $t->zone_stats('/stats', 'events', port => 1)->{subscribers};
    my @p = map { $t->poll_start('/long/cnt', cursor => $c) } 1 .. 3;
    ok($t->wait_subscribers('cnt', 3, timeout => 10), 'three waiting requests: channel info counts 3');
    ok($t->wait_for(sub { $t->zone_stats('/stats', 'events', port => 1)->{subscribers} == $z0 + 3 }),
       'zone stats count them too');
    $t->publish('cnt', 'y');
    $_->result(timeout => 10) for @p;
    ok($t->wait_subscribers('cnt', 0, timeout => 10), 'answered: 0');
}

unlike($t->log_since($MARK), qr/\[(?:error|crit|alert|emerg)\]/, 'no error lines in the whole run');

done_testing;
