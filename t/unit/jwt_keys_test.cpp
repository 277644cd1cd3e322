// Key loading and signature verification (OpenSSL). Tokens are signed here with OpenSSL's
// own signing calls, keys made with OpenSSL's key generation; the integration tests
// (t/jwt-*.t) add tokens from the npm jose package and the openssl command line.
#include <gtest/gtest.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include <map>
#include <memory>
#include <string>

#include "channels/base64url.h"
#include "channels/jwt.h"
#include "channels/jwt_keys.h"

using channels::JwtAlg;
using channels::JwtKeySet;
using channels::TokenError;

namespace {

struct PkeyFree {
    void operator()(EVP_PKEY *p) const { EVP_PKEY_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::string b64(std::string_view bytes)
{
    std::string out;
    channels::append_base64url(out, bytes);
    return out;
}

std::string bio_text(BIO *bio)
{
    char *data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    std::string out(data, size_t(len));
    BIO_free(bio);
    return out;
}

std::string public_pem(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    EXPECT_EQ(PEM_write_bio_PUBKEY(bio, key), 1);
    return bio_text(bio);
}

std::string private_pem(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    EXPECT_EQ(PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr), 1);
    return bio_text(bio);
}

// Keys are made once: RSA generation takes a while.
EVP_PKEY *key(const std::string &name)
{
    static std::map<std::string, Pkey> keys;
    auto it = keys.find(name);
    if (it != keys.end()) return it->second.get();
    EVP_PKEY *k = nullptr;
    if (name == "rsa" || name == "rsa2") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(2048));
    if (name == "rsa1024") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(1024));
    if (name == "p256") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    if (name == "p384") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
    if (name == "p521") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-521");
    if (name == "ed25519") k = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    EXPECT_NE(k, nullptr) << name;
    keys[name].reset(k);
    return k;
}

const EVP_MD *md_for(JwtAlg alg)
{
    size_t n = channels::alg_hash_bytes(alg);
    return n == 32 ? EVP_sha256() : n == 48 ? EVP_sha384() : n == 64 ? EVP_sha512() : nullptr;
}

std::string bn_bytes(const BIGNUM *bn, int size)
{
    std::string out(size_t(size), '\0');
    EXPECT_EQ(BN_bn2binpad(bn, reinterpret_cast<unsigned char *>(out.data()), size), size);
    return out;
}

// A JWS signature made by OpenSSL (ECDSA's DER turned into r||s as JWS wants it).
std::string sign(EVP_PKEY *pkey, JwtAlg alg, std::string_view input)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = nullptr;
    EXPECT_EQ(EVP_DigestSignInit(ctx, &pctx, alg == JwtAlg::EdDSA ? nullptr : md_for(alg), nullptr, pkey), 1);
    if (alg >= JwtAlg::PS256 && alg <= JwtAlg::PS512) {
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
    }
    size_t len = 0;
    const auto *data = reinterpret_cast<const unsigned char *>(input.data());
    EXPECT_EQ(EVP_DigestSign(ctx, nullptr, &len, data, input.size()), 1);
    std::string sig(len, '\0');
    EXPECT_EQ(EVP_DigestSign(ctx, reinterpret_cast<unsigned char *>(sig.data()), &len, data, input.size()), 1);
    sig.resize(len);
    EVP_MD_CTX_free(ctx);
    if (alg != JwtAlg::ES256 && alg != JwtAlg::ES384) return sig;
    const auto *p = reinterpret_cast<const unsigned char *>(sig.data());
    ECDSA_SIG *es = d2i_ECDSA_SIG(nullptr, &p, long(sig.size()));
    int half = int(channels::alg_hash_bytes(alg));
    std::string rs = bn_bytes(ECDSA_SIG_get0_r(es), half) + bn_bytes(ECDSA_SIG_get0_s(es), half);
    ECDSA_SIG_free(es);
    return rs;
}

