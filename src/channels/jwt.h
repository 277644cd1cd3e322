// JSON Web Tokens as channel grants (README "Authorization (JWT)"): compact JWS parsing, claims, grant
// patterns. Pure logic; signatures are checked by jwt_keys.h (OpenSSL).
#pragma once

#include "channels/sse_format.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace channels {

inline constexpr size_t kMaxTokenLen = 8192;   // longer: 401 invalid_token

enum class JwtAlg : uint8_t { HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512,
                              ES256, ES384, EdDSA };

// What kind of key an algorithm needs; a key of another kind never verifies it.
enum class KeyKind : uint8_t { oct, rsa, ec_p256, ec_p384, ed25519 };

std::optional<JwtAlg> alg_from_name(std::string_view name);   // "none" is not an algorithm here
std::string_view alg_name(JwtAlg alg);
KeyKind key_kind_for(JwtAlg alg);
std::string_view key_kind_name(KeyKind kind);
// Digest size of the algorithm's hash (HS/RS/PS/ES); 0 for EdDSA.
size_t alg_hash_bytes(JwtAlg alg);

// Why a token is refused; describe() gives the phrase for the answer and the log.
enum class TokenError : uint8_t {
    none,
    malformed,            // not three base64url parts separated by dots
    bad_base64,
    bad_header,           // the header is not a JSON object with a string "alg"
    alg_none,
    alg_unknown,
    crit_unsupported,     // "crit" names extensions (none is understood)
    bad_payload,          // the claims are not a JSON object
    bad_claim,            // exp/nbf not numbers, aud/iss/sub of the wrong type, bad grants
    unknown_kid,          // no configured key has the token's kid
    no_key,               // no configured key fits the algorithm
    key_mismatch,         // the key named by kid is of another type than alg needs
    bad_signature,
    expired,
    not_yet_valid,
    wrong_audience,       // configured audience missing from aud (or no aud)
    wrong_issuer,         // iss differs (or is missing)
};
std::string_view describe(TokenError err);

struct JwsHeader {
    JwtAlg      alg = JwtAlg::HS256;
    bool        has_kid = false;
    std::string kid;
};

// A compact JWS, split and with its header checked; the payload is parsed only after
// the signature verified (parse_claims).
struct Jws {
    std::string_view signing_input;   // "header.payload", what the signature covers
    std::string_view payload_b64;
    std::string      signature;       // decoded
    JwsHeader        header;
};
TokenError parse_jws(std::string_view token, Jws &out);

struct Claims {
    bool        has_exp = false, has_nbf = false;
    uint64_t    exp_ms = 0, nbf_ms = 0;   // NumericDate in ms (fractions kept to the ms)
    int64_t     exp_s = 0;                // exp in whole seconds, as sent back in token-expired
    bool        has_aud = false, has_iss = false, has_sub = false;
    std::vector<std::string> aud;
    std::string iss, sub;
    std::vector<std::string> subscribe, publish;   // grant patterns

    // Rough bytes held (for the cache's bound).
    size_t footprint() const;
};
inline constexpr size_t kMaxPatterns = 256;   // per list; more: bad_claim

TokenError parse_claims(std::string_view payload_b64, Claims &out);

// Checked on every request (also for cached tokens): exp and nbf against now, without
// leeway; aud and iss when configured (empty: not checked).
struct ClaimPolicy {
    std::string_view audience, issuer;
};
TokenError check_claims(const Claims &claims, const ClaimPolicy &policy, uint64_t now_ms);

// A grant pattern: 1-255 bytes of channel id characters and '*', where '*' matches any run
// of id characters, possibly empty.
bool is_valid_pattern(std::string_view pattern);
bool pattern_matches(std::string_view pattern, std::string_view id);
bool is_granted(const std::vector<std::string> &patterns, std::string_view id);

// The SSE event that ends a stream when its token expires: "event: token-expired" with
// data {"exp":N}, N the token's exp in whole seconds; no id (the client's cursor stays).
template <typename Sink>
void put_token_expired_event(Sink &sink, uint64_t exp_ms)
{
    char buf[32];
    BufferSink json(buf);
    json.put(std::string_view("{\"exp\":"));
    put_uint(json, exp_ms / 1000);
    json.put('}');
    put_sse_event(sink, {}, "token-expired", std::string_view(buf, size_t(json.end() - buf)));
}
std::string token_expired_event(uint64_t exp_ms);

// ECDSA: JWS carries r||s as two fixed-size big-endian integers (RFC 7518 §3.4); OpenSSL
// takes a DER ECDSA-Sig-Value. False when rs is not exactly 2 * half bytes.
bool ecdsa_jws_to_der(std::string_view rs, size_t half, std::string &der);

}  // namespace channels
