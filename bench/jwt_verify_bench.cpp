// jwt_verify_bench: what one token costs the module, per algorithm, outside nginx
// (bench/auth-bench.py builds and runs it). Keys are made and tokens signed here with
// OpenSSL; the measured code is src/channels (parse_jws, JwtKeySet::verify,
// parse_claims) for a first verification, and the cache path (SHA-256, lookup, claim and
// grant checks) for a token seen before. Prints one JSON line per algorithm:
//   {"alg":"RS256","first_us":..,"cached_us":..}
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "channels/base64url.h"
#include "channels/jwt.h"
#include "channels/jwt_cache.h"
#include "channels/jwt_keys.h"

using channels::JwtAlg;

namespace {

std::string b64(std::string_view s) {
    std::string out;
    channels::append_base64url(out, s);
    return out;
}

std::string pem_of(EVP_PKEY *k) {
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, k);
    char *data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    std::string out(data, size_t(len));
    BIO_free(bio);
    return out;
}

const EVP_MD *md_for(JwtAlg alg) {
    size_t n = channels::alg_hash_bytes(alg);
    return n == 32 ? EVP_sha256() : n == 48 ? EVP_sha384() : n == 64 ? EVP_sha512() : nullptr;
}

std::string sign(EVP_PKEY *k, JwtAlg alg, const std::string &input, const std::string &secret) {
    if (channels::key_kind_for(alg) == channels::KeyKind::oct) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        HMAC(md_for(alg), secret.data(), int(secret.size()), reinterpret_cast<const unsigned char *>(input.data()),
             input.size(), mac, &len);
        return std::string(reinterpret_cast<char *>(mac), len);
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = nullptr;
    EVP_DigestSignInit(ctx, &pctx, alg == JwtAlg::EdDSA ? nullptr : md_for(alg), nullptr, k);
    if (alg >= JwtAlg::PS256 && alg <= JwtAlg::PS512) {
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
    }
    size_t len = 0;
    const auto *data = reinterpret_cast<const unsigned char *>(input.data());
    EVP_DigestSign(ctx, nullptr, &len, data, input.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char *>(sig.data()), &len, data, input.size());
    sig.resize(len);
    EVP_MD_CTX_free(ctx);
    if (alg != JwtAlg::ES256 && alg != JwtAlg::ES384) return sig;
    const auto *p = reinterpret_cast<const unsigned char *>(sig.data());
    ECDSA_SIG *es = d2i_ECDSA_SIG(nullptr, &p, long(sig.size()));
    int half = int(channels::alg_hash_bytes(alg));
    std::string rs(size_t(2 * half), '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char *>(rs.data()), half);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char *>(rs.data()) + half, half);
    ECDSA_SIG_free(es);
    return rs;
}

template <typename Fn>
double per_op_us(int n, Fn &&fn) {
    double best = 1e30;
    for (int round = 0; round < 5; round++) {   // the best of 5: the machine is shared
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n; i++) fn(i);
        double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / n;
        best = std::min(best, us);
    }
    return best;
}

}  // namespace

int main() {
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(2048));
    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    std::string secret(64, 'k');
    channels::JwtKeySet keys;
    std::string error;
    for (EVP_PKEY *k : {rsa, p256, p384, ed}) {
        if (!keys.add_file(pem_of(k), error)) {
            std::fprintf(stderr, "key: %s\n", error.c_str());
            return 1;
        }
    }
    if (!keys.add_file("{\"keys\":[{\"kty\":\"oct\",\"k\":\"" + b64(secret) + "\"}]}", error)) return 1;
    const std::string claims = R"({"sub":"user-42","exp":4102444800,"iss":"https://app.example.com",)"
                               R"("aud":"channels","channels":{"subscribe":["user.42.*","news"],)"
                               R"("publish":["user.42.outbox"]}})";
    struct Case { JwtAlg alg; EVP_PKEY *key; int n; };
    const Case cases[] = {{JwtAlg::HS256, nullptr, 50000}, {JwtAlg::HS384, nullptr, 50000},
                          {JwtAlg::HS512, nullptr, 50000}, {JwtAlg::RS256, rsa, 5000},
                          {JwtAlg::RS384, rsa, 5000},      {JwtAlg::RS512, rsa, 5000},
                          {JwtAlg::PS256, rsa, 5000},      {JwtAlg::PS384, rsa, 5000},
                          {JwtAlg::PS512, rsa, 5000},      {JwtAlg::ES256, p256, 2000},
                          {JwtAlg::ES384, p384, 1000},     {JwtAlg::EdDSA, ed, 3000}};
    for (const Case &c : cases) {
        std::string input = b64("{\"alg\":\"" + std::string(channels::alg_name(c.alg)) + "\",\"typ\":\"JWT\"}") +
                            "." + b64(claims);
        std::string token = input + "." + b64(sign(c.key, c.alg, input, secret));
        bool ok = true;
        double first = per_op_us(c.n, [&](int) {
            channels::Jws jws;
            channels::Claims cl;
            ok = ok && channels::parse_jws(token, jws) == channels::TokenError::none &&
                 keys.verify(jws) == channels::TokenError::none &&
                 channels::parse_claims(jws.payload_b64, cl) == channels::TokenError::none;
        });
        // The cache path: what every later request with the token costs.
        channels::TokenCache cache(4096, 4 << 20);
        channels::TokenCache::Digest digest;
        channels::sha256(token, digest.data());
        channels::Jws jws;
        channels::Claims cl;
        channels::parse_jws(token, jws);
        channels::parse_claims(jws.payload_b64, cl);
        cache.insert(digest, 1, std::move(cl), 0);
        double cached = per_op_us(200000, [&](int) {
            channels::TokenCache::Digest d;
            channels::sha256(token, d.data());
            const channels::Claims *hit = cache.find(d, 1, 1700000000000);
            ok = ok && hit != nullptr &&
                 channels::check_claims(*hit, {"channels", "https://app.example.com"}, 1700000000000) ==
                     channels::TokenError::none &&
                 channels::is_granted(hit->subscribe, "user.42.inbox");
        });
        if (!ok) {
            std::fprintf(stderr, "%s: verification failed\n", std::string(channels::alg_name(c.alg)).c_str());
            return 1;
        }
        std::printf("{\"alg\":\"%s\",\"token_bytes\":%zu,\"first_us\":%.2f,\"cached_us\":%.3f}\n",
                    std::string(channels::alg_name(c.alg)).c_str(), token.size(), first, cached);
    }
    for (EVP_PKEY *k : {rsa, p256, p384, ed}) EVP_PKEY_free(k);
    return 0;
}
