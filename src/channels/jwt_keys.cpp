// Key loading (PEM, JWKS) and JWS signature verification with OpenSSL 3's EVP interface.
// Every OpenSSL failure clears the thread's error queue: nginx reads that queue when it
// reports TLS errors, and a leftover entry of ours would be blamed on a TLS connection.
#include "channels/jwt_keys.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <memory>

#include "channels/base64url.h"
#include "channels/json.h"
#include "channels/json_parse.h"

namespace channels {

namespace {

template <typename T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *p) const { Free(p); }
};
template <typename T, void (*Free)(T *)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;

void free_bn(BIGNUM *b) { BN_free(b); }
void free_bio(BIO *b) { BIO_free(b); }
void free_openssl(char *p) { OPENSSL_free(p); }
void free_data(unsigned char *p) { OPENSSL_free(p); }

using PkeyPtr = Owned<EVP_PKEY, EVP_PKEY_free>;
using PkeyCtxPtr = Owned<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using MdCtxPtr = Owned<EVP_MD_CTX, EVP_MD_CTX_free>;
using BnPtr = Owned<BIGNUM, free_bn>;
using BioPtr = Owned<BIO, free_bio>;
using ParamBldPtr = Owned<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = Owned<OSSL_PARAM, OSSL_PARAM_free>;
using X509Ptr = Owned<X509, X509_free>;
using OsslString = Owned<char, free_openssl>;
using OsslData = Owned<unsigned char, free_data>;

constexpr int kMinRsaBits = 2048;
constexpr size_t kMinOctBytes = 32;   // RFC 7518 §3.2: at least the hash size (HS256)
constexpr JsonLimits kJwksLimits{8, 65536};

const EVP_MD *digest_for(JwtAlg alg)
{
    switch (alg_hash_bytes(alg)) {
    case 32: return EVP_sha256();
    case 48: return EVP_sha384();
    case 64: return EVP_sha512();
    default: return nullptr;
    }
}

// Keeps error text short: "reason" (and OpenSSL's own reason when it has one).
std::string with_openssl_reason(std::string what)
{
    unsigned long e = ERR_peek_last_error();
    if (e != 0) {
        const char *reason = ERR_reason_error_string(e);
        if (reason != nullptr) {
            what += " (";
            what += reason;
            what += ')';
        }
    }
    ERR_clear_error();
    return what;
}

// ---- classifying a public key ----

// Whether an Ed25519 public key is one of the 8 points of order dividing 8, in any of its
// encodings (canonical or not; the sign bit ignored). With such a key [k]A vanishes from
// the verification equation, so one signature (R = [S]B) fits every message. The y
// coordinates, little-endian: 0, 1, the two of the order-8 points, p - 1, p, p + 1.
bool ed25519_small_order(EVP_PKEY *pkey)
{
    static const char *const kSmallOrderY[] = {
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    };
    unsigned char raw[32];
    size_t len = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(pkey, raw, &len) != 1 || len != sizeof raw) {
        ERR_clear_error();
        return true;   // not a key we can check: not one we accept
    }
    raw[31] &= 0x7F;
    char hex[65];
    for (size_t i = 0; i < sizeof raw; i++) {
        hex[2 * i] = "0123456789abcdef"[raw[i] >> 4];
        hex[2 * i + 1] = "0123456789abcdef"[raw[i] & 15];
    }
    hex[64] = '\0';
    for (const char *y : kSmallOrderY) {
        if (std::string_view(hex) == y) return true;
    }
    return false;
}

