// Compact JWS parsing, JWT claims and channel grant patterns (README "Authorization (JWT)", RFC 7515/7519).
#include "channels/jwt.h"

#include <cmath>

#include "channels/base64url.h"
#include "channels/channel_list.h"
#include "channels/json.h"
#include "channels/json_parse.h"
#include "channels/sse_format.h"

namespace channels {

namespace {

struct AlgInfo {
    std::string_view name;
    JwtAlg alg;
    KeyKind kind;
    size_t hash_bytes;
};

constexpr AlgInfo kAlgs[] = {
    {"HS256", JwtAlg::HS256, KeyKind::oct, 32},     {"HS384", JwtAlg::HS384, KeyKind::oct, 48},
    {"HS512", JwtAlg::HS512, KeyKind::oct, 64},     {"RS256", JwtAlg::RS256, KeyKind::rsa, 32},
    {"RS384", JwtAlg::RS384, KeyKind::rsa, 48},     {"RS512", JwtAlg::RS512, KeyKind::rsa, 64},
    {"PS256", JwtAlg::PS256, KeyKind::rsa, 32},     {"PS384", JwtAlg::PS384, KeyKind::rsa, 48},
    {"PS512", JwtAlg::PS512, KeyKind::rsa, 64},     {"ES256", JwtAlg::ES256, KeyKind::ec_p256, 32},
    {"ES384", JwtAlg::ES384, KeyKind::ec_p384, 48}, {"EdDSA", JwtAlg::EdDSA, KeyKind::ed25519, 0},
};

const AlgInfo &info(JwtAlg alg) { return kAlgs[static_cast<size_t>(alg)]; }

// The header may carry certificate chains (x5c) that are ignored here; the claims hold
// up to 2 x kMaxPatterns grants.
constexpr JsonLimits kHeaderLimits{8, 512};
constexpr JsonLimits kClaimLimits{16, 4096};

// Past this (about year 2286), a NumericDate is taken as "never": keeps ms in range.
constexpr double kMaxSeconds = 9999999999.0;

bool numeric_date(JsonDoc::Ref v, uint64_t &ms, int64_t *secs)
{
    if (!v.is(JsonType::number)) return false;
    double s = v.number();
    if (!std::isfinite(s)) return false;
    if (s < 0) s = 0;
    if (s > kMaxSeconds) s = kMaxSeconds;
    if (v.integer() && v.int_value() >= 0 && double(v.int_value()) <= kMaxSeconds) {
        ms = uint64_t(v.int_value()) * 1000;
    } else {
        ms = uint64_t(std::floor(s * 1000));
    }
    if (secs != nullptr) *secs = int64_t(std::floor(s));
    return true;
}

bool patterns(JsonDoc::Ref v, std::vector<std::string> &out)
{
    if (v.absent()) return true;
    if (!v.is(JsonType::array) || v.size() > kMaxPatterns) return false;
    bool ok = true;
    v.each_item([&](JsonDoc::Ref item) {
        if (!item.is(JsonType::string) || !is_valid_pattern(item.string())) {
            ok = false;
            return;
        }
        out.emplace_back(item.string());
    });
    return ok;
}

bool string_claim(JsonDoc::Ref v, bool &has, std::string &out)
{
    if (v.absent()) return true;
    if (!v.is(JsonType::string)) return false;
    has = true;
    out.assign(v.string());
    return true;
}

// sub becomes $channel_jwt_sub, which a configuration may put in a response header
// (add_header) or a log line: nginx writes variable values into headers as they are, so
// a control character (CR LF) there would split the response.
bool subject_claim(JsonDoc::Ref v, Claims &c)
{
    if (!string_claim(v, c.has_sub, c.sub)) return false;
    for (char ch : c.sub) {
        auto b = static_cast<unsigned char>(ch);
        if (b < 0x20 || b == 0x7F) return false;
    }
    return true;
}

bool audience_claim(JsonDoc::Ref v, Claims &c)
{
    if (v.absent()) return true;
    c.has_aud = true;
    if (v.is(JsonType::string)) {
        c.aud.emplace_back(v.string());
        return true;
    }
    if (!v.is(JsonType::array)) return false;
    bool ok = true;
    v.each_item([&](JsonDoc::Ref item) {
        if (!item.is(JsonType::string)) ok = false;
        else c.aud.emplace_back(item.string());
    });
    return ok;
}

void append_der_integer(std::string &der, std::string_view bytes)
{
    size_t skip = 0;
    while (skip + 1 < bytes.size() && bytes[skip] == 0) skip++;
    bytes.remove_prefix(skip);
    bool pad = !bytes.empty() && (static_cast<unsigned char>(bytes[0]) & 0x80);
    der += '\x02';
    der += char(bytes.size() + pad);
    if (pad) der += '\0';
    der.append(bytes);
}

}  // namespace

std::optional<JwtAlg> alg_from_name(std::string_view name)
{
    for (const AlgInfo &a : kAlgs) {
        if (a.name == name) return a.alg;
    }
    return std::nullopt;
}

std::string_view alg_name(JwtAlg alg) { return info(alg).name; }
KeyKind key_kind_for(JwtAlg alg) { return info(alg).kind; }
size_t alg_hash_bytes(JwtAlg alg) { return info(alg).hash_bytes; }

std::string_view key_kind_name(KeyKind kind)
{
    switch (kind) {
    case KeyKind::oct: return "oct";
    case KeyKind::rsa: return "RSA";
    case KeyKind::ec_p256: return "EC P-256";
    case KeyKind::ec_p384: return "EC P-384";
    case KeyKind::ed25519: return "Ed25519";
    }
    return "?";
}

std::string_view describe(TokenError err)
{
    switch (err) {
    case TokenError::none: return "valid";
    case TokenError::malformed: return "malformed token";
    case TokenError::bad_base64: return "malformed token: bad base64url";
    case TokenError::bad_header: return "malformed token: bad header";
    case TokenError::alg_none: return "unsigned token (alg none)";
    case TokenError::alg_unknown: return "unsupported alg";
    case TokenError::crit_unsupported: return "unsupported crit header";
    case TokenError::bad_payload: return "malformed token: claims are not a JSON object";
    case TokenError::bad_claim: return "malformed claim";
    case TokenError::unknown_kid: return "unknown kid";
    case TokenError::no_key: return "no key for the token's alg";
    case TokenError::key_mismatch: return "key type does not match alg";
    case TokenError::bad_signature: return "bad signature";
    case TokenError::expired: return "token expired";
    case TokenError::not_yet_valid: return "token not yet valid";
    case TokenError::wrong_audience: return "wrong audience";
    case TokenError::wrong_issuer: return "wrong issuer";
    }
    return "invalid token";
}

TokenError parse_jws(std::string_view token, Jws &out)
{
    size_t dot1 = token.find('.');
    if (dot1 == std::string_view::npos) return TokenError::malformed;
    size_t dot2 = token.find('.', dot1 + 1);
    if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
        return TokenError::malformed;
    }
    std::string_view header_b64 = token.substr(0, dot1);
    out.signing_input = token.substr(0, dot2);
    out.payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
    out.signature.clear();
    std::string header;
    if (header_b64.empty() || !base64url_decode(header_b64, header) ||
        !base64url_decode(token.substr(dot2 + 1), out.signature)) {
        return TokenError::bad_base64;
    }
    JsonDoc doc;
    if (!doc.parse(header, kHeaderLimits) || !doc.root().is(JsonType::object)) {
        return TokenError::bad_header;
    }
    JsonDoc::Ref alg = doc.root().get("alg");
    if (!alg.is(JsonType::string)) return TokenError::bad_header;
    if (alg.string() == "none") return TokenError::alg_none;
    std::optional<JwtAlg> known = alg_from_name(alg.string());
    if (!known) return TokenError::alg_unknown;
    out.header.alg = *known;
    if (!doc.root().get("crit").absent()) return TokenError::crit_unsupported;
    JsonDoc::Ref kid = doc.root().get("kid");
    out.header.has_kid = false;
    out.header.kid.clear();
    if (!string_claim(kid, out.header.has_kid, out.header.kid)) return TokenError::bad_header;
    return TokenError::none;
}

