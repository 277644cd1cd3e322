package Jwt;

=head1 NAME

Jwt - keys and tokens for the JWT tests, made by tools independent of this repository

=head1 SYNOPSIS

    use Jwt qw(make_keys jose openssl_token b64url unsigned_token);
    my $k = make_keys("$prefix/keys");          # openssl genpkey: RSA, EC P-256/P-384, Ed25519, a secret
    my $tok = jose({ jwks => [...], tokens => { name => { alg => 'RS256', pkcs8 => $k->{rsa}, claims => {...} } } });
    my $t2 = openssl_token('ES256', $k->{ec256}, { alg => 'ES256' }, { sub => '42' });

=head1 DESCRIPTION

Keys come from the C<openssl> command line. Tokens come from the npm C<jose> package
(C<t/js/jwt-mint.mjs>, one node process per call of C<jose>) or from the C<openssl>
command line (C<openssl_token>: C<openssl dgst> / C<pkeyutl> over the signing input; an
ECDSA signature's DER is turned into JWS C<r||s> here). Never from this repository's code.

C<make_keys($dir)> returns file names: C<rsa>, C<rsa2> (private PKCS#8 PEM) and C<rsa_pub>,
C<rsa2_pub> (SPKI PEM), likewise C<ec256>, C<ec384>, C<ed25519>; C<rsa_pkcs1_pub> (an
"RSA PUBLIC KEY" block); C<secret> (64 random bytes, base64url) and C<secret_hex>.

C<unsigned_token($header, $claims)> builds a token without a signature (for C<alg: none>
and broken headers). C<b64url($bytes)>, C<json($data)> (canonical JSON text).

=cut

use strict;
use Test::More ();
use warnings;
use Exporter 'import';
use File::Temp ();
use JSON::PP ();
use MIME::Base64 ();
use Cwd ();
use File::Basename ();

our @EXPORT_OK = qw(make_keys jose openssl_token b64url unsigned_token json ensure_node_deps %WWW check_refusal);

my $REPO = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../..');
my $JSON = JSON::PP->new->canonical->utf8;

sub json { $JSON->encode($_[0]) }

# The WWW-Authenticate value of each kind of refusal (README "channel_auth").
our %WWW = (
    none => 'Bearer realm="channels"',
    invalid_token => 'Bearer realm="channels", error="invalid_token"',
    insufficient_scope => 'Bearer realm="channels", error="insufficient_scope"',
);

# Checks a refusal: its status, the exact WWW-Authenticate value and, when given, the
# one-line body.
sub check_refusal {
    my ($r, $status, $error, $line, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    Test::More::is($r->{status}, $status, "$name: $status") or Test::More::diag($r->{body});
    Test::More::is($r->{headers}{'www-authenticate'}, $WWW{$error}, "$name: WWW-Authenticate");
    Test::More::is($r->{body}, "$line\n", "$name: one-line body") if defined $line;
}

sub b64url {
    my $s = MIME::Base64::encode_base64($_[0], '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+$//;
    return $s;
}

# Runs a shell command; returns its stdout (bytes), dies with its stderr on failure.
sub _run {
    my ($cmd) = @_;
    my $err = File::Temp->new;
    my $out = `$cmd 2>'$err'`;
    if ($?) {
        open my $fh, '<', "$err";
        local $/;
        my $text = <$fh> // '';
        die "failed ($?): $cmd\n$text";
    }
    return $out;
}

sub make_keys {
    my ($dir) = @_;
    mkdir $dir;
    my %k;
    my %gen = (
        rsa     => '-algorithm RSA -pkeyopt rsa_keygen_bits:2048',
        rsa2    => '-algorithm RSA -pkeyopt rsa_keygen_bits:2048',
        ec256   => '-algorithm EC -pkeyopt ec_paramgen_curve:P-256',
        ec384   => '-algorithm EC -pkeyopt ec_paramgen_curve:P-384',
        ed25519 => '-algorithm ED25519',
    );
    for my $name (sort keys %gen) {
        _run("openssl genpkey $gen{$name} -out '$dir/$name.pem'");
        _run("openssl pkey -in '$dir/$name.pem' -pubout -out '$dir/$name.pub'");
        $k{$name} = "$dir/$name.pem";
        $k{"${name}_pub"} = "$dir/$name.pub";
    }
    _run("openssl rsa -in '$dir/rsa.pem' -RSAPublicKey_out -out '$dir/rsa-pkcs1.pub'");
    $k{rsa_pkcs1_pub} = "$dir/rsa-pkcs1.pub";
    my $hex = _run("openssl rand -hex 64");
    chomp $hex;
    $k{secret_hex} = $hex;
    $k{secret} = b64url(pack 'H*', $hex);
    chmod 0755, $dir;
    chmod 0644, glob "$dir/*";
    return \%k;
}

sub ensure_node_deps {
    my $out = `sh '$REPO/t/js/ensure-deps.sh' 2>&1`;
    die "npm packages for t/js: $out" if $?;
}

# Runs t/js/jwt-mint.mjs on a spec (see there); returns { name => token }.
sub jose {
    my ($spec) = @_;
    ensure_node_deps();
    my $tmp = File::Temp->new(SUFFIX => '.json');
    print $tmp json($spec);
    close $tmp;
    my $out = _run("node '$REPO/t/js/jwt-mint.mjs' '$tmp'");
    return JSON::PP->new->utf8->decode($out);
}

sub unsigned_token {
    my ($header, $claims, $sig) = @_;
    return b64url(ref $header ? json($header) : $header) . '.' . b64url(ref $claims ? json($claims) : $claims)
        . '.' . b64url($sig // '');
}

# DER ECDSA-Sig-Value -> r||s of n bytes each.
sub _der_to_rs {
    my ($der, $n) = @_;
    my @b = unpack 'C*', $der;
    my $i = 0;
    die "not a DER sequence\n" unless $b[$i++] == 0x30;
    $i += $b[$i] & 0x80 ? 1 + ($b[$i] & 0x7f) : 1;
    my $rs = '';
    for (1 .. 2) {
        die "not a DER integer\n" unless $b[$i++] == 0x02;
        my $len = $b[$i++];
        my $v = pack 'C*', @b[$i .. $i + $len - 1];
        $i += $len;
        $v =~ s/^\x00+//;
        $rs .= ("\x00" x ($n - length $v)) . $v;
    }
    return $rs;
}

my %HASH = (256 => 'sha256', 384 => 'sha384', 512 => 'sha512');

# A token signed by the openssl command line. $key: a private PEM file (RS/PS/ES/EdDSA) or
# the secret in hex (HS). $payload: claims (hashref) or raw text.
sub openssl_token {
    my ($alg, $key, $header, $payload) = @_;
    my $input = b64url(json({ alg => $alg, %{ $header // {} } })) . '.' . b64url(ref $payload ? json($payload) : $payload);
    my $tmp = File::Temp->new;
    binmode $tmp;
    print $tmp $input;
    close $tmp;
    my ($bits) = $alg =~ /(\d+)$/;
    my $md = $HASH{$bits // 0};
    my $sig;
    if ($alg =~ /^HS/) {
        $sig = _run("openssl dgst -$md -mac HMAC -macopt hexkey:$key -binary '$tmp'");
    } elsif ($alg =~ /^RS/) {
        $sig = _run("openssl dgst -$md -sign '$key' -binary '$tmp'");
    } elsif ($alg =~ /^PS/) {
        $sig = _run("openssl dgst -$md -sign '$key' -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest -binary '$tmp'");
    } elsif ($alg =~ /^ES/) {
        $sig = _der_to_rs(_run("openssl dgst -$md -sign '$key' -binary '$tmp'"), $bits / 8);
    } elsif ($alg eq 'EdDSA') {
        $sig = _run("openssl pkeyutl -sign -inkey '$key' -rawin -in '$tmp'");
    } else {
        die "openssl_token: no recipe for $alg\n";
    }
    return "$input." . b64url($sig);
}

1;
