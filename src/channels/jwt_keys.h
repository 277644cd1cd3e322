// Keys that may sign channel tokens, and signature verification with OpenSSL 3 (EVP).
// nginx-free: the module reads the files, this parses and verifies (unit-tested).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "channels/jwt.h"

typedef struct evp_pkey_st EVP_PKEY;   // as in <openssl/types.h>

namespace channels {

struct JwtKey {
    KeyKind                kind = KeyKind::oct;
    bool                   has_kid = false;
    std::string            kid;
    std::optional<JwtAlg>  alg;        // a JWK's "alg": the one algorithm it may verify
    std::string            secret;     // oct keys
    EVP_PKEY              *pkey = nullptr;   // the others
};

// The keys of one configuration level (every channel_jwt_key of it), loaded at start and
// reload. Several keys at once are how keys rotate.
class JwtKeySet {
public:
    JwtKeySet() = default;
    ~JwtKeySet();
    JwtKeySet(const JwtKeySet &) = delete;
    JwtKeySet &operator=(const JwtKeySet &) = delete;

    // Adds the keys of one file: PEM (public keys, "RSA PUBLIC KEY" blocks or certificates;
    // RSA of at least 2048 bits, EC P-256/P-384, Ed25519) or JSON (a JWK Set, or one JWK;
    // kty oct/RSA/EC/OKP). JWKS keys for other uses ("use":"enc", unknown kty, curve or
    // alg) are skipped; a file that yields no key is an error. On error returns false and
    // a one-line reason; the set is then unchanged.
    bool add_file(std::string_view contents, std::string &error);

    // Verifies the JWS signature with the configured keys (README "Authorization (JWT)"): a token naming a kid
    // only by the JWK with that kid, else by any key of the kind its alg needs.
    // TokenError::none when one verifies.
    TokenError verify(const Jws &jws) const;

    const std::vector<JwtKey> &keys() const { return keys_; }

private:
    std::vector<JwtKey> keys_;
};

// SHA-256 of the bytes into out[32] (the verified-token cache's key). False on failure.
bool sha256(std::string_view bytes, unsigned char *out);

}  // namespace channels
