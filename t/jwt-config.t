#!/usr/bin/perl
# JWT configuration (README "Authorization (JWT)"): `nginx -t` names the key file and the reason for
# every bad key; a reload with a bad key fails like any bad configuration and the running workers
# keep their keys; a reload with new keys rotates them; keys and settings inherit from http/server
# to locations (a level with its own channel_jwt_key replaces the keys); PEM certificates and
# relative paths; both modules of the one .so are registered by one load_module. Keys from the
# openssl command line, JWKS and tokens from npm jose.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use ChannelsTest;
use Jwt qw(make_keys jose);

# The keys outlive every nginx of this file (stopping one reads its configuration again).
my $KEYS_DIR = File::Temp->newdir('channels-jwt-keys-XXXXXX', TMPDIR => 1);
chmod 0755, "$KEYS_DIR";
my $KD = "$KEYS_DIR/keys";
my $k = make_keys($KD);

sub spew {
    my ($f, $c) = @_;
    open my $fh, '>', $f or die "$f: $!";
    print $fh $c;
    close $fh;
    chmod 0644, $f;
}
spew("$KD/garbage.pem", "not a key\n");
spew("$KD/bad.jwks", '{"keys":[{"kty":"oct","k":"c2hvcnQ"}]}');
spew("$KD/broken.jwks", '{"keys":[');
spew("$KD/enc-only.jwks", '{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}');
`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out '$KD/rsa1024.pem' 2>/dev/null`;
`openssl pkey -in '$KD/rsa1024.pem' -pubout -out '$KD/rsa1024.pub' 2>/dev/null`;
`openssl req -x509 -key '$k->{ec256}' -days 2 -subj /CN=channels -out '$KD/ec256.crt' 2>/dev/null`;
chmod 0644, glob "$KD/*";
ok(-s "$KD/rsa1024.pub" && -s "$KD/ec256.crt", 'extra keys made with openssl');

# ---- nginx -t on bad keys ----

sub conf_with {
    my ($key_lines, %o) = @_;
    return <<"EOF";
    channel_zone zone=z:1m;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        channel_auth jwt;
        $key_lines
        location ~ ^/poll/(?<ch>[\\w.-]+)\$ { longpoll_channel \$ch; }
    }
EOF
}

sub config_test {
    my ($conf) = @_;
    my $c = ChannelsTest->new(start => 0, conf => $conf);
    my ($ok, $out) = $c->test_config;
    $c->finish;
    return ($ok, $out);
}

my @bad = (
    ["$KD/missing.pem", qr/cannot open it \(2: No such file or directory\)/, 'a missing file'],
    ["$KD/garbage.pem", qr/no PEM public key in it/, 'a file that is no key'],
    [$k->{rsa}, qr/holds a private key \(PRIVATE KEY\); give the public key only/, 'a private key'],
    ["$KD/rsa1024.pub", qr/RSA key of 1024 bits; at least 2048 are required/, 'a short RSA key'],
    ["$KD/bad.jwks", qr/JWK 1: "k" is shorter than 256 bits/, 'a short oct key'],
    ["$KD/broken.jwks", qr/JWKS is not a JSON object: unexpected end of text/, 'JWKS that is not JSON'],
    ["$KD/enc-only.jwks", qr/JWKS holds no signature-verification key/, 'JWKS with encryption keys only'],
);
for my $case (@bad) {
    my ($file, $why, $name) = @$case;
    my ($ok, $out) = config_test(conf_with("channel_jwt_key $file;"));
    ok(!$ok, "nginx -t refuses $name");
    like($out, qr/\[emerg\] channel_jwt_key "\Q$file\E": $why.* in \S+nginx\.conf:\d+/, "nginx -t: file and reason for $name")
        or diag($out);
}

my ($ok, $out) = config_test(conf_with(''));
ok(!$ok, 'channel_auth jwt without a key is refused');
like($out, qr/"channel_auth jwt" needs a "channel_jwt_key"/, '... and says so') or diag($out);
($ok, $out) = config_test(conf_with("channel_jwt_key $k->{rsa_pub};") =~ s/channel_auth jwt/channel_auth yes/r);
ok(!$ok, 'channel_auth takes off or jwt');
like($out, qr/invalid value "yes"/, '... and says so') or diag($out);

# ---- keys and settings inherit; a level with its own keys replaces them ----

my $t = ChannelsTest->new(start => 0, conf => <<"EOF");
    channel_zone zone=z:1m;
    channel_auth jwt;
    channel_jwt_key keys/rsa.pub;
    channel_jwt_audience outer;
    longpoll_timeout 1s;
    server {
        listen 127.0.0.1:%%PORT_0%%;
        location ~ ^/poll/(?<ch>[\\w.-]+)\$    { longpoll_channel \$ch; }
        location ~ ^/cert/(?<ch>[\\w.-]+)\$    { channel_jwt_key $KD/ec256.crt; longpoll_channel \$ch; }
        location ~ ^/inner/(?<ch>[\\w.-]+)\$   { channel_jwt_audience inner; longpoll_channel \$ch; }
    }
    server {
        listen 127.0.0.1:%%PORT_1%%;
        channel_auth off;
        location ~ ^/pub/(?<ch>[\\w.-]+)\$ { publish_channel \$ch; }
    }
