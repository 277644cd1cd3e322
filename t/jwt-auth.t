#!/usr/bin/perl
# channel_auth jwt (README "Authorization (JWT)") over real sockets, with tokens minted by the npm
# jose package and by the openssl command line: every algorithm accepted, every rejection case
# answered with the right status, WWW-Authenticate, one-line body and info log line; token sources
# in order; grants on SSE, long-poll, publish and stats locations; $channel_jwt_sub; satisfy any;
# the verified-token cache.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use ChannelsTest qw(json_decode);
use Jwt qw(make_keys jose openssl_token unsigned_token b64url %WWW check_refusal);

my $t = ChannelsTest->new(start => 0, conf => <<'EOF');
    channel_zone zone=z:4m;
    log_format jwt '$status $uri sub=$channel_jwt_sub';
    large_client_header_buffers 4 32k;

    server {
        listen 127.0.0.1:%%PORT_0%%;
        access_log %%PREFIX%%/logs/jwt.log jwt;
        channel_auth jwt;
        channel_jwt_key %%PREFIX%%/keys/rsa.pub;
        channel_jwt_key %%PREFIX%%/keys/ec256.pub;
        channel_jwt_key %%PREFIX%%/keys/ec384.pub;
        channel_jwt_key %%PREFIX%%/keys/ed25519.pub;
        channel_jwt_key %%PREFIX%%/keys/keys.jwks;
        longpoll_timeout 1s;

        location ~ ^/events/(?<ch>[\w.:@~-]+)$ { sse_channel $ch; }
        location ~ ^/poll/(?<ch>[\w.:@~-]+)$   { longpoll_channel $ch; }
        location = /multi                      { longpoll_channel $arg_ch; }
        location ~ ^/pub/(?<ch>[\w.:@~-]+)$    { publish_channel $ch; }
        location = /stats                      { channel_stats; }
        location = /hello.txt {
            root %%PREFIX%%/html;
            add_header X-Sub $channel_jwt_sub;
        }
        location ~ ^/open/(?<ch>[\w.:@~-]+)$ {
            channel_auth off;
            longpoll_channel $ch;
        }
        location ~ ^/strict/(?<ch>[\w.:@~-]+)$ {
            channel_jwt_audience channels;
            channel_jwt_issuer https://issuer.test;
            longpoll_channel $ch;
        }
        location ~ ^/cookie/(?<ch>[\w.:@~-]+)$ {
            channel_jwt_cookie session_token;
            longpoll_channel $ch;
        }
        location ~ ^/rsaonly/(?<ch>[\w.:@~-]+)$ {
            channel_jwt_key %%PREFIX%%/keys/rsa-pkcs1.pub;
            longpoll_channel $ch;
        }
        location ~ ^/any/(?<ch>[\w.:@~-]+)$ {
            satisfy any;
            allow 127.0.0.1;
            deny all;
            longpoll_channel $ch;
        }
        location ~ ^/anydeny/(?<ch>[\w.:@~-]+)$ {
            satisfy any;
            allow 10.9.9.9;
            deny all;
            longpoll_channel $ch;
        }
        location ~ ^/debug/(?<ch>[\w.:@~-]+)$ {
            error_log %%PREFIX%%/logs/jwt-debug.log debug;
            longpoll_channel $ch;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_1%%;
        location ~ ^/pub/(?<ch>[\w.:@~-]+)$ { publish_channel $ch; }
    }
EOF

my $dir = $t->prefix;
my $k = make_keys("$dir/keys");
mkdir "$dir/html";
open my $fh, '>', "$dir/html/hello.txt" or die;
print $fh "hello\n";
close $fh;

my $now = time;
my %grants = (subscribe => ['user.42.*', 'news'], publish => ['user.42.*']);
my %base = (sub => '42', exp => $now + 3600, channels => \%grants);
my %rsa = (pkcs8 => $k->{rsa});

my %spec = (
    ok_HS256 => { alg => 'HS256', secret => $k->{secret}, header => { kid => 'h1' } },
    ok_HS384 => { alg => 'HS384', secret => $k->{secret} },
    ok_HS512 => { alg => 'HS512', secret => $k->{secret} },
    (map { ("ok_$_" => { alg => $_, %rsa }) } qw(RS256 RS384 RS512 PS256 PS384 PS512)),
    ok_ES256 => { alg => 'ES256', pkcs8 => $k->{ec256} },
    ok_ES384 => { alg => 'ES384', pkcs8 => $k->{ec384} },
    ok_EdDSA => { alg => 'EdDSA', pkcs8 => $k->{ed25519} },
    rotated  => { alg => 'RS256', pkcs8 => $k->{rsa2}, header => { kid => 'r2' } },
    kid_r1   => { alg => 'PS256', %rsa, header => { kid => 'r1' } },
    expired  => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, exp => $now - 10 } },
    future   => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, nbf => $now + 3600 } },
    unknown_kid => { alg => 'RS256', %rsa, header => { kid => 'nope' } },
    mismatch => { alg => 'ES256', pkcs8 => $k->{ec256}, header => { kid => 'r1' } },
    confused => { alg => 'HS256', secret_file => $k->{rsa_pub} },
    sub_only => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, channels => { subscribe => ['user.42.*'] } } },
    no_grants => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { sub => '42', exp => $now + 3600 } },
    all      => { alg => 'EdDSA', pkcs8 => $k->{ed25519}, claims => { %base, channels => { subscribe => ['*'] } } },
    aud_ok   => { alg => 'RS256', %rsa, claims => { %base, aud => ['x', 'channels'], iss => 'https://issuer.test' } },
    aud_str  => { alg => 'RS256', %rsa, claims => { %base, aud => 'channels', iss => 'https://issuer.test' } },
    aud_wrong => { alg => 'RS256', %rsa, claims => { %base, aud => 'other', iss => 'https://issuer.test' } },
    aud_none => { alg => 'RS256', %rsa, claims => { %base, iss => 'https://issuer.test' } },
    iss_wrong => { alg => 'RS256', %rsa, claims => { %base, aud => 'channels', iss => 'https://evil.test' } },
    iss_none => { alg => 'RS256', %rsa, claims => { %base, aud => 'channels' } },
    big      => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, pad => 'x' x 8200 } },
    near_big => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, pad => 'x' x 5900 } },
    bad_json => { alg => 'ES256', pkcs8 => $k->{ec256}, payload_text => '{"sub":"42",' },
    bad_claim => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, exp => 'tomorrow' } },
    bad_pattern => { alg => 'ES256', pkcs8 => $k->{ec256}, claims => { %base, channels => { subscribe => ['user 42'] } } },
    debug    => { alg => 'RS256', %rsa, claims => { %base, jti => 'debug' } },
);
$_->{claims} //= \%base for grep { !exists $_->{payload_text} } values %spec;

