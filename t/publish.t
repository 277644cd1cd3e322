#!/usr/bin/perl
# publish_channel: every row of README "Publishing" (POST/PUT 201, GET 200/404, HEAD, DELETE
# 200/404, 405 + Allow, 413 from client_max_body_size, 507 for a message no zone can hold) and the
# JSON answers' shape.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(id_cmp id_parse);

my $t = ChannelsTest->new(workers => 2, conf => <<'CONF');
    channel_zone zone=events:1m history=100 ttl=1h;
    channel_zone zone=tiny:32k history=100 ttl=1h;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/pub/(?<ch>[^/]+)$       { publish_channel $ch zone=events; }
        location ~ ^/small/(?<ch>[^/]+)$     { client_max_body_size 1k; publish_channel $ch zone=events; }
        location ~ ^/tiny/(?<ch>[^/]+)$      { client_max_body_size 1m; publish_channel $ch zone=tiny; }
        location = /stats                    { channel_stats zone=events; }
    }
CONF

sub keys_of { join ',', sort keys %{ $_[0] || {} } }

# ---- POST and PUT: 201 with {"channel","id","subscribers","messages"}
my $r = $t->http(POST => '/pub/news', body => 'hello');
is($r->{status}, 201, 'POST: 201');
like($r->{headers}{'content-type'}, qr{^application/json}, 'POST: JSON answer');
my $j = $r->{json};
is(keys_of($j), 'channel,id,messages,subscribers', 'POST: exactly the documented fields');
is($j->{channel}, 'news', 'POST: channel');
like($j->{id}, qr/^\d+-\d+$/, "POST: id looks like ms-counter ($j->{id})");
like($r->{body}, qr/"subscribers"\s*:\s*0\b/, 'POST: subscribers is the number 0');
like($r->{body}, qr/"messages"\s*:\s*1\b/, 'POST: messages is the number 1');
my $first = $j->{id};

$r = $t->http(PUT => '/pub/news', body => 'second');
is($r->{status}, 201, 'PUT: 201');
is($r->{json}{messages}, 2, 'PUT: messages now retained');
ok(id_cmp($r->{json}{id}, $first) > 0, 'PUT: id greater than the previous one');

$r = $t->http(POST => '/pub/news', body => '');
is($r->{status}, 201, 'POST with an empty body: 201 (data may be empty)');
is($r->{json}{messages}, 3, 'empty message retained');

$r = $t->http(POST => '/pub/news', body => 'typed', headers => { 'Event-Type' => 'update' });
is($r->{status}, 201, 'event type from the Event-Type header: 201');
$r = $t->http(POST => '/pub/news?event=price%20change%2Fv2', body => 'typed');
is($r->{status}, 201, 'event type from ?event= (percent-encoded): 201');
$r = $t->http(POST => '/pub/news', body => '{"a":1}', headers => { 'Content-Type' => 'application/json' });
is($r->{status}, 201, 'publisher Content-Type accepted');
my $last = $r->{json}{id};
is($r->{json}{messages}, 6, 'six messages retained');

$r = $t->http(POST => '/pub/news', body => 'x' x 100, chunked => 1, chunk_size => 7);
is($r->{status}, 201, 'chunked request body: 201');
$last = $r->{json}{id};

# ---- GET: 200 with {"channel","messages","subscribers","last_event_id","oldest_event_id"}, 404 if absent
$r = $t->http(GET => '/pub/news');
is($r->{status}, 200, 'GET: 200');
like($r->{headers}{'content-type'}, qr{^application/json}, 'GET: JSON answer');
$j = $r->{json};
is(keys_of($j), 'channel,last_event_id,messages,oldest_event_id,subscribers', 'GET: the documented fields');
is_deeply([@$j{qw(channel messages subscribers last_event_id oldest_event_id)}],
          ['news', 7, 0, $last, $first], 'GET: channel info values');
my $info_body = $r->{body};

$r = $t->http(HEAD => '/pub/news');
is($r->{status}, 200, 'HEAD: 200');
is($r->{body}, '', 'HEAD: no body');