EOF
# keys/rsa.pub is relative: nginx reads it from its configuration directory.
symlink $KD, $t->prefix . '/conf/keys' or die "symlink: $!";

sub tokens {
    my (%by) = @_;
    my %spec;
    for my $name (keys %by) {
        my ($alg, $pem, $aud, $kid) = @{ $by{$name} };
        $spec{$name} = { alg => $alg, pkcs8 => $pem, header => { $kid ? (kid => $kid) : () },
                         claims => { aud => $aud, exp => time + 600, channels => { subscribe => ['*'] } } };
    }
    return jose({ tokens => \%spec });
}
my $tok = tokens(
    rsa_outer => ['RS256', $k->{rsa}, 'outer'],
    rsa_inner => ['RS256', $k->{rsa}, 'inner'],
    ec_outer  => ['ES256', $k->{ec256}, 'outer'],
    rsa2_outer => ['RS256', $k->{rsa2}, 'outer', 'next'],
);

$t->start;
$t->publish('a', 'x');
sub status_of {
    my ($path, $token) = @_;
    return $t->http(GET => "$path?last_event_id=1-0", headers => { Authorization => "Bearer $token" })->{status};
}
is(status_of('/poll/a', $tok->{rsa_outer}), 200, 'http-level key, relative path, inherited audience');
is(status_of('/poll/a', $tok->{rsa_inner}), 401, 'inherited audience enforced');
is(status_of('/inner/a', $tok->{rsa_inner}), 200, 'a location overrides the audience');
is(status_of('/cert/a', $tok->{ec_outer}), 200, 'a PEM certificate as the key');
is(status_of('/cert/a', $tok->{rsa_outer}), 401, "a location's own key replaces the inherited ones");
is(status_of('/poll/a', $tok->{ec_outer}), 401, 'and does not leak to other locations');
is($t->http(GET => '/pub/a', port => 1)->{status}, 200, 'channel_auth off on another server');

# ---- reloads: a bad key fails, new keys rotate ----

my $template = $t->{conf_template};
my @workers = $t->worker_pids;
$t->allow_log(qr/\[emerg\].*channel_jwt_key/);
(my $broken = $template) =~ s{channel_jwt_key keys/rsa\.pub;}{channel_jwt_key keys/garbage.pem;};
my $mark = $t->log_mark;
ok(!$t->reload(conf => $broken, timeout => 5), 'nginx -s reload with a bad key file fails');
# The master itself, signalled directly (as after an edit of the key file alone).
kill 'HUP', $t->master_pid;
ok($t->wait_for_log(qr/\[emerg\].*channel_jwt_key "[^"]*garbage\.pem": no PEM public key/, since => $mark),
   'the master refuses the new configuration and its log says which file and why');
is_deeply([ $t->worker_pids ], \@workers, 'the workers stay');
is(status_of('/poll/a', $tok->{rsa_outer}), 200, 'and keep their keys');

spew("$KD/rotation.jwks", '');
jose({ jwks => [{ file => "$KD/rotation.jwks", keys => [
    { spki => $k->{rsa_pub}, alg => 'RS256', kid => 'current' },
    { spki => $k->{rsa2_pub}, alg => 'RS256', kid => 'next' } ] }] });
(my $rotated = $template) =~ s{channel_jwt_key keys/rsa\.pub;}{channel_jwt_key keys/rotation.jwks;};
ok($t->reload(conf => $rotated), 'a reload with a JWKS of two keys');
is(status_of('/poll/a', $tok->{rsa2_outer}), 200, 'the new key (kid next) is accepted after the reload');
is(status_of('/poll/a', $tok->{rsa_outer}), 200, 'the old key still works (no kid: any RSA key)');
(my $retired = $template) =~ s{channel_jwt_key keys/rsa\.pub;}{channel_jwt_key keys/rsa2.pub;};
ok($t->reload(conf => $retired), 'a reload that retires the old key');
is(status_of('/poll/a', $tok->{rsa_outer}), 401, 'the retired key is refused (a new worker, a new cache)');

# ---- one .so, two modules ----

my ($okT, $full) = (undef, '');
{
    my $c = ChannelsTest->new(start => 0, conf => conf_with("channel_jwt_key $k->{rsa_pub};"));
    my ($rc, $text) = $c->_run($c->_nginx_args('logs/t.log'), '-T');
    $okT = $rc == 0;
    $full = $text;
    $c->finish;
}
ok($okT, 'nginx -T with one load_module line and directives of both modules');
is(scalar(() = $full =~ /^load_module /mg), 1, 'a single load_module line');
my $syms = `nm -D '@{[$t->{module_path}]}' 2>/dev/null`;
SKIP: {
    skip 'nm not available', 2 unless $? == 0;
    like($syms, qr/ D ngx_http_channels_module$/m, 'the .so exports ngx_http_channels_module');
    like($syms, qr/ D ngx_http_channels_jwt_module$/m, 'and ngx_http_channels_jwt_module');
}

done_testing;
