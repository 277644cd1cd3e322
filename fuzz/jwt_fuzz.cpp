// The JWT parsers on arbitrary bytes (mode chosen by the first byte):
//   0  base64url: what decodes re-encodes to the same text (one encoding per byte string),
//      and any bytes round-trip
//   1  JSON: no crash; what parses serializes to a fixed point; a lone string literal
//      agrees with the reference decoder of t/unit/json_decode_for_tests.h
//   2  a compact JWS and its claims (as a token, and as the claims of one)
//   3  grant patterns against a plain recursive matcher
//   4  ECDSA r||s -> DER, read back by OpenSSL
//   5  a key file (PEM or JWKS) through OpenSSL
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "channels/base64url.h"
#include "channels/json.h"
#include "channels/json_parse.h"
#include "channels/jwt.h"
#include "channels/jwt_keys.h"
#include "fuzz_check.h"
#include "json_decode_for_tests.h"

namespace {

using channels::JsonDoc;
using channels::JsonType;

void serialize(JsonDoc::Ref v, std::string &out)
{
    switch (v.type()) {
    case JsonType::null: out += "null"; break;
    case JsonType::boolean: out += v.boolean() ? "true" : "false"; break;
    case JsonType::number: {
        char buf[64];
        // -0.0 would come back as the integer 0: zero is written as 0 either way.
        int n = v.integer() || v.number() == 0
                    ? std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v.int_value()))
                    : std::snprintf(buf, sizeof buf, "%.17g", v.number());
        out.append(buf, size_t(n));
        break;
    }
    case JsonType::string: channels::append_json_string(out, v.string()); break;
    case JsonType::array: {
        out += '[';
        bool first = true;
        v.each_item([&](JsonDoc::Ref item) {
            if (!first) out += ',';
            first = false;
            serialize(item, out);
        });
        out += ']';
        break;
    }
    case JsonType::object: {
        out += '{';
        bool first = true;
        v.each_member([&](std::string_view k, JsonDoc::Ref item) {
            if (!first) out += ',';
            first = false;
            channels::append_json_string(out, k);
            out += ':';
            serialize(item, out);
        });
        out += '}';
        break;
    }
    }
}

void check_json(std::string_view s)
{
    JsonDoc doc;
    bool ok = doc.parse(s);
    // A lone literal (JSON text may also end in whitespace, the reference takes none).
    if (!s.empty() && s[0] == '"' && std::strchr(" \t\r\n", s.back()) == nullptr) {
        std::optional<std::string> ref = json_test::decode_json_string(s);
        FUZZ_CHECK(ok == ref.has_value());
        if (ok) FUZZ_CHECK(doc.root().string() == *ref);
    }
    if (!ok) return;
    FUZZ_CHECK(doc.root().type() != JsonType::number || std::isfinite(doc.root().number()));
    std::string once;
    serialize(doc.root(), once);
    JsonDoc again;
    FUZZ_CHECK(again.parse(once, {64, 1u << 20}));
    std::string twice;
    serialize(again.root(), twice);
    FUZZ_CHECK(once == twice);
}

bool reference_match(std::string_view p, std::string_view s)
{
    if (p.empty()) return s.empty();
    if (p[0] == '*') {
        while (p.size() > 1 && p[1] == '*') p.remove_prefix(1);
        for (size_t i = 0; i <= s.size(); i++) {
            if (reference_match(p.substr(1), s.substr(i))) return true;
        }
        return false;
    }
    return !s.empty() && p[0] == s[0] && reference_match(p.substr(1), s.substr(1));
}

void check_der(std::string_view s)
{
    size_t half = s.empty() ? 0 : static_cast<unsigned char>(s[0]) % 70;
    std::string_view rs = s.substr(s.empty() ? 0 : 1);
    std::string der;
    bool ok = channels::ecdsa_jws_to_der(rs, half, der);
    FUZZ_CHECK(ok == (half > 0 && half <= 66 && rs.size() == 2 * half));
    if (!ok) return;
    const auto *p = reinterpret_cast<const unsigned char *>(der.data());
    ECDSA_SIG *sig = d2i_ECDSA_SIG(nullptr, &p, long(der.size()));
    FUZZ_CHECK(sig != nullptr && p == reinterpret_cast<const unsigned char *>(der.data()) + der.size());
    std::string back(2 * half, '\0');
    auto *out = reinterpret_cast<unsigned char *>(back.data());
    FUZZ_CHECK(BN_bn2binpad(ECDSA_SIG_get0_r(sig), out, int(half)) == int(half));
    FUZZ_CHECK(BN_bn2binpad(ECDSA_SIG_get0_s(sig), out + half, int(half)) == int(half));
    FUZZ_CHECK(back == rs);
    ECDSA_SIG_free(sig);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    std::string_view s(reinterpret_cast<const char *>(data) + 1, size - 1);
    switch (data[0] % 6) {
    case 0: {
        std::string bytes;
        if (channels::base64url_decode(s, bytes)) {
            std::string text;
            channels::append_base64url(text, bytes);
            FUZZ_CHECK(text == s);
        }
        std::string text, back;
        channels::append_base64url(text, s);
        FUZZ_CHECK(channels::base64url_decode(text, back) && back == s);
        break;
    }
    case 1:
        check_json(s);
        break;
    case 2: {
        channels::Jws jws;
        if (channels::parse_jws(s, jws) == channels::TokenError::none) {
            FUZZ_CHECK(channels::alg_from_name(channels::alg_name(jws.header.alg)) == jws.header.alg);
            FUZZ_CHECK(s.substr(0, jws.signing_input.size()) == jws.signing_input);
        }
        std::string b64;
        channels::append_base64url(b64, s);
        channels::Claims claims;
        if (channels::parse_claims(b64, claims) == channels::TokenError::none) {
            for (const auto *list : {&claims.subscribe, &claims.publish}) {
                for (const std::string &p : *list) FUZZ_CHECK(channels::is_valid_pattern(p));
            }
            channels::check_claims(claims, {"aud", "iss"}, 1700000000000);
        }
        break;
    }
    case 3: {
        size_t cut = s.find('\n');
        if (cut == std::string_view::npos || cut > 12 || s.size() - cut - 1 > 24) break;
        std::string_view pattern = s.substr(0, cut), id = s.substr(cut + 1);
        FUZZ_CHECK(channels::pattern_matches(pattern, id) == reference_match(pattern, id));
        break;
    }
    case 4:
        check_der(s);
        break;
    case 5: {
        channels::JwtKeySet set;
        std::string error;
        bool ok = set.add_file(s, error);
        FUZZ_CHECK(ok != set.keys().empty() && ok == error.empty());
        FUZZ_CHECK(ERR_peek_error() == 0);
        break;
    }
    }
    return 0;
}
