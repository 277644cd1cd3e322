#!/usr/bin/perl
# What a publish stores, seen by a long-poll subscriber (README "Publishing", "Long polling"): data
# bytes (including bodies buffered to a temp file), event type from the header and from ?event=
# (percent-decoded), the content type (default text/plain), JSON escaping, base64 for non-UTF-8
# data.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MIME::Base64 ();
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        client_body_buffer_size 1k;
        client_max_body_size 1m;
        channel_first_message oldest;
        location ~ ^/pub/(?<ch>[^/]+)$  { publish_channel $ch; }
        location ~ ^/poll/(?<ch>[^/]+)$ { longpoll_channel $ch; }
        location ~ ^/raw/(?<ch>[^/]+)$  { longpoll_channel $ch format=raw; }
        location = /stats               { channel_stats; }
    }
CONF

my $n = 0;
# Publishes one message to a fresh channel and reads it back with a long-poll (json); returns
# (publish answer, the message object, the whole poll answer).
sub roundtrip {
    my (%o) = @_;
    my $ch = 'rt' . ++$n;
    my $path = "/pub/$ch" . ($o{query} // '');
    my $p = $t->http(POST => $path, body => $o{body}, headers => $o{headers} // {});
    is($p->{status}, 201, "publish to $ch: 201") or return;
    my $r = $t->poll("/poll/$ch", timeout => 10);
    is($r->{status}, 200, "poll $ch: 200") or diag explain $r;
    my $msgs = $r->{json} ? $r->{json}{messages} : [];
    is(scalar(@$msgs), 1, "poll $ch: one message") or diag $r->{body};
    return ($p, $msgs->[0] || {}, $r, $ch);
}

# ---- plain text, default content type, no event type
my ($p, $m, $r, $ch) = roundtrip(body => 'hello');
is_deeply([@$m{qw(id channel data content_type)}], [$p->{json}{id}, $ch, 'hello', 'text/plain'],
          'id, channel, data, default content type text/plain');
ok(!exists $m->{event}, 'no event type: "event" omitted');
is($r->{json}{last_event_id}, $p->{json}{id}, 'last_event_id of the answer');

# ---- event type from the header; content type kept
($p, $m) = roundtrip(body => '{"k":1}', headers => { 'Event-Type' => 'update', 'Content-Type' => 'application/json; charset=utf-8' });
is($m->{event}, 'update', 'event type from the Event-Type header');
is($m->{content_type}, 'application/json; charset=utf-8', 'content type kept as sent');
is($m->{data}, '{"k":1}', 'data as a JSON string');

# ---- event type from ?event=, percent-decoded
($p, $m) = roundtrip(body => 'x', query => '?event=price%20change%2Fv2');
is($m->{event}, 'price change/v2', '?event= percent-decoded');

# ---- empty data
($p, $m) = roundtrip(body => '');
is($m->{data}, '', 'empty data');

# ---- JSON escaping: quotes, backslash, control characters, UTF-8
my $tricky = qq{quote " backslash \\ newline \n cr \r tab \t nul \0 ctl \x01 \x1f del \x7f } . "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
($p, $m, $r) = roundtrip(body => $tricky);
my $want = $tricky;
utf8::decode($want);
is($m->{data}, $want, 'UTF-8 data with quotes, backslashes and control characters survives JSON');
ok(!exists $m->{encoding}, 'valid UTF-8 is not base64-encoded');
unlike($r->{body} =~ s/\n\z//r, qr/[\x00-\x1f]/, 'no raw control bytes in the JSON text');

# ---- non-UTF-8 bytes: base64
my $binary = join '', map { chr } 0 .. 255;
($p, $m) = roundtrip(body => $binary);
is($m->{encoding}, 'base64', 'non-UTF-8 data: "encoding":"base64"');
is(MIME::Base64::decode_base64($m->{data} // ''), $binary, 'base64 decodes to the bytes published');

# ---- a 100 KB body buffered to a temp file, read back whole (json and raw)
my $big = join '', map { chr($_ % 251) } 0 .. 100 * 1024 - 1;
my $mark = $t->log_mark;
($p, $m) = roundtrip(body => $big, headers => { 'Content-Type' => 'application/octet-stream' });
ok($t->wait_for_log(qr/buffered to a temporary file/, since => $mark, timeout => 3), 'the body went through a temp file');
is($m->{encoding}, 'base64', 'binary body base64-encoded');
my $got = MIME::Base64::decode_base64($m->{data} // '');
is(length $got, length $big, 'length of the temp-file body');
ok($got eq $big, 'temp-file body published whole, byte for byte');

my $raw_ch = 'rawbig';
$t->http(POST => "/pub/$raw_ch?event=blob", body => $big, headers => { 'Content-Type' => 'application/x-test' });
$r = $t->poll("/raw/$raw_ch", timeout => 10);
is($r->{status}, 200, 'raw poll: 200');
is($r->{headers}{'content-type'}, 'application/x-test', 'raw: Content-Type is the message content type');
is($r->{headers}{'event-type'}, 'blob', 'raw: Event-Type header');
ok($r->{body} eq $big, 'raw: the body is the 100 KB message byte for byte');

# ---- chunked upload of a temp-file body
$t->http(POST => '/pub/chunky', body => $big, chunked => 1, chunk_size => 4096);
$r = $t->poll('/raw/chunky', timeout => 10);
ok($r->{body} eq $big, 'chunked 100 KB upload published whole');

# ---- a channel created empty by a subscriber is listed with last_event_id null
my $w = $t->poll_start('/poll/waiting');
ok($t->wait_for(sub {
    my $l = $t->http(GET => '/stats?channels&prefix=waiting')->{json};
    $l && @{ $l->{channels} } == 1;
}, timeout => 5), 'a waiting subscriber creates its channel');
my $l = $t->http(GET => '/stats?channels&prefix=waiting')->{json};
like($t->http(GET => '/stats?channels&prefix=waiting')->{body}, qr/"last_event_id"\s*:\s*null/, 'empty channel: last_event_id is null');
is($l->{channels}[0]{messages}, 0, 'empty channel: 0 messages');
$w->close;

done_testing;
