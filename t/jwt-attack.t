#!/usr/bin/perl
# channel_auth jwt (SPEC §10) attacked by a hostile client: token sources (duplicate headers and
# cookies, percent-encoding, the 8 KiB bound to the byte, HTTP/2 cookie crumbs, HTTP/1.0),
# verification edge cases (duplicate JSON keys, odd NumericDates, depth bombs, bad UTF-8, NUL
# in kid, ECDSA signature lengths and DER, EdDSA S + L, kid of another key type), the
# verified-token cache across key sets, audiences and nbf, grants hidden by percent-encoding
# and publish grants for every method, the cost of star-heavy grant patterns, and the error
# log (no token bytes at error/warn). Tokens: HS256 signed here with Perl's Digest::SHA (an
# implementation independent of this repository), ES256/EdDSA by the openssl command line.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use Digest::SHA ();
use Math::BigInt;
use ChannelsTest;
use H2;
use Jwt qw(make_keys openssl_token unsigned_token b64url json %WWW check_refusal);

my $t = ChannelsTest->new(start => 0, conf => <<'EOF');
    channel_zone zone=z:4m;
    large_client_header_buffers 4 32k;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        channel_auth jwt;
        channel_jwt_key %%PREFIX%%/keys/oct.jwks;
        channel_jwt_key %%PREFIX%%/keys/ec256.pub;
        channel_jwt_key %%PREFIX%%/keys/ed25519.pub;
        channel_jwt_key %%PREFIX%%/keys/rsa.jwks;
        longpoll_timeout 1s;
        client_max_body_size 1k;

        location ~ ^/events/(?<ch>[\w.:@~-]+)$ { sse_channel $ch; }
        location ~ ^/poll/(?<ch>[\w.:@~-]+)$   { longpoll_channel $ch; }
        location = /multi                      { longpoll_channel $arg_ch; }
        location ~ ^/pub/(?<ch>[\w.:@~-]+)$    { publish_channel $ch; }
        location ~ ^/strict/(?<ch>[\w.:@~-]+)$ {
            channel_jwt_audience channels;
            longpoll_channel $ch;
        }
        location ~ ^/es384/(?<ch>[\w.:@~-]+)$ {
            channel_jwt_key %%PREFIX%%/keys/ec384.pub;
            longpoll_channel $ch;
        }
        location ~ ^/subhdr/(?<ch>[\w.:@~-]+)$ {
            add_header X-Sub $channel_jwt_sub;
            longpoll_channel $ch;
        }
        location ~ ^/other/(?<ch>[\w.:@~-]+)$ {
            channel_jwt_key %%PREFIX%%/keys/ec256.pub;
            longpoll_channel $ch;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:@~-]+)$ { publish_channel $ch; }
    }

    server {
        listen 127.0.0.1:%%PORT_2%%;
        http2 on;
        channel_auth jwt;
        channel_jwt_key %%PREFIX%%/keys/oct.jwks;
        location ~ ^/poll/(?<ch>[\w.:@~-]+)$ { longpoll_channel $ch; longpoll_timeout 1s; }
        location ~ ^/events/(?<ch>[\w.:@~-]+)$ { sse_channel $ch; }
        location ~ ^/wait/(?<ch>[\w.:@~-]+)$ { longpoll_channel $ch; longpoll_timeout 30s; }
    }
EOF

my $dir = $t->prefix;
my $k = make_keys("$dir/keys");
my $secret = pack 'H*', $k->{secret_hex};
sub write_file { my ($f, $s) = @_; open my $fh, '>', $f or die "$f: $!"; print $fh $s; close $fh }
write_file("$dir/keys/oct.jwks", json({ keys => [{ kty => 'oct', k => $k->{secret}, kid => 'h1' }] }));
# An RSA JWK with kid "r1" (its key type is not oct): for "kid of another type".
my $rsa_pem = `openssl pkey -in '$k->{rsa}' -pubout -outform DER 2>/dev/null | openssl rsa -pubin -inform DER -noout -modulus 2>/dev/null`;
my ($mod) = $rsa_pem =~ /Modulus=([0-9A-F]+)/;
die "no RSA modulus" unless $mod;
write_file("$dir/keys/rsa.jwks", json({ keys => [{ kty => 'RSA', kid => 'r1', n => b64url(pack 'H*', $mod), e => 'AQAB' }] }));

$t->start;
$t->publish($_, "m-$_") for qw(user.42.a user.43.x news ab c);