std::string hmac(std::string_view secret, JwtAlg alg, std::string_view input)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(md_for(alg), secret.data(), int(secret.size()), reinterpret_cast<const unsigned char *>(input.data()),
         input.size(), mac, &len);
    return std::string(reinterpret_cast<char *>(mac), len);
}

std::string header_for(JwtAlg alg, const char *kid = nullptr)
{
    std::string h = "{\"alg\":\"" + std::string(channels::alg_name(alg)) + "\"";
    if (kid != nullptr) h += ",\"kid\":\"" + std::string(kid) + "\"";
    return h + "}";
}

const std::string kClaims = R"({"sub":"42","channels":{"subscribe":["*"]}})";
const std::string kSecret(64, 's');

std::string signed_token(EVP_PKEY *pkey, JwtAlg alg, const char *kid = nullptr, std::string claims = kClaims)
{
    std::string input = b64(header_for(alg, kid)) + "." + b64(claims);
    return input + "." + b64(sign(pkey, alg, input));
}

std::string hmac_token(std::string_view secret, JwtAlg alg, const char *kid = nullptr)
{
    std::string input = b64(header_for(alg, kid)) + "." + b64(kClaims);
    return input + "." + b64(hmac(secret, alg, input));
}

TokenError verify(const JwtKeySet &set, const std::string &token)
{
    channels::Jws jws;
    TokenError err = channels::parse_jws(token, jws);
    return err != TokenError::none ? err : set.verify(jws);
}

void load(JwtKeySet &set, const std::string &contents)
{
    std::string error;
    ASSERT_TRUE(set.add_file(contents, error)) << error << "\n" << contents;
}

std::string load_error(const std::string &contents)
{
    JwtKeySet set;
    std::string error;
    EXPECT_FALSE(set.add_file(contents, error)) << contents;
    EXPECT_EQ(ERR_peek_error(), 0u);   // nothing left in OpenSSL's error queue
    return error;
}

std::string bn_param(EVP_PKEY *pkey, const char *name)
{
    BIGNUM *bn = nullptr;
    EXPECT_EQ(EVP_PKEY_get_bn_param(pkey, name, &bn), 1);
    std::string out = bn_bytes(bn, BN_num_bytes(bn));
    BN_free(bn);
    return out;
}

std::string jwk_of(EVP_PKEY *pkey, const std::string &extra = "")
{
    std::string more = extra.empty() ? "" : "," + extra;
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        return R"({"kty":"RSA","n":")" + b64(bn_param(pkey, OSSL_PKEY_PARAM_RSA_N)) + R"(","e":")" +
               b64(bn_param(pkey, OSSL_PKEY_PARAM_RSA_E)) + "\"" + more + "}";
    }
    if (EVP_PKEY_is_a(pkey, "EC")) {
        int size = EVP_PKEY_get_bits(pkey) == 256 ? 32 : 48;
        BIGNUM *x = nullptr, *y = nullptr;
        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x);
        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y);
        std::string jwk = R"({"kty":"EC","crv":")" + std::string(size == 32 ? "P-256" : "P-384") +
                          R"(","x":")" + b64(bn_bytes(x, size)) + R"(","y":")" + b64(bn_bytes(y, size)) + "\"" +
                          more + "}";
        BN_free(x);
        BN_free(y);
        return jwk;
    }
    unsigned char raw[32];
    size_t len = sizeof raw;
    EXPECT_EQ(EVP_PKEY_get_raw_public_key(pkey, raw, &len), 1);
    return R"({"kty":"OKP","crv":"Ed25519","x":")" + b64(std::string(reinterpret_cast<char *>(raw), len)) + "\"" +
           more + "}";
}

std::string oct_jwk(std::string_view secret, const std::string &extra = "")
{
    return R"({"kty":"oct","k":")" + b64(secret) + "\"" + (extra.empty() ? "" : "," + extra) + "}";
}