my $tok = jose({
    jwks => [{ file => "$dir/keys/keys.jwks", keys => [
        { oct => $k->{secret}, kid => 'h1' },
        { spki => $k->{rsa_pub}, alg => 'RS256', kid => 'r1' },
        { spki => $k->{rsa2_pub}, alg => 'RS256', kid => 'r2' },
    ] }],
    tokens => \%spec,
});
my %os = (
    HS256 => openssl_token('HS256', $k->{secret_hex}, {}, \%base),
    HS512 => openssl_token('HS512', $k->{secret_hex}, { kid => 'h1' }, \%base),
    RS256 => openssl_token('RS256', $k->{rsa}, {}, \%base),
    RS512 => openssl_token('RS512', $k->{rsa}, { kid => 'r1' }, \%base),
    PS256 => openssl_token('PS256', $k->{rsa}, {}, \%base),
    PS384 => openssl_token('PS384', $k->{rsa}, {}, \%base),
    ES256 => openssl_token('ES256', $k->{ec256}, {}, \%base),
    ES384 => openssl_token('ES384', $k->{ec384}, {}, \%base),
    EdDSA => openssl_token('EdDSA', $k->{ed25519}, {}, \%base),
);

$t->start;

# Messages to read: a long poll from cursor 1-0 answers at once.
$t->publish($_, "m-$_") for qw(user.42.a user.42.b user.43.x news);