TokenError parse_claims(std::string_view payload_b64, Claims &out)
{
    out = Claims{};
    std::string payload;
    if (!base64url_decode(payload_b64, payload)) return TokenError::bad_base64;
    JsonDoc doc;
    if (!doc.parse(payload, kClaimLimits) || !doc.root().is(JsonType::object)) {
        return TokenError::bad_payload;
    }
    JsonDoc::Ref root = doc.root();
    JsonDoc::Ref exp = root.get("exp"), nbf = root.get("nbf"), channels = root.get("channels");
    if (!exp.absent() && !(out.has_exp = numeric_date(exp, out.exp_ms, &out.exp_s))) {
        return TokenError::bad_claim;
    }
    if (!nbf.absent() && !(out.has_nbf = numeric_date(nbf, out.nbf_ms, nullptr))) {
        return TokenError::bad_claim;
    }
    if (!string_claim(root.get("iss"), out.has_iss, out.iss) ||
        !subject_claim(root.get("sub"), out) || !audience_claim(root.get("aud"), out)) {
        return TokenError::bad_claim;
    }
    if (!channels.absent() &&
        (!channels.is(JsonType::object) || !patterns(channels.get("subscribe"), out.subscribe) ||
         !patterns(channels.get("publish"), out.publish))) {
        return TokenError::bad_claim;
    }
    return TokenError::none;
}