bool classify(EVP_PKEY *pkey, KeyKind &kind, std::string &error)
{
    if (EVP_PKEY_is_a(pkey, "RSA") || EVP_PKEY_is_a(pkey, "RSA-PSS")) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < kMinRsaBits) {
            error = "RSA key of ";
            append_uint(error, uint64_t(bits > 0 ? bits : 0));
            error += " bits; at least 2048 are required";
            return false;
        }
        // With e = 1 every "signature" is its own message (anyone could sign); an even e
        // is no RSA key. OpenSSL checks neither when it verifies.
        BIGNUM *raw_e = nullptr;
        BnPtr e(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &raw_e) == 1 ? raw_e : nullptr);
        if (!e || !BN_is_odd(e.get()) || BN_is_one(e.get())) {
            error = with_openssl_reason("RSA key with a public exponent of 1, an even one or none");
            return false;
        }
        kind = KeyKind::rsa;
        return true;
    }
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64] = {};
        size_t len = 0;
        if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len)) {
            error = with_openssl_reason("EC key without a named curve");
            return false;
        }
        std::string_view name(group, len);
        if (name == "prime256v1" || name == "P-256") {
            kind = KeyKind::ec_p256;
        } else if (name == "secp384r1" || name == "P-384") {
            kind = KeyKind::ec_p384;
        } else {
            error = "EC curve ";
            error.append(name);
            error += " is not supported (P-256, P-384)";
            return false;
        }
        return true;
    }
    if (EVP_PKEY_is_a(pkey, "ED25519")) {
        if (ed25519_small_order(pkey)) {
            error = "Ed25519 key of small order (it would verify forged signatures)";
            return false;
        }
        kind = KeyKind::ed25519;
        return true;
    }
    const char *type = EVP_PKEY_get0_type_name(pkey);
    error = "unsupported key type ";
    error += type != nullptr ? type : "?";
    error += " (RSA, EC P-256/P-384, Ed25519)";
    return false;
}

// ---- PEM ----

bool pem_block_key(std::string_view name, const unsigned char *data, long len, PkeyPtr &out,
                   std::string &error)
{
    const unsigned char *p = data;
    if (name == "PUBLIC KEY") {
        out.reset(d2i_PUBKEY(nullptr, &p, len));
    } else if (name == "RSA PUBLIC KEY") {
        out.reset(d2i_PublicKey(EVP_PKEY_RSA, nullptr, &p, len));
    } else if (name == "CERTIFICATE" || name == "X509 CERTIFICATE") {
        X509Ptr cert(d2i_X509(nullptr, &p, len));
        if (cert) out.reset(X509_get_pubkey(cert.get()));
    } else if (name.find("PRIVATE KEY") != std::string_view::npos) {
        error = "holds a private key (";
        error.append(name);
        error += "); give the public key only";
        return false;
    } else {
        error = "unsupported PEM block \"";
        error.append(name);
        error += "\" (PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)";
        return false;
    }
    if (!out) {
        error = with_openssl_reason("PEM block \"" + std::string(name) + "\" does not decode");
        return false;
    }
    return true;
}

bool add_pem(std::string_view contents, std::vector<JwtKey> &keys, std::string &error)
{
    BioPtr bio(BIO_new_mem_buf(contents.data(), int(contents.size())));
    if (!bio) {
        error = with_openssl_reason("out of memory");
        return false;
    }
    size_t found = 0;
    for (;;) {
        char *raw_name = nullptr, *raw_header = nullptr;
        unsigned char *raw_data = nullptr;
        long len = 0;
        if (!PEM_read_bio(bio.get(), &raw_name, &raw_header, &raw_data, &len)) {
            unsigned long e = ERR_peek_last_error();
            bool at_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
            if (!at_end) {
                error = with_openssl_reason("bad PEM");
                return false;
            }
            ERR_clear_error();
            break;
        }
        OsslString name(raw_name), header(raw_header);
        OsslData data(raw_data);
        std::string_view block = name.get();
        if (block == "EC PARAMETERS") continue;   // `openssl ecparam` writes one before the key
        PkeyPtr pkey;
        JwtKey key;
        if (!pem_block_key(block, data.get(), len, pkey, error) || !classify(pkey.get(), key.kind, error)) {
            return false;
        }
        key.pkey = pkey.release();
        keys.push_back(std::move(key));
        found++;
    }
    if (found == 0) {
        error = "no PEM public key in it (and it is not a JWKS)";
        return false;
    }
    return true;
}

// ---- JWK ----

std::string key_label(size_t index, JsonDoc::Ref jwk)
{
    std::string label = "JWK ";
    append_uint(label, index + 1);
    JsonDoc::Ref kid = jwk.get("kid");
    if (kid.is(JsonType::string)) {
        label += " (kid ";
        append_json_string(label, kid.string());
        label += ')';
    }
    return label;
}