std::string jwks(std::initializer_list<std::string> keys)
{
    std::string out = "{\"keys\":[";
    bool first = true;
    for (const std::string &k : keys) {
        out += first ? "" : ",";
        out += k;
        first = false;
    }
    return out + "]}";
}

struct Case {
    JwtAlg alg;
    const char *key;
};
const Case kAsymmetric[] = {{JwtAlg::RS256, "rsa"}, {JwtAlg::RS384, "rsa"}, {JwtAlg::RS512, "rsa"},
                            {JwtAlg::PS256, "rsa"}, {JwtAlg::PS384, "rsa"}, {JwtAlg::PS512, "rsa"},
                            {JwtAlg::ES256, "p256"}, {JwtAlg::ES384, "p384"}, {JwtAlg::EdDSA, "ed25519"}};

}  // namespace

TEST(JwtKeys, EveryAlgorithmVerifiesWithPemKeys)
{
    JwtKeySet set;
    for (const char *k : {"rsa", "p256", "p384", "ed25519"}) load(set, public_pem(key(k)));
    for (const Case &c : kAsymmetric) {
        std::string t = signed_token(key(c.key), c.alg);
        EXPECT_EQ(verify(set, t), TokenError::none) << channels::alg_name(c.alg);
        std::string tampered = t;
        tampered[tampered.find('.') + 2] ^= 1;   // a payload byte
        EXPECT_EQ(verify(set, tampered), TokenError::bad_signature) << channels::alg_name(c.alg);
        std::string bad_sig = t;
        bad_sig[bad_sig.size() - 5] = bad_sig[bad_sig.size() - 5] == 'A' ? 'B' : 'A';
        EXPECT_EQ(verify(set, bad_sig), TokenError::bad_signature) << channels::alg_name(c.alg);
    }
    EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(JwtKeys, EveryAlgorithmVerifiesWithJwks)
{
    JwtKeySet set;
    load(set, jwks({jwk_of(key("rsa")), jwk_of(key("p256")), jwk_of(key("p384")), jwk_of(key("ed25519")),
                    oct_jwk(kSecret)}));
    EXPECT_EQ(set.keys().size(), 5u);
    for (const Case &c : kAsymmetric) {
        EXPECT_EQ(verify(set, signed_token(key(c.key), c.alg)), TokenError::none) << channels::alg_name(c.alg);
    }
    for (JwtAlg alg : {JwtAlg::HS256, JwtAlg::HS384, JwtAlg::HS512}) {
        EXPECT_EQ(verify(set, hmac_token(kSecret, alg)), TokenError::none) << channels::alg_name(alg);
        EXPECT_EQ(verify(set, hmac_token(std::string(64, 't'), alg)), TokenError::bad_signature);
    }
}

TEST(JwtKeys, ASingleJwkFileWorksToo)
{
    JwtKeySet set;
    load(set, jwk_of(key("ed25519")));
    EXPECT_EQ(verify(set, signed_token(key("ed25519"), JwtAlg::EdDSA)), TokenError::none);
}

TEST(JwtKeys, KeyTypeMustMatchTheAlgorithm)
{
    JwtKeySet rsa_only;
    std::string pem = public_pem(key("rsa"));
    load(rsa_only, pem);
    // The classic confusion: HS256 "signed" with the RSA public key's PEM as the secret.
    EXPECT_EQ(verify(rsa_only, hmac_token(pem, JwtAlg::HS256)), TokenError::no_key);
    EXPECT_EQ(verify(rsa_only, signed_token(key("p256"), JwtAlg::ES256)), TokenError::no_key);
    JwtKeySet p384;
    load(p384, public_pem(key("p384")));
    EXPECT_EQ(verify(p384, signed_token(key("p256"), JwtAlg::ES256)), TokenError::no_key);
    // An ES384 signature under an ES256 header: wrong length for P-256's r||s.
    std::string input = b64(header_for(JwtAlg::ES256)) + "." + b64(kClaims);
    JwtKeySet p256;
    load(p256, public_pem(key("p256")));
    EXPECT_EQ(verify(p256, input + "." + b64(sign(key("p384"), JwtAlg::ES384, input))), TokenError::bad_signature);
    // A JWK that names its alg verifies only that one.
    JwtKeySet pinned;
    load(pinned, jwks({jwk_of(key("rsa"), R"("alg":"RS256")")}));
    EXPECT_EQ(verify(pinned, signed_token(key("rsa"), JwtAlg::RS256)), TokenError::none);
    EXPECT_EQ(verify(pinned, signed_token(key("rsa"), JwtAlg::PS256)), TokenError::no_key);
    // An HS512 token needs a 64-byte secret at least.
    JwtKeySet short_oct;
    load(short_oct, jwks({oct_jwk(std::string(32, 'k'))}));
    EXPECT_EQ(verify(short_oct, hmac_token(std::string(32, 'k'), JwtAlg::HS256)), TokenError::none);
    EXPECT_EQ(verify(short_oct, hmac_token(std::string(32, 'k'), JwtAlg::HS512)), TokenError::no_key);
}

TEST(JwtKeys, KidSelectsTheKeyAndSeveralKeysRotate)
{
    JwtKeySet set;
    load(set, jwks({jwk_of(key("rsa"), R"("kid":"old")"), jwk_of(key("rsa2"), R"("kid":"new")"),
                    jwk_of(key("p256"), R"("kid":"ec")")}));
    EXPECT_EQ(verify(set, signed_token(key("rsa2"), JwtAlg::RS256, "new")), TokenError::none);
    EXPECT_EQ(verify(set, signed_token(key("rsa"), JwtAlg::RS256, "old")), TokenError::none);
    // Signed by "new" but naming "old": only "old" is tried.
    EXPECT_EQ(verify(set, signed_token(key("rsa2"), JwtAlg::RS256, "old")), TokenError::bad_signature);
    EXPECT_EQ(verify(set, signed_token(key("rsa2"), JwtAlg::RS256, "gone")), TokenError::unknown_kid);
    EXPECT_EQ(verify(set, signed_token(key("p256"), JwtAlg::ES256, "new")), TokenError::key_mismatch);
    // No kid: any key of the right type.
    EXPECT_EQ(verify(set, signed_token(key("rsa2"), JwtAlg::RS256)), TokenError::none);
    EXPECT_EQ(verify(set, signed_token(key("rsa"), JwtAlg::PS384)), TokenError::none);
    // PEM keys have no kid: a token naming one is not verified by them.
    JwtKeySet pem;
    load(pem, public_pem(key("rsa")));
    load(pem, public_pem(key("rsa2")));
    EXPECT_EQ(verify(pem, signed_token(key("rsa2"), JwtAlg::RS256)), TokenError::none);
    EXPECT_EQ(verify(pem, signed_token(key("rsa2"), JwtAlg::RS256, "k")), TokenError::unknown_kid);
}

TEST(JwtKeys, JwksSkipsKeysForOtherUses)
{
    JwtKeySet set;
    load(set, jwks({jwk_of(key("rsa2"), R"("use":"enc")"), jwk_of(key("rsa2"), R"("alg":"RSA-OAEP")"),
                    jwk_of(key("rsa2"), R"("key_ops":["encrypt"])"), R"({"kty":"EC","crv":"P-521","x":"AA","y":"AA"})", R"({"kty":"OKP","crv":"X25519","x":"AA"})",
                    R"({"kty":"future"})", jwk_of(key("rsa"), R"("use":"sig","key_ops":["verify"])")}));
    EXPECT_EQ(set.keys().size(), 1u);
    EXPECT_EQ(verify(set, signed_token(key("rsa2"), JwtAlg::RS256)), TokenError::bad_signature);
    EXPECT_EQ(verify(set, signed_token(key("rsa"), JwtAlg::RS256)), TokenError::none);
}

TEST(JwtKeys, BadKeyFilesSayWhy)
{
    auto has = [](const std::string &error, const char *what) {
        return error.find(what) != std::string::npos;
    };
    EXPECT_PRED2(has, load_error(""), "no PEM public key");
    EXPECT_PRED2(has, load_error("hello"), "no PEM public key");
    EXPECT_PRED2(has, load_error(private_pem(key("p256"))), "private key");
    EXPECT_PRED2(has, load_error(public_pem(key("rsa1024"))), "1024 bits");
    EXPECT_PRED2(has, load_error(public_pem(key("p521"))), "curve");
    EXPECT_PRED2(has, load_error("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), "does not decode");
    EXPECT_PRED2(has, load_error("-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"), "unsupported PEM block");
    EXPECT_PRED2(has, load_error("{\"keys\":[}"), "not a JSON object");
    EXPECT_PRED2(has, load_error("{\"nokeys\":1}"), "no \"keys\"");
    EXPECT_PRED2(has, load_error(jwks({})), "no signature-verification key");
    EXPECT_PRED2(has, load_error(jwks({oct_jwk("short")})), "shorter than 256 bits");
    EXPECT_PRED2(has, load_error(jwks({R"({"kty":"oct","k":"not base64!"})"})), "\"k\"");
    EXPECT_PRED2(has, load_error(jwks({jwk_of(key("p256"), R"("d":"AAAA")")})), "private key");
    EXPECT_PRED2(has, load_error(jwks({R"({"kty":"EC","crv":"P-256","x":")" + b64(std::string(32, '\1')) +
                                       R"(","y":")" + b64(std::string(32, '\2')) + "\"}"})),
                 "not on the curve");
    EXPECT_PRED2(has, load_error(jwks({R"({"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"})"})), "32 bytes");
    EXPECT_PRED2(has, load_error(jwks({jwk_of(key("p256"), R"("alg":"RS256")")})), "does not fit");
    EXPECT_PRED2(has, load_error(jwks({oct_jwk(kSecret), R"({"kid":"x"})"})), "JWK 2");
    EXPECT_PRED2(has, load_error(jwks({R"({"kty":"RSA","n":"AQAB","e":"AQAB","kid":"tiny"})"})), "kid \"tiny\"");
    // A failed file leaves the set as it was.
    JwtKeySet set;
    load(set, public_pem(key("rsa")));
    std::string error;
    EXPECT_FALSE(set.add_file(jwks({oct_jwk(kSecret), oct_jwk("x")}), error));
    EXPECT_EQ(set.keys().size(), 1u);
}

TEST(JwtKeys, SeveralPemBlocksInOneFile)
{
    JwtKeySet set;
    load(set, public_pem(key("rsa")) + public_pem(key("ed25519")));
    EXPECT_EQ(set.keys().size(), 2u);
    EXPECT_EQ(verify(set, signed_token(key("ed25519"), JwtAlg::EdDSA)), TokenError::none);
}

TEST(JwtKeys, OurDerIsWhatOpenSslReads)
{
    std::string rs(64, '\0');
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < rs.size(); i++) rs[i] = char((i * 37 + round * 11) % 256 * (i % 7 != 0));
        std::string der;
        ASSERT_TRUE(channels::ecdsa_jws_to_der(rs, 32, der));
        const auto *p = reinterpret_cast<const unsigned char *>(der.data());
        ECDSA_SIG *sig = d2i_ECDSA_SIG(nullptr, &p, long(der.size()));
        ASSERT_NE(sig, nullptr);
        EXPECT_EQ(bn_bytes(ECDSA_SIG_get0_r(sig), 32) + bn_bytes(ECDSA_SIG_get0_s(sig), 32), rs);
        ECDSA_SIG_free(sig);
    }
}

