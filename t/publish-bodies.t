#!/usr/bin/perl
# Request bodies nginx buffered to a temporary file are published whole (README "Publishing"): small
# client_body_buffer_size, 100 KB bodies (Content-Length and chunked), client_body_in_file_only.
# The bytes themselves are compared through a subscriber in publish-roundtrip.t.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest;

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:4m history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        client_body_buffer_size 1k;
        client_max_body_size 1m;
        location ~ ^/pub/(?<ch>[^/]+)$  { publish_channel $ch; }
        location ~ ^/file/(?<ch>[^/]+)$ { client_body_in_file_only clean; publish_channel $ch; }
        location = /stats               { channel_stats; }
    }
CONF

my $SIZE = 100 * 1024;
my $body = join '', map { chr($_ % 256) } 0 .. $SIZE - 1;    # every byte value, NULs included

sub used { $t->zone_stats('/stats', 'events')->{used} }

my $mark = $t->log_mark;
my $u0 = used();
my $r = $t->http(POST => '/pub/big', body => $body);
is($r->{status}, 201, '100 KB body over a 1k client_body_buffer_size: 201');
ok($t->wait_for_log(qr/request body is buffered to a temporary file/, since => $mark, timeout => 3),
   'nginx did buffer it to a temporary file');
is($r->{json}{messages}, 1, 'one message retained');
my $u1 = used();
cmp_ok($u1 - $u0, '>=', $SIZE, "zone use grew by at least the body size (" . ($u1 - $u0) . " bytes)");
is($t->http(GET => '/pub/big')->{json}{messages}, 1, 'GET: one message');

$mark = $t->log_mark;
$r = $t->http(PUT => '/pub/big', body => $body, chunked => 1, chunk_size => 3000);
is($r->{status}, 201, 'chunked 100 KB body: 201');
ok($t->wait_for_log(qr/request body is buffered to a temporary file/, since => $mark, timeout => 3),
   'buffered to a temporary file too');
my $u2 = used();
cmp_ok($u2 - $u1, '>=', $SIZE, "zone use grew by the body size again (" . ($u2 - $u1) . " bytes)");
is($t->http(GET => '/pub/big')->{json}{messages}, 2, 'GET: two messages');

# A body just over the buffer: part of it arrives with the header, the rest after.
$r = $t->http(POST => '/pub/edge', body => 'e' x 1025);
is($r->{status}, 201, 'body of buffer size + 1: 201');
my $u3 = used();
cmp_ok($u3 - $u2, '>=', 1025, 'its bytes are in the zone');

# client_body_in_file_only: even a tiny body is read from a file.
$r = $t->http(POST => '/file/tiny', body => 'abc');
is($r->{status}, 201, 'client_body_in_file_only, 3-byte body: 201');
$r = $t->http(POST => '/file/tiny', body => $body);
is($r->{status}, 201, 'client_body_in_file_only, 100 KB body: 201');
cmp_ok(used() - $u3, '>=', $SIZE, 'its bytes are in the zone');
$r = $t->http(POST => '/file/tiny', body => '');
is($r->{status}, 201, 'client_body_in_file_only, empty body: 201');
is($t->http(GET => '/file/tiny')->{json}{messages}, 3, 'three messages');

# Several temp-file publishes on one keep-alive connection.
my $c = $t->client;
my $ok = 0;
for my $i (1 .. 10) {
    $ok++ if $c->request(POST => "/pub/ka$i", body => $body)->{status} == 201;
}
$c->close;
is($ok, 10, 'ten 100 KB publishes on one keep-alive connection: all 201');

done_testing;