// A base64url member decoded; false (error set) when missing or malformed.
bool b64_member(JsonDoc::Ref jwk, const char *name, std::string &out, std::string &error)
{
    JsonDoc::Ref v = jwk.get(name);
    if (!v.is(JsonType::string) || !base64url_decode(v.string(), out) || out.empty()) {
        error = std::string("\"") + name + "\" missing or not base64url";
        return false;
    }
    return true;
}

PkeyPtr pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    ParamPtr params(OSSL_PARAM_BLD_to_param(bld));
    PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    EVP_PKEY *pkey = nullptr;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
        EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0) {
        return nullptr;
    }
    return PkeyPtr(pkey);
}

PkeyPtr rsa_from_jwk(JsonDoc::Ref jwk, std::string &error)
{
    std::string n, e;
    if (!b64_member(jwk, "n", n, error) || !b64_member(jwk, "e", e, error)) return nullptr;
    BnPtr bn_n(BN_bin2bn(reinterpret_cast<const unsigned char *>(n.data()), int(n.size()), nullptr));
    BnPtr bn_e(BN_bin2bn(reinterpret_cast<const unsigned char *>(e.data()), int(e.size()), nullptr));
    ParamBldPtr bld(OSSL_PARAM_BLD_new());
    if (!bn_n || !bn_e || !bld || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
        !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get())) {
        error = with_openssl_reason("RSA parameters rejected");
        return nullptr;
    }
    PkeyPtr pkey = pkey_from_params("RSA", bld.get());
    if (!pkey) error = with_openssl_reason("RSA key rejected");
    return pkey;
}

PkeyPtr ec_from_jwk(JsonDoc::Ref jwk, KeyKind kind, std::string &error)
{
    size_t size = kind == KeyKind::ec_p256 ? 32 : 48;
    std::string x, y;
    if (!b64_member(jwk, "x", x, error) || !b64_member(jwk, "y", y, error)) return nullptr;
    if (x.size() != size || y.size() != size) {
        error = "\"x\" and \"y\" must be ";
        append_uint(error, size);
        error += " bytes for this curve";
        return nullptr;
    }
    std::string point = "\x04" + x + y;
    const char *group = kind == KeyKind::ec_p256 ? "prime256v1" : "secp384r1";
    ParamBldPtr bld(OSSL_PARAM_BLD_new());
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size())) {
        error = with_openssl_reason("EC parameters rejected");
        return nullptr;
    }
    PkeyPtr pkey = pkey_from_params("EC", bld.get());
    PkeyCtxPtr check(pkey ? EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr) : nullptr);
    if (!check || EVP_PKEY_public_check(check.get()) != 1) {
        error = with_openssl_reason("EC point is not on the curve");
        return nullptr;
    }
    return pkey;
}

PkeyPtr ed25519_from_jwk(JsonDoc::Ref jwk, std::string &error)
{
    std::string x;
    if (!b64_member(jwk, "x", x, error)) return nullptr;
    if (x.size() != 32) {
        error = "\"x\" must be 32 bytes for Ed25519";
        return nullptr;
    }
    PkeyPtr pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr,
                                             reinterpret_cast<const unsigned char *>(x.data()), x.size()));
    if (!pkey) error = with_openssl_reason("Ed25519 key rejected");
    return pkey;
}

// Whether a JWK is meant for verifying signatures ("use", "key_ops").
bool for_signatures(JsonDoc::Ref jwk)
{
    JsonDoc::Ref use = jwk.get("use");
    if (!use.absent() && !(use.is(JsonType::string) && use.string() == "sig")) return false;
    JsonDoc::Ref ops = jwk.get("key_ops");
    if (ops.absent()) return true;
    bool verify = false;
    ops.each_item([&](JsonDoc::Ref op) {
        verify = verify || (op.is(JsonType::string) && op.string() == "verify");
    });
    return verify;
}

enum class JwkResult { added, skipped, failed };