sub bearer { return { Authorization => "Bearer $_[0]" } }

sub get {
    my ($path, $headers) = @_;
    return $t->http(GET => $path, headers => $headers // {}, timeout => 10);
}

sub poll_ok {
    my ($token, $name, $path) = @_;
    my $r = get(($path // '/poll/user.42.a') . '?last_event_id=1-0', bearer($token));
    is($r->{status}, 200, "$name: accepted") or diag($r->{body});
}

# A refusal: status, the exact WWW-Authenticate value, a one-line body, and that line
# in the error log at info.
sub refused {
    my ($r, $status, $error, $line, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    check_refusal($r, $status, $error, $line, $name);
    my $quoted = quotemeta "channels: $status: $line";
    ok($t->wait_for_log(qr/\[info\].*$quoted/, timeout => 5), "$name: logged at info");
}

# ---- every algorithm, from both minting tools ----

for my $alg (qw(HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA)) {
    poll_ok($tok->{"ok_$alg"}, "jose $alg");
}
for my $alg (sort keys %os) {
    poll_ok($os{$alg}, "openssl $alg");
}
poll_ok($tok->{rotated}, 'a second RSA key in the JWKS (rotation, kid r2)');
poll_ok($tok->{kid_r1}, 'kid r1 selects the JWK');
poll_ok($tok->{ok_RS256}, 'an "RSA PUBLIC KEY" (PKCS#1) PEM', '/rsaonly/user.42.a');

# ---- SSE and the access log ----

my $s = $t->sse_open('/events/user.42.a', headers => bearer($tok->{ok_ES256}));
is($s->status, 200, 'SSE with a granted channel: 200');
$t->publish('user.42.a', 'live');
my $ev = $s->next_event(timeout => 5);
is($ev && $ev->{data}, 'live', 'SSE: the stream delivers');
$s->close;
my $deny = $t->sse_open('/events/user.43.x', headers => bearer($tok->{ok_ES256}));
is($deny->status, 403, 'SSE with a channel not granted: 403');

# ---- refusals ----

refused(get('/poll/user.42.a'), 401, 'none', 'token required', 'no token');
refused(get('/poll/user.42.a', { Authorization => 'Basic dXNlcjpwYXNz' }), 401, 'none', 'token required',
        'a Basic Authorization header is no token');
refused(get('/poll/user.42.a', bearer($tok->{expired})), 401, 'invalid_token', 'invalid token: token expired', 'expired');
refused(get('/poll/user.42.a', bearer($tok->{future})), 401, 'invalid_token', 'invalid token: token not yet valid',
        'not yet valid (nbf)');
(my $badsig = $tok->{ok_RS256}) =~ s/(.)(.)$/$1 eq 'A' ? "B$2" : "A$2"/e;
refused(get('/poll/user.42.a', bearer($badsig)), 401, 'invalid_token', 'invalid token: bad signature', 'bad signature');
(my $payload_swapped = $tok->{ok_ES256}) =~ s/\.[^.]+\./'.' . b64url('{"sub":"42","channels":{"subscribe":["*"]}}') . '.'/e;
refused(get('/poll/user.42.a', bearer($payload_swapped)), 401, 'invalid_token', 'invalid token: bad signature',
        'claims changed after signing');
refused(get('/poll/user.42.a', bearer(unsigned_token({ alg => 'none' }, \%base))), 401, 'invalid_token',
        'invalid token: unsigned token (alg none)', 'alg none');
refused(get('/poll/user.42.a', bearer(unsigned_token({ alg => 'HS1' }, \%base, 'x'))), 401, 'invalid_token',
        'invalid token: unsupported alg', 'unknown alg');
refused(get('/poll/user.42.a', bearer($tok->{confused})), 401, 'invalid_token', 'invalid token: bad signature',
        'HS256 with the RSA public key as secret (an oct key exists here)');
refused(get('/rsaonly/user.42.a', bearer($tok->{confused})), 401, 'invalid_token',
        "invalid token: no key for the token's alg", 'HS256 with the RSA public key as secret (RSA keys only)');
refused(get('/poll/user.42.a', bearer($tok->{unknown_kid})), 401, 'invalid_token', 'invalid token: unknown kid',
        'unknown kid');
refused(get('/poll/user.42.a', bearer($tok->{mismatch})), 401, 'invalid_token',
        'invalid token: key type does not match alg', 'ES256 naming the kid of an RSA key');
refused(get('/poll/user.42.a', bearer(unsigned_token({ alg => 'RS256', crit => ['x'], x => 1 }, \%base, 'x'))),
        401, 'invalid_token', 'invalid token: unsupported crit header', 'crit');
refused(get('/poll/user.42.a', bearer('eyJ*.e30.AAAA')), 401, 'invalid_token', 'invalid token: malformed token: bad base64url',
        'malformed base64url');
refused(get('/poll/user.42.a', bearer('a.b')), 401, 'invalid_token', 'invalid token: malformed token', 'two parts');
refused(get('/poll/user.42.a', bearer(unsigned_token('{"alg":"ES256",', \%base, 'x'))), 401, 'invalid_token',
        'invalid token: malformed token: bad header', 'header is not JSON');
refused(get('/poll/user.42.a', bearer($tok->{bad_json})), 401, 'invalid_token',
        'invalid token: malformed token: claims are not a JSON object', 'signed claims that are not JSON');
refused(get('/poll/user.42.a', bearer($tok->{bad_claim})), 401, 'invalid_token', 'invalid token: malformed claim',
        'exp is not a number');
refused(get('/poll/user.42.a', bearer($tok->{bad_pattern})), 401, 'invalid_token', 'invalid token: malformed claim',
        'a grant pattern with a space');
cmp_ok(length $tok->{big}, '>', 8192, 'the big token is over 8 KiB');
refused(get('/poll/user.42.a', bearer($tok->{big})), 401, 'invalid_token', 'invalid token: longer than 8 KiB', 'oversized');
poll_ok($tok->{near_big}, 'a token of ' . length($tok->{near_big}) . ' bytes (under 8 KiB)');

# aud / iss when configured
poll_ok($tok->{aud_ok}, 'aud array holding the audience, right iss', '/strict/user.42.a');
poll_ok($tok->{aud_str}, 'aud string', '/strict/user.42.a');
refused(get('/strict/user.42.a', bearer($tok->{aud_wrong})), 401, 'invalid_token', 'invalid token: wrong audience', 'wrong aud');
refused(get('/strict/user.42.a', bearer($tok->{aud_none})), 401, 'invalid_token', 'invalid token: wrong audience', 'no aud');
refused(get('/strict/user.42.a', bearer($tok->{iss_wrong})), 401, 'invalid_token', 'invalid token: wrong issuer', 'wrong iss');
refused(get('/strict/user.42.a', bearer($tok->{iss_none})), 401, 'invalid_token', 'invalid token: wrong issuer', 'no iss');
poll_ok($tok->{aud_wrong}, 'aud not checked where no audience is configured');

# grants
refused(get('/poll/user.43.x', bearer($tok->{ok_ES256})), 403, 'insufficient_scope',
        'channel user.43.x is not granted by the token', 'a channel outside the grants');
refused(get('/multi?ch=user.42.a,news,user.43.x', bearer($tok->{ok_ES256})), 403, 'insufficient_scope',
        'channel user.43.x is not granted by the token', 'one of several channels not granted');
my $multi = get('/multi?ch=user.42.a,news&last_event_id=1-0', bearer($tok->{ok_ES256}));
is($multi->{status}, 200, 'several channels, all granted: 200');
refused(get('/poll/user.42.a', bearer($tok->{no_grants})), 403, 'insufficient_scope',
        'channel user.42.a is not granted by the token', 'a token without a channels claim');
my $bad_list = get('/multi?ch=user.42.a,,news', bearer($tok->{ok_ES256}));
is($bad_list->{status}, 400, 'a malformed channel list is still answered 400 (by the channel location)');
refused(get('/multi?ch=user.42.a,,news'), 401, 'none', 'token required', 'but only after the token');

# publish: the publish grant, whatever the method
my $pub = $t->http(POST => '/pub/user.42.out', body => 'hi', headers => bearer($tok->{ok_ES256}));
is($pub->{status}, 201, 'publish with a publish grant: 201');
refused($t->http(POST => '/pub/user.42.out', body => 'hi', headers => bearer($tok->{sub_only})), 403,
        'insufficient_scope', 'channel user.42.out is not granted by the token', 'publish with only a subscribe grant');
refused($t->http(POST => '/pub/news', body => 'hi', headers => bearer($tok->{ok_ES256})), 403,
        'insufficient_scope', 'channel news is not granted by the token', 'publish to a subscribe-only channel');
is(get('/pub/user.42.out', bearer($tok->{ok_ES256}))->{status}, 200, 'GET channel info with a publish grant');
refused(get('/pub/user.42.out', bearer($tok->{sub_only})), 403, 'insufficient_scope',
        'channel user.42.out is not granted by the token', 'GET channel info needs publish too');
refused($t->http(DELETE => '/pub/user.42.out', headers => bearer($tok->{sub_only})), 403, 'insufficient_scope',
        'channel user.42.out is not granted by the token', 'DELETE needs publish too');
refused($t->http(POST => '/pub/user.42.out', body => 'x' x 5000), 401, 'none', 'token required',
        'publish without a token (its body is discarded)');

# stats lists every channel: "*" needed
is(get('/stats', bearer($tok->{all}))->{status}, 200, 'channel_stats with subscribe ["*"]: 200');
refused(get('/stats', bearer($tok->{ok_ES256})), 403, 'insufficient_scope', 'channel * is not granted by the token',
        'channel_stats without "*"');

# other locations: a valid token is enough; $channel_jwt_sub
my $hello = get('/hello.txt', bearer($tok->{no_grants}));
is($hello->{status}, 200, 'a location without channels: any valid token');
is($hello->{headers}{'x-sub'}, '42', '$channel_jwt_sub in add_header');
refused(get('/hello.txt'), 401, 'none', 'token required', 'a location without channels: no token');
is(get('/open/user.43.x?last_event_id=1-0')->{status}, 200, 'channel_auth off in a location');

# ---- token sources ----

my $cookie = { Cookie => "a=b; channels_jwt=$tok->{ok_ES256}; c=d" };
is(get('/poll/user.42.a?last_event_id=1-0', $cookie)->{status}, 200, 'the cookie channels_jwt');
is(get("/poll/user.42.a?last_event_id=1-0&access_token=$tok->{ok_ES256}")->{status}, 200, 'the access_token argument');
my $escaped = $tok->{ok_ES256} =~ s/\./%2E/gr;
is(get("/poll/user.42.a?last_event_id=1-0&access_token=$escaped")->{status}, 200, 'access_token percent-decoded');
refused(get('/poll/user.42.a', { %$cookie, Authorization => "Bearer $tok->{expired}" }), 401, 'invalid_token',
        'invalid token: token expired', 'an invalid Bearer token is not rescued by a valid cookie');
refused(get("/poll/user.42.a?access_token=$tok->{ok_ES256}", { Cookie => "channels_jwt=$tok->{expired}" }), 401,
        'invalid_token', 'invalid token: token expired', 'the cookie comes before access_token');
is(get('/poll/user.42.a?last_event_id=1-0', { Cookie => 'channels_jwt=', Authorization => "Bearer $tok->{ok_ES256}" })->{status},
   200, 'Bearer comes first');
is(get('/poll/user.42.a?last_event_id=1-0', { Authorization => "bearer  $tok->{ok_ES256} " })->{status}, 200,
   'the Bearer scheme is case-insensitive');
is(get('/cookie/user.42.a?last_event_id=1-0', { Cookie => "session_token=$tok->{ok_ES256}" })->{status}, 200,
   'channel_jwt_cookie names the cookie');
refused(get('/cookie/user.42.a', $cookie), 401, 'none', 'token required', 'the default cookie is not read then');

# ---- satisfy any ----

is(get('/any/user.43.x?last_event_id=1-0')->{status}, 200, 'satisfy any: allow lets a request in without a token');
my $anydeny = get('/anydeny/user.42.a');
is($anydeny->{status}, 401, 'satisfy any: denied by all: 401 (nginx error page)');
is($anydeny->{headers}{'www-authenticate'}, $WWW{none}, 'satisfy any: WWW-Authenticate kept');
is(get('/anydeny/user.42.a?last_event_id=1-0', bearer($tok->{ok_ES256}))->{status}, 200, 'satisfy any: the token lets it in');
is(get('/anydeny/user.43.x', bearer($tok->{ok_ES256}))->{status}, 403, 'satisfy any: a grant missing: 403');

# ---- the access log ----

my $alog = '';
$t->wait_for(sub {
    $alog = do { local (@ARGV, $/) = "$dir/logs/jwt.log"; <> } // '';
    $alog =~ m{^403 /stats sub=42$}m;
});
like($alog, qr{^200 /poll/user\.42\.a sub=42$}m, 'access log: $channel_jwt_sub of an accepted request');
like($alog, qr{^403 /poll/user\.43\.x sub=42$}m, 'access log: sub of a token without the grant');
like($alog, qr{^401 /poll/user\.42\.a sub=-$}m, 'access log: no sub for a refused token');

# ---- hostile tokens: whatever the bytes, a 401 (never a 500, never a crash) ----

{
    srand(15);
    my @alphabet = ('A' .. 'Z', 'a' .. 'z', '0' .. '9', '-', '_', '.', '=', '+', '/', '%2E', '%00', '~');
    my $c = $t->client;
    my %seen;
    for my $n (1 .. 300) {
        my $m = $tok->{ok_RS256};
        my $kind = $n % 5;
        if ($kind == 0) {            # cut short
            $m = substr($m, 0, int(rand(length $m)));
        } elsif ($kind == 1) {       # a character replaced
            substr($m, int(rand(length $m)), 1) = $alphabet[rand @alphabet];
        } elsif ($kind == 2) {       # a run inserted
            substr($m, int(rand(length $m)), 0) = join '', map { $alphabet[rand @alphabet] } 1 .. 1 + rand(20);
        } elsif ($kind == 3) {       # a part dropped or doubled
            my @p = split /\./, $m, -1;
            my $i = int(rand(@p));
            rand() < 0.5 ? splice(@p, $i, 1) : splice(@p, $i, 0, $p[$i]);
            $m = join '.', @p;
        } else {                     # random JSON-ish header and claims, no valid signature
            my @frag = ('{', '}', '[', ']', '"alg"', ':', '"RS256"', ',', '"none"', '"kid"', '1e999', '"\\u0000"',
                        '"exp"', '-0', 'null', '"channels"', '{"subscribe":["*"]}', '"\\ud800"');
            my $junk = sub { join '', map { $frag[rand @frag] } 1 .. 1 + rand(12) };
            $m = b64url($junk->()) . '.' . b64url($junk->()) . '.' . b64url(join '', map { chr rand 256 } 1 .. rand 300);
        }
        $m = 'x' if $m eq '';
        next if $m eq $tok->{ok_RS256};
        my $r = $c->request(GET => '/poll/user.42.a', headers => { Authorization => "Bearer $m", Connection => 'keep-alive' });
        $seen{$r->{status}}++;
        $c = $t->client if $c->closed;
    }
    is_deeply([ keys %seen ], ['401'], '300 mangled tokens: all 401') or diag(explain(\%seen));
}

# ---- the cache: a token is verified once per worker ----

SKIP: {
    skip 'nginx built without --with-debug', 2 unless `$t->{nginx} -V 2>&1` =~ /--with-debug/;
    for (1 .. 3) {
        is(get('/debug/user.42.a?last_event_id=1-0', bearer($tok->{debug}))->{status}, 200, "cached token, request $_");
    }
    my $dbg = do { local (@ARGV, $/) = "$dir/logs/jwt-debug.log"; <> } // '';
    my $verified = () = $dbg =~ /channels jwt: verifying the token/g;
    my $cached = () = $dbg =~ /channels jwt: token from the cache/g;
    is("$verified/$cached", '1/2', 'verified once, then taken from the cache twice');
}

unlike($t->error_log, qr/\[(?:error|warn)\].*channels/, 'no error or warn lines from the module');

done_testing;