$r = $t->http(GET => '/pub/nothere');
is($r->{status}, 404, 'GET of a channel that does not exist: 404');
is($t->http(GET => '/pub/nothere')->{status}, 404, 'GET did not create the channel');
is($t->http(HEAD => '/pub/nothere')->{status}, 404, 'HEAD of a missing channel: 404');

# ---- DELETE: 200 with the same JSON as GET, then the channel is gone; 404 if absent
$r = $t->http(DELETE => '/pub/news');
is($r->{status}, 200, 'DELETE: 200');
is_deeply($r->{json}, ChannelsTest::json_decode($info_body), 'DELETE: the channel info before the delete');
is($t->http(GET => '/pub/news')->{status}, 404, 'after DELETE, GET: 404');
is($t->http(DELETE => '/pub/news')->{status}, 404, 'DELETE of a missing channel: 404');
is($t->http(DELETE => '/pub/never')->{status}, 404, 'DELETE of a never-used channel: 404');

$r = $t->http(POST => '/pub/news', body => 'reborn');
is($r->{status}, 201, 'publishing to a deleted channel creates it again');
is($r->{json}{messages}, 1, 'the new channel starts empty');
ok(id_cmp($r->{json}{id}, $last) > 0, 'ids keep increasing after a delete');

# ---- other methods: 405 with Allow
for my $m (qw(PATCH OPTIONS PROPFIND)) {
    $r = $t->http($m => '/pub/news');
    is($r->{status}, 405, "$m: 405");
    my %allow = map { $_ => 1 } split /\s*,\s*/, $r->{headers}{allow} // '';
    ok((grep { $allow{$_} } qw(GET HEAD POST PUT DELETE)) == 5, "$m: Allow lists GET, HEAD, POST, PUT, DELETE")
        or diag "Allow: " . ($r->{headers}{allow} // 'none');
}
is($t->http(PATCH => '/pub/m405')->{status}, 405, 'PATCH on a missing channel: 405');
is($t->http(GET => '/pub/m405')->{status}, 404, '405 did not create the channel');

# ---- 413 from client_max_body_size (nginx's own)
$r = $t->http(POST => '/small/big', body => 'b' x 2048);
is($r->{status}, 413, 'body over client_max_body_size: 413');
$r = $t->http(POST => '/small/big', body => 'b' x 2048, chunked => 1, chunk_size => 500);
is($r->{status}, 413, 'chunked body over client_max_body_size: 413');
is($t->http(GET => '/pub/big')->{status}, 404, 'nothing published by a 413');
is($t->http(POST => '/small/big', body => 'b' x 1000)->{status}, 201, 'a body under the limit: 201');

# ---- 507: a message larger than the zone can ever hold; existing messages survive it
my @kept;
for my $i (1 .. 3) {
    $r = $t->http(POST => '/tiny/keep', body => "small $i");
    is($r->{status}, 201, "tiny zone: small publish $i");
    push @kept, $r->{json}{id};
}
$r = $t->http(POST => '/tiny/huge', body => 'h' x (64 * 1024));
is($r->{status}, 507, 'message larger than the zone: 507');
like($r->{body}, qr/\A[^\n]+\n\z/, '507: a one-line reason');
$r = $t->http(POST => '/tiny/keep', body => 'k' x (40 * 1024));
is($r->{status}, 507, 'message larger than the zone on an existing channel: 507');
$j = $t->http(GET => '/tiny/keep')->{json};
is_deeply([@$j{qw(messages oldest_event_id last_event_id)}], [3, $kept[0], $kept[2]],
          'a 507 evicts nothing: the channel keeps its messages');
$r = $t->http(GET => '/tiny/huge');
ok($r->{status} == 404 || ($r->{status} == 200 && $r->{json}{messages} == 0),
   'the refused message is not retained') or diag explain $r;
is($t->http(POST => '/tiny/keep', body => 'after')->{status}, 201, 'publishing works after a 507');

# ---- JSON escaping of the channel name in answers (all allowed characters)
my $odd = 'Az09_.:@~-x';
$r = $t->http(POST => "/pub/$odd", body => '1');
is($r->{status}, 201, 'channel id with every allowed character class: 201');
is($r->{json}{channel}, $odd, 'channel id echoed exactly');

done_testing;
