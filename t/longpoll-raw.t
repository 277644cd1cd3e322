#!/usr/bin/perl
# Long-poll format=raw (README "Long polling", issue 4): one message per answer, the body is exactly
# the published bytes (binary with NUL and 0xFF, empty, large), Content-Type is the publisher's
# (text/plain when none was given), Event-Type carries the event type (absent when untyped),
# Last-Event-ID is that message's id; following the cursor walks every message once, in order, then
# waits (204 at the timeout with the cursor unchanged). A waiting raw request is woken with one
# message even when several are published at once. HEAD answers 200 without a body.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use ChannelsTest qw(id_parse id_cmp);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:8m history=100 ttl=1h;
    longpoll_timeout 1s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/raw/(?<ch>[^/]+)$     { longpoll_channel $ch format=raw; }
        location ~ ^/rawlong/(?<ch>[^/]+)$ { longpoll_timeout 20s; longpoll_channel $ch format=raw; }
        location = /rawm                   { longpoll_channel $arg_ch format=raw; }
        location ~ ^/rawold/(?<ch>[^/]+)$  { channel_first_message oldest; longpoll_channel $ch format=raw; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        client_max_body_size 2m;
        client_body_buffer_size 16k;    # the 200 KiB payload goes through a temporary file
        location ~ ^/pub/(?<ch>[^/]+)$     { publish_channel $ch; }
    }
CONF

sub hexdump { my $s = shift; $s = substr($s, 0, 48) . '...' if length $s > 48; unpack('H*', $s) }