TEST(JwtKeys, Sha256)
{
    unsigned char out[32];
    ASSERT_TRUE(channels::sha256("abc", out));
    const unsigned char want[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                  0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                  0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    EXPECT_EQ(std::string(reinterpret_cast<char *>(out), 32), std::string(reinterpret_cast<const char *>(want), 32));
}

// An RSA key with public exponent 1 makes every "signature" its own message: anyone could
// sign. Such a key (a JWK's "e":"AQ", or a PEM) is refused when the file is read.
TEST(JwtKeys, RsaExponentOneIsRefused)
{
    std::string n = bn_param(key("rsa"), OSSL_PKEY_PARAM_RSA_N);
    std::string jwk = R"({"kty":"RSA","n":")" + b64(n) + R"(","e":"AQ","kid":"e1"})";
    JwtKeySet set;
    std::string error;
    bool loaded = set.add_file(jwks({jwk}), error);
    EXPECT_FALSE(loaded) << "an RSA key with e = 1 was accepted";
    EXPECT_NE(error.find("exponent"), std::string::npos) << error;
    ERR_clear_error();
    if (!loaded) return;
    // What the key lets anyone do: the RS256 "signature" is the PKCS#1 v1.5 encoding itself.
    std::string input = b64(R"({"alg":"RS256","kid":"e1"})") + "." + b64(R"({"channels":{"subscribe":["*"]}})");
    unsigned char digest[32];
    SHA256(reinterpret_cast<const unsigned char *>(input.data()), input.size(), digest);
    static const unsigned char kPrefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                                            0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    std::string t(reinterpret_cast<const char *>(kPrefix), sizeof kPrefix);
    t.append(reinterpret_cast<const char *>(digest), sizeof digest);
    std::string em = std::string("\x00\x01", 2) + std::string(n.size() - t.size() - 3, '\xff') + '\0' + t;
    EXPECT_NE(verify(set, input + "." + b64(em)), TokenError::none) << "a forged token verified";
}

// An Ed25519 public key of small order (here the identity point) verifies the signature
// R = identity, S = 0 over any message: anyone could sign. Refused when the file is read.
TEST(JwtKeys, Ed25519SmallOrderKeyIsRefused)
{
    std::string identity(32, '\0');
    identity[0] = '\x01';
    std::string jwk = R"({"kty":"OKP","crv":"Ed25519","x":")" + b64(identity) + R"(","kid":"o1"})";
    JwtKeySet set;
    std::string error;
    bool loaded = set.add_file(jwks({jwk}), error);
    EXPECT_FALSE(loaded) << "an Ed25519 key of small order was accepted";
    ERR_clear_error();
    if (!loaded) return;
    std::string input = b64(R"({"alg":"EdDSA","kid":"o1"})") + "." + b64(R"({"channels":{"subscribe":["*"]}})");
    EXPECT_NE(verify(set, input + "." + b64(identity + std::string(32, '\0'))), TokenError::none)
        << "a forged token verified";
}

TEST(JwtKeys, Ed25519SmallOrderKeysInEveryEncodingAreRefused)
{
    auto bytes = [](const char *hex) {
        std::string out;
        for (size_t i = 0; hex[i] != '\0'; i += 2) out += char(std::stoi(std::string(hex + i, 2), nullptr, 16));
        return out;
    };
    // The order-8 point with its sign bit set, y = -1, and y = p + 1 (a non-canonical 1).
    for (const char *hex : {"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
                            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"}) {
        std::string jwk = R"({"kty":"OKP","crv":"Ed25519","x":")" + b64(bytes(hex)) + "\"}";
        JwtKeySet set;
        std::string error;
        EXPECT_FALSE(set.add_file(jwks({jwk}), error)) << hex;
        EXPECT_NE(error.find("small order"), std::string::npos) << hex << ": " << error;
        ERR_clear_error();
    }
}