TokenError check_claims(const Claims &c, const ClaimPolicy &policy, uint64_t now_ms)
{
    if (c.has_exp && now_ms >= c.exp_ms) return TokenError::expired;
    if (c.has_nbf && now_ms < c.nbf_ms) return TokenError::not_yet_valid;
    if (!policy.audience.empty()) {
        bool found = false;
        for (const std::string &a : c.aud) found = found || a == policy.audience;
        if (!found) return TokenError::wrong_audience;
    }
    if (!policy.issuer.empty() && (!c.has_iss || c.iss != policy.issuer)) return TokenError::wrong_issuer;
    return TokenError::none;
}

size_t Claims::footprint() const
{
    size_t n = sizeof(Claims) + iss.capacity() + sub.capacity();
    for (const auto *list : {&aud, &subscribe, &publish}) {
        n += list->capacity() * sizeof(std::string);
        for (const std::string &s : *list) n += s.capacity() + 1;
    }
    return n;
}

bool is_valid_pattern(std::string_view pattern)
{
    if (pattern.empty() || pattern.size() > kMaxChannelIdLen) return false;
    for (char c : pattern) {
        if (c != '*' && !is_valid_channel_id(std::string_view(&c, 1))) return false;
    }
    return true;
}

// '*' runs split the pattern into literal pieces: the first must start the id, the last
// must end it, and the pieces between are found left to right, each at its leftmost
// place after the previous one (leftmost is never worse, so no backtracking is needed).
bool pattern_matches(std::string_view pattern, std::string_view id)
{
    size_t first = pattern.find('*');
    if (first == std::string_view::npos) return pattern == id;
    size_t last = pattern.rfind('*');
    std::string_view head = pattern.substr(0, first), tail = pattern.substr(last + 1);
    if (id.size() < head.size() + tail.size() || id.substr(0, head.size()) != head ||
        id.substr(id.size() - tail.size()) != tail) {
        return false;
    }
    std::string_view rest = id.substr(head.size(), id.size() - head.size() - tail.size());
    std::string_view middle = last > first ? pattern.substr(first + 1, last - first - 1) : std::string_view{};
    while (!middle.empty()) {
        size_t star = middle.find('*');
        std::string_view piece = middle.substr(0, star);
        middle = star == std::string_view::npos ? std::string_view{} : middle.substr(star + 1);
        if (piece.empty()) continue;
        size_t at = rest.find(piece);
        if (at == std::string_view::npos) return false;
        rest.remove_prefix(at + piece.size());
    }
    return true;
}

bool is_granted(const std::vector<std::string> &patterns, std::string_view id)
{
    for (const std::string &p : patterns) {
        if (pattern_matches(p, id)) return true;
    }
    return false;
}

std::string token_expired_event(uint64_t exp_ms)
{
    std::string out;
    StringSink sink(out);
    put_token_expired_event(sink, exp_ms);
    return out;
}

bool ecdsa_jws_to_der(std::string_view rs, size_t half, std::string &der)
{
    if (half == 0 || half > 66 || rs.size() != 2 * half) return false;
    std::string body;
    append_der_integer(body, rs.substr(0, half));
    append_der_integer(body, rs.substr(half));
    der.clear();
    der += '\x30';
    if (body.size() >= 128) der += '\x81';
    der += char(body.size());
    der += body;
    return true;
}

}  // namespace channels