# Checks one raw answer against [label, data, content type or undef, event or undef, id].
sub raw_ok {
    my ($r, $want, $label) = @_;
    my ($data, $ctype, $event, $id) = @{$want}[1 .. 4];
    is($r->{status}, 200, "$label: 200") or do { diag explain $r; return };
    is($r->{headers}{'cache-control'}, 'no-cache', "$label: Cache-Control: no-cache");
    is($r->{headers}{'last-event-id'}, $id, "$label: Last-Event-ID is this message's id");
    is($r->{headers}{'content-type'}, $ctype // 'text/plain', "$label: Content-Type is the publisher's");
    if (defined $event) {
        is($r->{headers}{'event-type'}, $event, "$label: Event-Type");
    } else {
        ok(!exists $r->{headers}{'event-type'}, "$label: no Event-Type for an untyped message");
    }
    ok($r->{body} eq $data, "$label: the body is exactly the published bytes (" . length($data) . ')')
        or diag 'got ' . length($r->{body}) . ' bytes ' . hexdump($r->{body}) . ', want ' . hexdump($data);
    if (defined $r->{headers}{'content-length'}) {
        is($r->{headers}{'content-length'}, length $data, "$label: Content-Length");
    }
}

srand(42);
my $random = join '', map { chr int rand 256 } 1 .. 200_000;
my @cases = (
    [ 'NUL and 0xFF'         => "\x00\xff\x00\xff\xfe\x00", 'application/octet-stream', undef ],
    [ 'all 256 byte values'  => join('', map { chr } 0 .. 255), 'application/octet-stream', 'bytes' ],
    [ 'text, no Content-Type' => "hello\nworld\r\n", undef, undef ],
    [ 'empty'                => '', 'application/x-empty', 'ping' ],
    [ 'JSON document'        => qq({"a":"\xc3\xa9","b":[1,2]}), 'application/json; charset=utf-8', 'doc' ],
    [ 'image bytes'          => "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 'image/png', undef ],
    [ 'CR LF only'           => "\r\n\r\n", 'text/plain', undef ],
    [ '200 KiB random'       => $random, 'application/octet-stream', 'blob' ],
    [ 'HTTP-looking body'    => "HTTP/1.1 200 OK\r\nX: y\r\n\r\n", 'text/plain', undef ],
);

# ---- walk: one message per answer, following Last-Event-ID
{
    my $c0 = $t->publish('walk', 'before');
    for my $case (@cases) {
        my %h;
        $h{'Content-Type'} = $case->[2] if defined $case->[2];
        $h{'Event-Type'} = $case->[3] if defined $case->[3];
        push @$case, $t->publish('walk', $case->[1], headers => \%h);
    }
    my $cur = $c0;
    for my $case (@cases) {
        my $r = $t->poll('/raw/walk', cursor => $cur);
        raw_ok($r, $case, $case->[0]);
        cmp_ok($r->{elapsed}, '<', 0.9, "$case->[0]: answered at once");
        $cur = $r->{headers}{'last-event-id'} // last;
    }
    my $r = $t->poll('/raw/walk', cursor => $cur);
    is($r->{status}, 204, 'after the last message: 204 at the timeout');
    is($r->{headers}{'last-event-id'}, $cases[-1][4], '204: the cursor unchanged');
    is($r->{body}, '', '204: no body');

    # the cursor as an argument works the same
    $r = $t->poll('/raw/walk', cursor => $cases[0][4], cursor_in => 'arg');
    raw_ok($r, $cases[1], 'cursor in the query argument');
}

# ---- several messages published while waiting: one per answer, none lost
{
    my $c0 = $t->publish('burst', 'x');
    my $p = $t->poll_start('/rawlong/burst', cursor => $c0);
    ok($t->wait_for(sub { $t->subscribers('burst') == 1 }, timeout => 10), 'a raw request waits');
    my @want;
    for my $i (1 .. 5) {
        my $data = "\x00burst $i\xff";
        push @want, [ "burst $i", $data, 'application/octet-stream', "n$i" ];
        push @{ $want[-1] }, $t->publish('burst', $data, headers => { 'Content-Type' => 'application/octet-stream', 'Event-Type' => "n$i" });
    }
    my $r = $p->result(timeout => 10);
    raw_ok($r, $want[0], 'woken by the first of 5');
    cmp_ok($r->{elapsed}, '<', 10, 'woken by the publish, not the 20 s timeout');
    my $cur = $r->{headers}{'last-event-id'};
    for my $i (1 .. 4) {
        $r = $t->poll('/raw/burst', cursor => $cur);
        raw_ok($r, $want[$i], "then $want[$i][0]");
        $cur = $r->{headers}{'last-event-id'} // last;
    }
}

# ---- waiting, then a binary message from the other server block (either worker)
{
    my $c0 = $t->publish('wait', 'x');
    my @p = map { $t->poll_start('/rawlong/wait', cursor => $c0) } 1 .. 6;
    ok($t->wait_for(sub { $t->subscribers('wait') == 6 }, timeout => 10), 'six raw requests wait');
    my $data = "\xff\x00" x 1000;
    my $id = $t->publish('wait', $data, headers => { 'Content-Type' => 'application/octet-stream' });
    my $good = 0;
    for my $p (@p) {
        my $r = $p->result(timeout => 10);
        $good++ if $r->{status} == 200 && $r->{body} eq $data
                && ($r->{headers}{'last-event-id'} // '') eq $id
                && ($r->{headers}{'content-type'} // '') eq 'application/octet-stream';
    }
    is($good, 6, 'every waiter got the exact bytes, content type and id');
}

# ---- multi-channel raw: one message per answer in id order across channels
{
    my $c0 = $t->publish('ra', 'x');
    my @want;
    for my $i (1 .. 6) {
        my $ch = $i % 2 ? 'ra' : 'rb';
        my $data = "$ch\x00$i";
        push @want, [ "$ch #$i", $data, 'application/octet-stream', undef ];
        push @{ $want[-1] }, $t->publish($ch, $data, headers => { 'Content-Type' => 'application/octet-stream' });
    }
    my $cur = $c0;
    for my $w (@want) {
        my $r = $t->poll('/rawm?ch=ra,rb', cursor => $cur);
        raw_ok($r, $w, "multi-channel raw: $w->[0]");
        $cur = $r->{headers}{'last-event-id'} // last;
    }
}

# ---- first_message oldest with raw: the oldest retained, one at a time
{
    my @ids = map { $t->publish('old', "o$_") } 1 .. 3;
    my $r = $t->poll('/rawold/old');
    raw_ok($r, [ 'oldest', 'o1', undef, undef, $ids[0] ], 'raw, first_message oldest, no cursor');
}

# ---- HEAD: 200, no body, at once
{
    my $c0 = $t->publish('head', 'x');
    my $t0 = Time::HiRes::time();
    my $r = $t->http(HEAD => '/rawlong/head', headers => { 'Last-Event-ID' => $c0 });
    is($r->{status}, 200, 'HEAD on a raw location: 200');
    cmp_ok(Time::HiRes::time() - $t0, '<', 2, 'HEAD: at once');
    is($r->{body}, '', 'HEAD: no body');
    is($r->{headers}{'cache-control'}, 'no-cache', 'HEAD: Cache-Control: no-cache');
}

done_testing;