JwkResult add_jwk(JsonDoc::Ref jwk, std::vector<JwtKey> &keys, std::string &error)
{
    JsonDoc::Ref kty = jwk.get("kty"), alg = jwk.get("alg"), kid = jwk.get("kid");
    if (!jwk.is(JsonType::object) || !kty.is(JsonType::string)) {
        error = "not a JWK (no \"kty\")";
        return JwkResult::failed;
    }
    if (!for_signatures(jwk)) return JwkResult::skipped;
    JwtKey key;
    if (!alg.absent()) {
        if (!alg.is(JsonType::string)) {
            error = "\"alg\" is not a string";
            return JwkResult::failed;
        }
        key.alg = alg_from_name(alg.string());
        if (!key.alg) return JwkResult::skipped;   // e.g. an encryption algorithm
    }
    if (!kid.absent()) {
        if (!kid.is(JsonType::string)) {
            error = "\"kid\" is not a string";
            return JwkResult::failed;
        }
        key.has_kid = true;
        key.kid.assign(kid.string());
    }
    JsonDoc::Ref curve = jwk.get("crv");
    std::string_view type = kty.string(), crv = curve.is(JsonType::string) ? curve.string() : "";
    if (type != "oct" && !jwk.get("d").absent()) {
        error = "holds a private key (\"d\"); give the public key only";
        return JwkResult::failed;
    }
    PkeyPtr pkey;
    if (type == "oct") {
        key.kind = KeyKind::oct;
        if (!b64_member(jwk, "k", key.secret, error)) return JwkResult::failed;
        if (key.secret.size() < kMinOctBytes) {
            error = "\"k\" is shorter than 256 bits";
            return JwkResult::failed;
        }
    } else if (type == "RSA") {
        key.kind = KeyKind::rsa;
        if (!(pkey = rsa_from_jwk(jwk, error))) return JwkResult::failed;
    } else if (type == "EC" && (crv == "P-256" || crv == "P-384")) {
        key.kind = crv == "P-256" ? KeyKind::ec_p256 : KeyKind::ec_p384;
        if (!(pkey = ec_from_jwk(jwk, key.kind, error))) return JwkResult::failed;
    } else if (type == "OKP" && crv == "Ed25519") {
        key.kind = KeyKind::ed25519;
        if (!(pkey = ed25519_from_jwk(jwk, error))) return JwkResult::failed;
    } else {
        return JwkResult::skipped;   // another key type or curve
    }
    if (pkey && !classify(pkey.get(), key.kind, error)) return JwkResult::failed;
    if (key.alg && key_kind_for(*key.alg) != key.kind) {
        error = "\"alg\" ";
        error.append(alg_name(*key.alg));
        error += " does not fit a ";
        error.append(key_kind_name(key.kind));
        error += " key";
        return JwkResult::failed;
    }
    key.pkey = pkey.release();
    keys.push_back(std::move(key));
    return JwkResult::added;
}

bool add_jwks(std::string_view contents, std::vector<JwtKey> &keys, std::string &error)
{
    JsonDoc doc;
    if (!doc.parse(contents, kJwksLimits) || !doc.root().is(JsonType::object)) {
        error = "JWKS is not a JSON object";
        if (!doc.error().empty()) error += ": " + doc.error();
        return false;
    }
    JsonDoc::Ref root = doc.root(), list = root.get("keys");
    size_t added = 0, index = 0;
    bool ok = true;
    auto one = [&](JsonDoc::Ref jwk) {
        if (!ok) return;
        std::string why;
        JwkResult r = add_jwk(jwk, keys, why);
        if (r == JwkResult::failed) {
            error = key_label(index, jwk) + ": " + why;
            ok = false;
        }
        added += r == JwkResult::added;
        index++;
    };
    if (list.is(JsonType::array)) {
        list.each_item(one);
    } else if (!root.get("kty").absent()) {
        one(root);   // a single JWK
    } else {
        error = "JWKS has no \"keys\" array";
        return false;
    }
    if (ok && added == 0) {
        error = "JWKS holds no signature-verification key this module supports";
        ok = false;
    }
    return ok;
}