my $now = time;
my %grants = (subscribe => ['user.42.*', 'news', 'a*'], publish => ['user.42.*']);
my %base = (sub => '42', exp => $now + 3600, channels => \%grants);

# HS256 over raw header and payload texts (so duplicate keys and bad bytes can be signed).
sub hs256_raw {
    my ($header_text, $payload_text) = @_;
    my $input = b64url($header_text) . '.' . b64url($payload_text);
    return "$input." . b64url(Digest::SHA::hmac_sha256($input, $secret));
}
sub hs256 { my ($claims, $header) = @_; hs256_raw(json({ alg => 'HS256', %{ $header // {} } }), json($claims)) }
sub bearer { return { Authorization => "Bearer $_[0]" } }
sub get {
    my ($path, $headers, %o) = @_;
    return $t->http(GET => $path, headers => $headers // {}, timeout => 10, %o);
}
sub status_of { get(@_)->{status} }
my $C = '?last_event_id=1-0';   # a long poll from the start answers at once


my $good = hs256(\%base);
is(status_of("/poll/user.42.a$C", bearer($good)), 200, 'the HS256 token signed here is accepted');
my $expired = hs256({ %base, exp => $now - 10 });

# ---- token sources ----

is(get("/poll/user.42.a$C", [Authorization => "Bearer $good", Authorization => "Bearer $good"])->{status}, 400,
   'two Authorization headers: 400 (nginx refuses the duplicate)');
is(get("/poll/user.42.a$C", [Authorization => "Bearer $expired", Authorization => "Bearer $good"])->{status}, 400,
   'two Authorization headers, an invalid one first: 400');
check_refusal(get("/poll/user.42.a$C", { Cookie => "channels_jwt=$expired; channels_jwt=$good" }), 401, 'invalid_token',
        'invalid token: token expired', 'two cookies of the name: the first is the token (expired)');
check_refusal(get("/poll/user.42.a$C", [Cookie => "channels_jwt=$expired", Cookie => "channels_jwt=$good"]), 401,
        'invalid_token', 'invalid token: token expired', 'two Cookie header lines: the first is the token');
is(status_of("/poll/user.42.a$C", { Cookie => "channels_jwt=$good; channels_jwt=$expired" }), 200,
   'two cookies of the name, the valid first: 200');
check_refusal(get("/poll/user.42.a$C&access_token=$expired&access_token=$good"), 401, 'invalid_token',
        'invalid token: token expired', 'two access_token arguments: the first is the token');
(my $all_escaped = $good) =~ s/(.)/sprintf('%%%02X', ord $1)/ge;
is(status_of("/poll/user.42.a$C&access_token=$all_escaped"), 200, 'access_token with every byte percent-encoded');
check_refusal(get("/poll/user.42.a$C&access_token=$good%00"), 401, 'invalid_token', 'invalid token: malformed token: bad base64url',
        'access_token with a NUL byte appended (%00)');
check_refusal(get("/poll/user.42.a", { Authorization => "Bearer $good x" }), 401, 'invalid_token',
        'invalid token: malformed token: bad base64url', 'a Bearer value with a second word');
is(status_of("/poll/user.42.a$C", { Authorization => "BEARER\t$good" }), 200, 'BEARER and a tab (RFC 7235: any case)');
check_refusal(get('/poll/user.42.a', { Authorization => "Bearer$good" }), 401, 'none', 'token required',
        'no space after the scheme: no Bearer token');
# A token split over two header lines (obsolete line folding) is refused by nginx.
my $half = int(length($good) / 2);
my $folded = $t->raw_request("GET /poll/user.42.a$C HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                             . substr($good, 0, $half) . "\r\n " . substr($good, $half) . "\r\nConnection: close\r\n\r\n");
isnt($folded->{status}, 200, "a token folded over two header lines is not accepted ($folded->{status})");

# the 8 KiB bound, to the byte
sub token_of_length {
    my ($len) = @_;
    my $pad = '';
    my $tok;
    for (1 .. 20) {
        $tok = hs256({ %base, pad => $pad });
        last if length($tok) == $len;
        my $need = int(($len - length $tok) * 3 / 4);
        $pad .= 'x' x ($need > 0 ? $need : 1) if length($tok) < $len;
        chop $pad if length($tok) > $len;
    }
    return $tok;
}
my $t8192 = token_of_length(8192);
my $t8193 = token_of_length(8193);
is(length($t8192) . '/' . length($t8193), '8192/8193', 'tokens of 8192 and 8193 bytes');
is(status_of("/poll/user.42.a$C", bearer($t8192)), 200, 'a token of exactly 8 KiB: accepted');
check_refusal(get('/poll/user.42.a', bearer($t8193)), 401, 'invalid_token', 'invalid token: longer than 8 KiB', '8 KiB + 1');
check_refusal(get("/poll/user.42.a$C&access_token=$t8193"), 401, 'invalid_token', 'invalid token: longer than 8 KiB',
        '8 KiB + 1 in access_token');

# HEAD: the refusal's headers, no body
{
    my $r = $t->http(HEAD => '/poll/user.42.a');
    is($r->{status}, 401, 'HEAD without a token: 401');
    is($r->{headers}{'www-authenticate'}, $WWW{none}, 'HEAD: WWW-Authenticate');
    is($r->{body}, '', 'HEAD: no body');
}

# HTTP/1.0
my $h10 = $t->raw_request("GET /poll/user.42.a HTTP/1.0\r\n\r\n");
is($h10->{status}, 401, 'HTTP/1.0 without a token: 401');
is($h10->{headers}{'www-authenticate'}, $WWW{none}, 'HTTP/1.0: WWW-Authenticate');
is($t->raw_request("GET /poll/user.42.a$C HTTP/1.0\r\nAuthorization: Bearer $good\r\n\r\n")->{status}, 200,
   'HTTP/1.0 with a token: 200');

# HTTP/2: cookie crumbs are separate header fields (RFC 9113 §8.2.3)
{
    my $h = H2->new(port => $t->port(2));
    my $sid = $h->request(GET => "/poll/user.42.a$C", headers => [cookie => 'a=b', cookie => "channels_jwt=$good", cookie => 'c=d']);
    my $r = $h->response($sid, timeout => 5);
    is($r && $r->{status}, 200, 'HTTP/2: the token in the second cookie crumb');
    $sid = $h->request(GET => "/poll/user.42.a$C", headers => [cookie => "channels_jwt=$expired", cookie => "channels_jwt=$good"]);
    $r = $h->response($sid, timeout => 5);
    is($r && $r->{status}, 401, 'HTTP/2: two crumbs of the name: the first (expired) is the token');
    $sid = $h->request(GET => '/poll/user.42.a');
    $r = $h->response($sid, timeout => 5);
    $h->wait(sub { $h->stream($sid)->{ended} }, timeout => 5);
    is($r && $r->{status}, 401, 'HTTP/2 without a token: 401');
    is($r && $r->{headers}{'www-authenticate'}, $WWW{none}, 'HTTP/2: WWW-Authenticate');
    is($h->stream($sid)->{data}, "token required\n", 'HTTP/2: the one-line body');
    $sid = $h->request(GET => '/poll/user.42.a', headers => [authorization => "Bearer $good", authorization => "Bearer $good"]);
    $r = $h->response($sid, timeout => 5);
    isnt($r && $r->{status}, 200, 'HTTP/2: two authorization fields are not accepted');
    $h->close;
}

# ---- verification ----

check_refusal(get('/poll/user.42.a', bearer(hs256_raw('{"alg":"none","alg":"HS256"}', json(\%base)))), 401, 'invalid_token',
        'invalid token: malformed token: bad header', 'header naming alg twice');
check_refusal(get('/poll/user.42.a', bearer(hs256_raw('{"alg":"HS256","\u0061lg":"none"}', json(\%base)))), 401,
        'invalid_token', 'invalid token: malformed token: bad header', 'alg twice, once escaped');
my $claims_text = json(\%base);
(my $exp_twice = $claims_text) =~ s/^\{/{"exp":1,/;
check_refusal(get('/poll/user.42.a', bearer(hs256_raw('{"alg":"HS256"}', $exp_twice))), 401, 'invalid_token',
        'invalid token: malformed token: claims are not a JSON object', 'claims naming exp twice');
sub with_exp { my ($text) = @_; (my $c = $claims_text) =~ s/"exp":\d+/"exp":$text/; hs256_raw('{"alg":"HS256"}', $c) }
check_refusal(get('/poll/user.42.a', bearer(with_exp('1e400'))), 401, 'invalid_token',
        'invalid token: malformed token: claims are not a JSON object', 'exp 1e400');
check_refusal(get('/poll/user.42.a', bearer(with_exp('-0'))), 401, 'invalid_token', 'invalid token: token expired', 'exp -0');
check_refusal(get('/poll/user.42.a', bearer(with_exp('-1e300'))), 401, 'invalid_token', 'invalid token: token expired', 'exp -1e300');
check_refusal(get('/poll/user.42.a', bearer(with_exp('"9999999999"'))), 401, 'invalid_token', 'invalid token: malformed claim',
        'exp as a string');
check_refusal(get('/poll/user.42.a', bearer(with_exp('null'))), 401, 'invalid_token', 'invalid token: malformed claim', 'exp null');
is(status_of("/poll/user.42.a$C", bearer(with_exp('9223372036854775808'))), 200, 'exp 2^63: far future, accepted');
is(status_of("/poll/user.42.a$C", bearer(with_exp('1e300'))), 200, 'exp 1e300: far future, accepted');
is(status_of("/poll/user.42.a$C", bearer(with_exp(($now + 100) . '.5'))), 200, 'exp with a fraction');
check_refusal(get('/poll/user.42.a', bearer(with_exp((time - 1) . '.999'))), 401, 'invalid_token', 'invalid token: token expired',
        'exp with a fraction, just past');
check_refusal(get('/poll/user.42.a', bearer(hs256({ %base, nbf => '1' }))), 401, 'invalid_token', 'invalid token: malformed claim',
        'nbf as a string');
check_refusal(get('/poll/user.42.a', bearer(hs256_raw('{"alg":"HS256"}', ('[' x 2000) . (']' x 2000)))), 401, 'invalid_token',
        'invalid token: malformed token: claims are not a JSON object', 'claims: a depth bomb of 2000 arrays');
check_refusal(get('/poll/user.42.a', bearer(hs256_raw('{"alg":"HS256","x":' . ('[' x 2000) . (']' x 2000) . '}', $claims_text))),
        401, 'invalid_token', 'invalid token: malformed token: bad header', 'header: a depth bomb');
(my $bad_utf8 = $claims_text) =~ s/"sub":"42"/"sub":"4\xC0\xAF2"/;
check_refusal(get('/poll/user.42.a', bearer(hs256_raw('{"alg":"HS256"}', $bad_utf8))), 401, 'invalid_token',
        'invalid token: malformed token: claims are not a JSON object', 'claims with an overlong UTF-8 sequence');
(my $nul_pattern = $claims_text) =~ s/"news"/"news\\u0000x"/;
check_refusal(get('/poll/news', bearer(hs256_raw('{"alg":"HS256"}', $nul_pattern))), 401, 'invalid_token',
        'invalid token: malformed claim', 'a grant pattern with an escaped NUL');
check_refusal(get('/poll/user.42.a', bearer(hs256(\%base, { kid => "h1\0" }))), 401, 'invalid_token', 'invalid token: unknown kid',
        'kid "h1\\u0000" does not select the key h1');
check_refusal(get('/poll/user.42.a', bearer(hs256(\%base, { kid => 'r1' }))), 401, 'invalid_token',
        'invalid token: key type does not match alg', 'HS256 naming the kid of an RSA key');
check_refusal(get('/poll/user.42.a', bearer(hs256(\%base, { kid => 5 }))), 401, 'invalid_token',
        'invalid token: malformed token: bad header', 'kid not a string');
check_refusal(get('/poll/user.42.a', bearer(hs256(\%base, { crit => [] }))), 401, 'invalid_token',
        'invalid token: unsupported crit header', 'crit: [] (even empty)');
# sub goes into $channel_jwt_sub, which a configuration may put in a response header or a log
{
    my $r = get("/subhdr/user.42.a$C", bearer(hs256({ %base, sub => "42\r\nX-Injected: yes" })));
    ok(!exists $r->{headers}{'x-injected'}, 'a sub holding CR LF does not split the response headers')
        or diag("status $r->{status}, X-Sub " . ($r->{headers}{'x-sub'} // '-'));
    check_refusal($r, 401, 'invalid_token', 'invalid token: malformed claim', 'a sub holding CR LF');
    $r = get("/subhdr/user.42.a$C", bearer(hs256({ %base, sub => "user\x{e9}" })));
    is($r->{status}, 200, 'a sub with non-ASCII UTF-8: accepted');
}

# ECDSA signature forms
my $es = openssl_token('ES256', $k->{ec256}, {}, \%base);
is(status_of("/poll/user.42.a$C", bearer($es)), 200, 'ES256 from openssl: accepted');
my ($es_in, $es_sig) = $es =~ /^(.*)\.([^.]*)$/;
my $rs = MIME::Base64::decode_base64(($es_sig =~ tr{-_}{+/}r) . '=' x ((4 - length($es_sig) % 4) % 4));
is(length $rs, 64, 'ES256 r||s is 64 bytes');
for my $case (['63 bytes', substr($rs, 0, 63)], ['65 bytes', "\0$rs"], ['r||s||0', "$rs\0"], ['empty', '']) {
    check_refusal(get('/poll/user.42.a', bearer("$es_in." . b64url($case->[1]))), 401, 'invalid_token', 'invalid token: bad signature',
            "ES256 signature of $case->[0]");
}
my $der = do {
    my ($r, $s) = (substr($rs, 0, 32), substr($rs, 32));
    my $int = sub { my $v = shift; $v =~ s/^\0+//; $v = "\0$v" if ord($v) & 0x80; "\x02" . chr(length $v) . $v };
    my $body = $int->($r) . $int->($s);
    "\x30" . chr(length $body) . $body;
};
check_refusal(get('/poll/user.42.a', bearer("$es_in." . b64url($der))), 401, 'invalid_token', 'invalid token: bad signature',
        'ES256 signature in DER (not JWS r||s)');
my $n256 = Math::BigInt->from_hex('FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551');
my $s_int = Math::BigInt->from_hex(unpack 'H*', substr($rs, 32));
my $high = $n256->copy->bsub($s_int)->as_hex =~ s/^0x//r;
$high = ('0' x (64 - length $high)) . $high;
my $es_high = "$es_in." . b64url(substr($rs, 0, 32) . pack('H*', $high));
my $es_high_status = status_of("/poll/user.42.a$C", bearer($es_high));
note("ES256 with s replaced by n - s (the other valid signature): $es_high_status");
my $s_plus_n = $s_int->copy->badd($n256)->as_hex =~ s/^0x//r;
if (length $s_plus_n <= 64) {
    $s_plus_n = ('0' x (64 - length $s_plus_n)) . $s_plus_n;
    check_refusal(get('/poll/user.42.a', bearer("$es_in." . b64url(substr($rs, 0, 32) . pack('H*', $s_plus_n)))), 401,
            'invalid_token', 'invalid token: bad signature', 'ES256 with s + n (out of range)');
}

# EdDSA: S + L is not canonical (RFC 8032 §5.1.7: S must be below L)
my $ed = openssl_token('EdDSA', $k->{ed25519}, {}, \%base);
is(status_of("/poll/user.42.a$C", bearer($ed)), 200, 'EdDSA from openssl: accepted');
my ($ed_in, $ed_sig) = $ed =~ /^(.*)\.([^.]*)$/;
my $ed_raw = MIME::Base64::decode_base64(($ed_sig =~ tr{-_}{+/}r) . '=' x ((4 - length($ed_sig) % 4) % 4));
my $L = Math::BigInt->new('7237005577332262213973186563042994240857116359379907606001950938285454250989');
my $S = Math::BigInt->from_hex(unpack 'H*', scalar reverse substr($ed_raw, 32));
my $S2 = $S->copy->badd($L)->as_hex =~ s/^0x//r;
$S2 = ('0' x (64 - length $S2)) . $S2;
check_refusal(get('/poll/user.42.a', bearer("$ed_in." . b64url(substr($ed_raw, 0, 32) . reverse pack('H*', $S2)))), 401,
        'invalid_token', 'invalid token: bad signature', 'EdDSA with S + L (non-canonical)');

# ---- the verified-token cache ----

is(status_of("/poll/user.42.a$C", bearer($es)), 200, 'ES256 token cached by the server key set');
is(status_of("/other/user.42.a$C", bearer($es)), 200, 'and accepted where another set holds the same key');
is(status_of("/poll/user.42.a$C", bearer($good)), 200, 'HS256 token cached by the server key set');
check_refusal(get('/other/user.42.a', bearer($good)), 401, 'invalid_token', "invalid token: no key for the token's alg",
        'the cached HS256 token does not pass where the key set lacks its key');
check_refusal(get('/strict/user.42.a', bearer($good)), 401, 'invalid_token', 'invalid token: wrong audience',
        'the cached token is checked against the location audience');
{
    my $nbf = int(Time::HiRes::time()) + 2;
    my $later = hs256({ %base, nbf => $nbf });
    check_refusal(get('/poll/user.42.a', bearer($later)), 401, 'invalid_token', 'invalid token: token not yet valid',
            'nbf in the future');
    check_refusal(get('/poll/user.42.a', bearer($later)), 401, 'invalid_token', 'invalid token: token not yet valid',
            'nbf in the future, again (verified and cached)');
    Time::HiRes::sleep(0.05) while Time::HiRes::time() < $nbf + 0.05;   # the claim itself is the clock here
    is(status_of("/poll/user.42.a$C", bearer($later)), 200, 'valid once nbf has passed');
}
{
    my $exp = int(Time::HiRes::time()) + 2;
    my $soon = hs256({ %base, exp => $exp });
    is(status_of("/poll/user.42.a$C", bearer($soon)), 200, 'a token expiring in 2 s: accepted (cached)');
    Time::HiRes::sleep(0.05) while Time::HiRes::time() < $exp + 0.05;
    check_refusal(get('/poll/user.42.a', bearer($soon)), 401, 'invalid_token', 'invalid token: token expired',
            'the cached token is refused once exp has passed');
}

# ---- grants ----

check_refusal(get('/multi?ch=user.42.a%2Cuser.43.x', bearer($good)), 403, 'insufficient_scope',
        'channel user.43.x is not granted by the token', 'a channel hidden behind %2C in the list');
check_refusal(get('/multi?ch=ab,c', bearer($good)), 403, 'insufficient_scope', 'channel c is not granted by the token',
        'grant a* does not reach c in "ab,c"');
is(status_of("/multi?ch=ab${\ '&last_event_id=1-0'}", bearer($good)), 200, 'grant a* matches ab');
check_refusal(get('/poll/user.42', bearer($good)), 403, 'insufficient_scope', 'channel user.42 is not granted by the token',
        'user.42.* does not match user.42');
my $sub_only = hs256({ %base, channels => { subscribe => ['user.42.*'] } });
for my $m (qw(POST PUT DELETE GET HEAD OPTIONS PATCH)) {
    my $r = $t->http($m => '/pub/user.42.out', headers => bearer($sub_only), ($m =~ /^P/ ? (body => 'x') : ()));
    is($r->{status}, 403, "$m on a publish location with only a subscribe grant: 403");
}
my $no_channels = hs256({ sub => '42', exp => $now + 3600, channels => {} });
check_refusal(get('/poll/news', bearer($no_channels)), 403, 'insufficient_scope', 'channel news is not granted by the token',
        'an empty channels object grants nothing');

# $n distinct $alg tokens with garbage signatures ($words 32-bit words) to $path, each
# costing a verification: all 401; returns requests/s (one connection, client included).
sub garbage_flood {
    my ($alg, $path, $n, $words) = @_;
    my $c = $t->client;
    my %seen;
    my $t0 = Time::HiRes::time();
    for my $i (1 .. $n) {
        my $bad = unsigned_token({ alg => $alg }, { %base, jti => $i }, pack('N', $i) x $words);
        my $r = $c->request(GET => $path, headers => { Authorization => "Bearer $bad" });
        $seen{$r->{status}}++;
        $c = $t->client if $c->closed;
    }
    my $rate = $n / (Time::HiRes::time() - $t0);
    is_deeply(\%seen, { 401 => $n }, "$n distinct $alg tokens with garbage signatures: all 401");
    return $rate;
}

{
    my $es_rate = garbage_flood('ES256', '/poll/user.42.a', 300, 16);
    my $c = $t->client;
    my $t0 = Time::HiRes::time();
    $c->request(GET => "/poll/user.42.a$C", headers => { Authorization => "Bearer $es" }) for 1 .. 300;
    my $cached_rate = 300 / (Time::HiRes::time() - $t0);
    note(sprintf('ES256: %.0f garbage-signature requests/s vs %.0f cached-token requests/s (one connection)',
                 $es_rate, $cached_rate));
}

# The dearest verification an unauthenticated client can ask for where an ES384 key is
# configured: every distinct token costs a P-384 verification (measured, not bounded here).
{
    my $rate = garbage_flood('ES384', '/es384/user.42.a', 100, 24);
    note(sprintf('ES384: %.0f garbage-signature requests/s (%.2f ms each, client included)', $rate, 1000 / $rate));
}

# Star-heavy patterns: 256 patterns of 255 bytes against 64 channel ids of 255 bytes, the
# worst the grammar allows (signed data, but the cost is per request, even from the cache).
{
    my $piece = ('a' x 126) . 'b';
    my $pattern = "*$piece*" . ('a' x 126);           # 255 bytes: one middle piece, never found
    # As many as an 8 KiB token holds (the token bound is what bounds this cost).
    my (@patterns, $heavy);
    for my $n (1 .. 256) {
        my @more = (@patterns, $pattern);
        my $tok = hs256({ sub => 'h', exp => $now + 3600, channels => { subscribe => \@more } });
        last if length $tok > 8192;
        ($heavy, @patterns) = ($tok, @more);
    }
    note(scalar(@patterns) . ' patterns of 255 bytes in a token of ' . length($heavy) . ' bytes');
    my @ids = map { sprintf('%03d', $_) . ('a' x 252) } 1 .. 64;
    my $list = join ',', @ids;
    my $c = $t->client;
    my $r = $c->request(GET => "/multi?ch=$list", headers => { Authorization => "Bearer $heavy" }, timeout => 60);
    my @times;
    for (1 .. 5) {
        my $t0 = Time::HiRes::time();
        $r = $c->request(GET => "/multi?ch=$list", headers => { Authorization => "Bearer $heavy" }, timeout => 60);
        push @times, Time::HiRes::time() - $t0;
    }
    @times = sort { $a <=> $b } @times;
    my $base_t0 = Time::HiRes::time();
    $c->request(GET => "/multi?ch=user.42.a&last_event_id=1-0", headers => { Authorization => "Bearer $good" }) for 1 .. 5;
    my $cheap = (Time::HiRes::time() - $base_t0) / 5;
    is($r->{status}, 403, 'star-heavy grants vs 64 long ids: 403');
    note(sprintf('star-heavy grant check: median %.1f ms per request (a plain granted request: %.2f ms)',
                 $times[2] * 1000, $cheap * 1000));
    cmp_ok($times[2], '<', 0.5, 'star-heavy grant check: under 0.5 s per request');
}

# ---- expiry edges ----

{
    my $s = $t->sse_open('/events/user.42.a', headers => bearer(with_exp('1e300')));
    is($s->status, 200, 'SSE with exp 1e300 (taken as year 2286): 200');
    $t->publish('user.42.a', 'far');
    my $ev = $s->next_event(timeout => 5);
    is($ev && $ev->{data}, 'far', 'SSE with a far exp: delivers, no token-expired');
    $s->close;
}

# exp == now is expired, nbf == now is valid (no leeway either way); the server's clock is
# read after the client's, so whole seconds of the client's now are <= the server's.
check_refusal(get('/poll/user.42.a', bearer(hs256({ %base, exp => int(Time::HiRes::time()) }))), 401, 'invalid_token', 'invalid token: token expired',
        'exp == now: expired');
is(status_of("/poll/user.42.a$C", bearer(hs256({ %base, nbf => int(Time::HiRes::time()) }))), 200, 'nbf == now: valid');

# A client that reads nothing (HTTP/2, window 0) gets nothing published after exp: the
# stream is over at exp, whatever is still unsent.
{
    my $h = H2->new(port => $t->port(2), settings => { initial_window_size => 0 }, auto_window => 0);
    my $exp = int(Time::HiRes::time()) + 2;
    my $sid = $h->request(GET => '/events/user.42.a', headers => [authorization => 'Bearer ' . hs256({ %base, exp => $exp })]);
    my $st = $h->response($sid, timeout => 5);
    is($st && $st->{status}, 200, 'HTTP/2 SSE, window 0: 200');
    $t->publish('user.42.a', 'before-exp');
    $h->pump(timeout => 0.2) while Time::HiRes::time() < $exp + 0.5;
    $t->publish('user.42.a', 'after-exp');
    $h->pump(timeout => 0.3);
    $h->window_update(0, 1 << 20);
    $h->window_update($sid, 1 << 20);
    $h->wait(sub { $h->stream($sid)->{ended} || defined $h->stream($sid)->{reset} }, timeout => 5);
    my $data = $h->stream($sid)->{data};
    like($data, qr/data: before-exp/, 'the message published before exp is delivered');
    like($data, qr/event: token-expired/, 'then token-expired');
    unlike($data, qr/after-exp/, 'the message published after exp is not');
    ok($h->stream($sid)->{ended} || defined $h->stream($sid)->{reset}, 'and the stream is over');
    $h->close;
}

# A long poll waits no longer than exp, even with a 30 s timeout.
{
    my $exp = int(Time::HiRes::time()) + 2;
    my $h = H2->new(port => $t->port(2));
    my $t0 = Time::HiRes::time();
    my $sid = $h->request(GET => '/wait/news', headers => [authorization => 'Bearer ' . hs256({ %base, exp => $exp })]);
    my $st = $h->response($sid, timeout => 10);
    my $at = Time::HiRes::time();
    is($st && $st->{status}, 204, 'HTTP/2 long poll: 204 at exp');
    cmp_ok($at, '<', $exp + 1.5, 'answered within 1.5 s of exp');
    cmp_ok($at, '>=', $exp - 0.05, 'not before exp');
    ok($st && defined $st->{headers}{'last-event-id'}, 'with its cursor');
    $h->close;
}

# ---- request bodies of refused requests ----

{
    # No token and Expect: 100-continue: the answer is the refusal, not an invitation to send.
    my $c = $t->client;
    $c->send_raw("POST /pub/user.42.out HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n");
    my $r = $c->read_response(method => 'POST', timeout => 5);
    is($r->{status}, 401, 'POST with Expect: 100-continue and no token: 401 at once (no 100 Continue)');
    $c->close;
}

# ---- a flood of distinct bad tokens: cost and log ----
{
    my $mark = $t->log_mark;
    my $c = $t->client;
    my $n = 1000;
    my %seen;
    my $t0 = Time::HiRes::time();
    for my $i (1 .. $n) {
        my $bad = hs256({ %base, jti => $i });   # a distinct token, then a bad signature
        substr($bad, -5, 1) = substr($bad, -5, 1) eq 'A' ? 'B' : 'A';
        my $r = $c->request(GET => '/poll/user.42.a', headers => { Authorization => "Bearer $bad" });
        $seen{$r->{status}}++;
        $c = $t->client if $c->closed;
    }
    my $rate = $n / (Time::HiRes::time() - $t0);
    is_deeply(\%seen, { 401 => $n }, "$n distinct badly signed tokens: all 401");
    note(sprintf('%.0f bad-signature requests/s over one keep-alive connection (client included)', $rate));
    my $log = $t->log_since($mark);
    my $info = () = $log =~ /\[info\].*channels: 401: invalid token: bad signature/g;
    is($info, $n, 'each logged once, at info');
    unlike($log, qr/\[(?:error|warn|crit|alert|emerg)\]/, 'nothing above info');
}
{
    my $log = $t->error_log;
    my @leaks;
    for my $line (split /\n/, $log) {
        next unless $line =~ /\[(error|warn|crit|alert|emerg)\]/;
        for my $tok ($good, $expired, $es, $ed) {
            my ($sig) = $tok =~ /\.([^.]+)$/;
            push @leaks, $line if index($line, $sig) >= 0;
        }
    }
    is(scalar @leaks, 0, 'no token bytes in the error log at error or above') or diag(join "\n", @leaks[0 .. 2]);
}
TODO: {
    # nginx appends the request line to every error-log line of a request (its log handler),
    # so a token in access_token reaches the error log at [error] whenever anything is logged
    # there for that request: here the publish body over client_max_body_size.
    my $mark = $t->log_mark;
    my $r = $t->http(POST => "/pub/user.42.out?access_token=$good", body => 'x' x 2048);
    { local $TODO; is($r->{status}, 413, 'a granted publish over client_max_body_size: 413'); }
    local $TODO = 'a token in ?access_token= is in [error] lines (nginx prints the request line); see the report';
    my ($sig) = $good =~ /\.([^.]+)$/;
    $t->wait_for_log(qr/too large body/, timeout => 5);
    my @lines = grep { /\[(?:error|warn)\]/ && index($_, $sig) >= 0 } split /\n/, $t->log_since($mark);
    is(scalar @lines, 0, 'the [error] line of that request holds no token bytes') or diag($lines[0]);
}

# ---- keys that would let anyone sign are refused by nginx -t ----
{
    my $kd = "$dir/keys";
    write_file("$kd/e1.jwks", json({ keys => [{ kty => 'RSA', kid => 'e1', n => b64url(pack 'H*', $mod), e => 'AQ' }] }));
    write_file("$kd/ed0.jwks", json({ keys => [{ kty => 'OKP', crv => 'Ed25519', x => b64url("\x01" . ("\0" x 31)) }] }));
    for my $case (["$kd/e1.jwks", qr/public exponent of 1/, 'an RSA JWK with e = 1'],
                  ["$kd/ed0.jwks", qr/small order/, 'an Ed25519 JWK of small order (the identity)']) {
        my $c = ChannelsTest->new(start => 0, conf => <<"CONF");
    server {
        listen 127.0.0.1:%%PORT_0%%;
        channel_auth jwt;
        channel_jwt_key $case->[0];
        location / { }
    }
CONF
        my ($ok, $out) = $c->test_config;
        $c->finish;
        ok(!$ok, "nginx -t refuses $case->[2]");
        like($out, qr/\Q$case->[0]\E.*$case->[1]/, "$case->[2]: the file and why");
    }
}

done_testing;