bool is_json(std::string_view s)
{
    size_t i = s.find_first_not_of(" \t\r\n");
    return i != std::string_view::npos && s[i] == '{';
}

void free_keys(std::vector<JwtKey> &keys, size_t from)
{
    for (size_t i = from; i < keys.size(); i++) EVP_PKEY_free(keys[i].pkey);
    keys.resize(from);
}

// ---- verification ----

bool verify_hmac(const JwtKey &key, const Jws &jws)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    const auto *data = reinterpret_cast<const unsigned char *>(jws.signing_input.data());
    if (HMAC(digest_for(jws.header.alg), key.secret.data(), int(key.secret.size()), data,
             jws.signing_input.size(), mac, &len) == nullptr) {
        return false;
    }
    return len == jws.signature.size() && CRYPTO_memcmp(mac, jws.signature.data(), len) == 0;
}

bool verify_pkey(const JwtKey &key, const Jws &jws)
{
    JwtAlg alg = jws.header.alg;
    std::string der;
    std::string_view sig = jws.signature;
    if (key.kind == KeyKind::ec_p256 || key.kind == KeyKind::ec_p384) {
        if (!ecdsa_jws_to_der(sig, alg_hash_bytes(alg), der)) return false;
        sig = der;
    }
    MdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX *pctx = nullptr;
    const EVP_MD *md = alg == JwtAlg::EdDSA ? nullptr : digest_for(alg);
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), &pctx, md, nullptr, key.pkey) != 1) return false;
    if (key.kind == KeyKind::rsa) {
        bool pss = alg == JwtAlg::PS256 || alg == JwtAlg::PS384 || alg == JwtAlg::PS512;
        int padding = pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING;
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, padding) <= 0) return false;
        if (pss && (EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0 ||
                    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)) {
            return false;
        }
    }
    return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char *>(sig.data()), sig.size(),
                            reinterpret_cast<const unsigned char *>(jws.signing_input.data()),
                            jws.signing_input.size()) == 1;
}

bool verify_one(const JwtKey &key, const Jws &jws)
{
    bool ok = key.kind == KeyKind::oct ? verify_hmac(key, jws) : verify_pkey(key, jws);
    ERR_clear_error();
    return ok;
}

}  // namespace

JwtKeySet::~JwtKeySet() { free_keys(keys_, 0); }

bool JwtKeySet::add_file(std::string_view contents, std::string &error)
{
    size_t before = keys_.size();
    bool ok = is_json(contents) ? add_jwks(contents, keys_, error) : add_pem(contents, keys_, error);
    if (!ok) free_keys(keys_, before);
    ERR_clear_error();
    return ok;
}

TokenError JwtKeySet::verify(const Jws &jws) const
{
    JwtAlg alg = jws.header.alg;
    KeyKind need = key_kind_for(alg);
    bool kid_seen = false, tried = false;
    for (const JwtKey &key : keys_) {
        if (jws.header.has_kid) {
            if (!key.has_kid || key.kid != jws.header.kid) continue;
            kid_seen = true;
        }
        if (key.kind != need || (key.alg && *key.alg != alg)) continue;
        if (key.kind == KeyKind::oct && key.secret.size() < alg_hash_bytes(alg)) continue;
        tried = true;
        if (verify_one(key, jws)) return TokenError::none;
    }
    if (tried) return TokenError::bad_signature;
    if (jws.header.has_kid) return kid_seen ? TokenError::key_mismatch : TokenError::unknown_kid;
    return TokenError::no_key;
}

bool sha256(std::string_view bytes, unsigned char *out)
{
    // Fetched and allocated once per process (this runs on every request with a token):
    // an implicit fetch, or a context allocated per call, costs about as much as the hash.
    static EVP_MD *md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    static EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = md != nullptr && ctx != nullptr && EVP_DigestInit_ex2(ctx, md, nullptr) == 1 &&
              EVP_DigestUpdate(ctx, bytes.data(), bytes.size()) == 1 &&
              EVP_DigestFinal_ex(ctx, out, nullptr) == 1;
    if (!ok) ERR_clear_error();
    return ok;
}

}  // namespace channels
