// JWT pieces without OpenSSL: base64url, the strict JSON parser, JWS headers, claims,
// grant patterns, the ECDSA signature conversion, the token-expired event.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "channels/base64url.h"
#include "channels/json_parse.h"
#include "channels/jwt.h"

using namespace std::string_literals;
using channels::JsonDoc;
using channels::JsonType;
using channels::TokenError;

namespace {

std::string b64(std::string_view bytes)
{
    std::string out;
    channels::append_base64url(out, bytes);
    return out;
}

bool unb64(std::string_view in, std::string *out = nullptr)
{
    std::string tmp;
    bool ok = channels::base64url_decode(in, tmp);
    if (out != nullptr) *out = tmp;
    return ok;
}

bool parses(std::string_view text)
{
    JsonDoc doc;
    return doc.parse(text);
}

// A token with the given header and claims JSON and signature bytes (unverified here).
std::string token(std::string_view header, std::string_view claims, std::string_view sig = "sig")
{
    return b64(header) + "." + b64(claims) + "." + b64(sig);
}

TokenError header_error(std::string_view header)
{
    channels::Jws jws;
    return channels::parse_jws(token(header, "{}"), jws);
}

TokenError claims_error(std::string_view claims, channels::Claims *out = nullptr)
{
    channels::Claims c;
    TokenError err = channels::parse_claims(b64(claims), c);
    if (out != nullptr) *out = c;
    return err;
}

channels::Claims claims_of(std::string_view json)
{
    channels::Claims c;
    EXPECT_EQ(channels::parse_claims(b64(json), c), TokenError::none) << json;
    return c;
}

// Reference matcher for grant patterns: plain recursion over '*'.
bool reference_match(std::string_view p, std::string_view s)
{
    if (p.empty()) return s.empty();
    if (p[0] == '*') {
        for (size_t i = 0; i <= s.size(); i++) {
            if (reference_match(p.substr(1), s.substr(i))) return true;
        }
        return false;
    }
    return !s.empty() && p[0] == s[0] && reference_match(p.substr(1), s.substr(1));
}

}  // namespace

// ---- base64url ----

TEST(Base64Url, KnownValues)
{
    EXPECT_EQ(b64(""), "");
    EXPECT_EQ(b64("f"), "Zg");
    EXPECT_EQ(b64("fo"), "Zm8");
    EXPECT_EQ(b64("foo"), "Zm9v");
    EXPECT_EQ(b64("foob"), "Zm9vYg");
    EXPECT_EQ(b64("\xfb\xff"), "-_8");
    std::string out;
    EXPECT_TRUE(unb64("Zm9vYg", &out));
    EXPECT_EQ(out, "foob");
    EXPECT_TRUE(unb64("-_8", &out));
    EXPECT_EQ(out, "\xfb\xff");
    EXPECT_TRUE(unb64("", &out));
    EXPECT_EQ(out, "");
}

TEST(Base64Url, RejectsAnythingNotCanonical)
{
    EXPECT_FALSE(unb64("Zg=="));     // padding
    EXPECT_FALSE(unb64("Zg="));
    EXPECT_FALSE(unb64("Z"));        // length 1 mod 4
    EXPECT_FALSE(unb64("Zh"));       // non-zero bits after the last byte
    EXPECT_FALSE(unb64("Zm9"));      // "Zm8" is the only encoding of "fo"
    EXPECT_FALSE(unb64("+/8"));      // standard alphabet
    EXPECT_FALSE(unb64("Zm9v YQ"));  // whitespace
    EXPECT_FALSE(unb64("Zm9v\n"));
    EXPECT_FALSE(unb64("Zm9v!A"));
    EXPECT_FALSE(unb64("Zm\0v"s));
}

TEST(Base64Url, RoundTripsRandomBytes)
{
    std::mt19937 rng(7);
    for (int round = 0; round < 2000; round++) {
        std::string bytes(rng() % 70, '\0');
        for (char &c : bytes) c = char(rng());
        std::string back;
        ASSERT_TRUE(unb64(b64(bytes), &back));
        ASSERT_EQ(back, bytes);
    }
}

// ---- JSON ----

TEST(JsonParse, AcceptsValidDocuments)
{
    for (const char *text : {"{}", "[]", " {\"a\" : [1, 2.5, -0, 1e3, 1E+2, 0.5e-1, true, false, null]} ",
                             "\"s\"", "0", "-12", "[[[]]]", "{\"\":\"\"}", "\t\r\n[\"\\u00e9\\n\\/\"]"}) {
        EXPECT_TRUE(parses(text)) << text;
    }
}

TEST(JsonParse, RejectsWhatStrictJsonForbids)
{
    for (std::string text : {"", " ", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "+1", "1e", "-", "NaN",
                             "{a:1}", "{'a':1}", "[1 2]", "{\"a\" 1}", "{\"a\":1,\"a\":2}", "\"a\x01\"",
                             "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\x41\"", "\"\\u12g4\"",
                             "\xEF\xBB\xBF{}", "\"\xC3\x28\"", "{} x", "[] []", "tru", "nul", "1e400",
                             "\"unterminated", "[\"a\"", "{\"a\":}", "truex"}) {
        EXPECT_FALSE(parses(text)) << text;
    }
}

TEST(JsonParse, DuplicateKeysAreRejectedAfterUnescaping)
{
    EXPECT_FALSE(parses("{\"alg\":\"RS256\",\"al\\u0067\":\"none\"}"));
    std::string many = "{";
    for (int i = 0; i < 100; i++) many += "\"k" + std::to_string(i) + "\":0,";
    EXPECT_TRUE(parses(many + "\"k100\":0}"));
    EXPECT_FALSE(parses(many + "\"k50\":0}"));
}

TEST(JsonParse, LimitsDepthAndSize)
{
    std::string deep(17, '['), close(17, ']');   // the default allows 16 levels
    EXPECT_FALSE(parses(deep + close));
    EXPECT_TRUE(parses(deep.substr(1) + close.substr(1)));
    JsonDoc doc;
    EXPECT_FALSE(doc.parse("[1,2,3,4]", {16, 4}));
    EXPECT_TRUE(doc.parse("[1,2,3]", {16, 4}));
    EXPECT_FALSE(doc.parse("[[1]]", {1, 100}));
    EXPECT_FALSE(doc.error().empty());
}

TEST(JsonParse, GivesValuesBack)
{
    JsonDoc doc;
    ASSERT_TRUE(doc.parse(R"({"s":"a\u00e9\ud83d\ude00\"","n":9999999999,"f":1.5,"e":1e3,
                              "big":123456789012345678901,"neg":-7,"t":true,"z":null,"a":[1,"x",[2]]})"));
    JsonDoc::Ref r = doc.root();
    ASSERT_TRUE(r.is(JsonType::object));
    EXPECT_EQ(r.size(), 9u);
    EXPECT_EQ(r.get("s").string(), "a\xC3\xA9\xF0\x9F\x98\x80\"");
    EXPECT_TRUE(r.get("n").integer());
    EXPECT_EQ(r.get("n").int_value(), 9999999999);
    EXPECT_FALSE(r.get("f").integer());
    EXPECT_DOUBLE_EQ(r.get("f").number(), 1.5);
    EXPECT_FALSE(r.get("e").integer());
    EXPECT_DOUBLE_EQ(r.get("e").number(), 1000);
    EXPECT_FALSE(r.get("big").integer());
    EXPECT_EQ(r.get("neg").int_value(), -7);
    EXPECT_TRUE(r.get("t").boolean());
    EXPECT_TRUE(r.get("z").is(JsonType::null));
    EXPECT_TRUE(r.get("missing").absent());
    EXPECT_TRUE(r.get("s").get("x").absent());   // not an object
    std::vector<std::string> kinds;
    r.get("a").each_item([&](JsonDoc::Ref item) { kinds.push_back(std::to_string(int(item.type()))); });
    EXPECT_EQ(kinds, (std::vector<std::string>{"2", "3", "4"}));
    std::vector<std::string> keys;
    r.each_member([&](std::string_view k, JsonDoc::Ref) { keys.emplace_back(k); });
    EXPECT_EQ(keys.front(), "s");
    EXPECT_EQ(keys.back(), "a");
}

TEST(JsonParse, StringsMayHoldNulAndEscapedControls)
{
    JsonDoc doc;
    ASSERT_TRUE(doc.parse(R"(["\u0000\b\f\n\r\t\/\\"])"));
    std::string got;
    doc.root().each_item([&](JsonDoc::Ref s) { got = std::string(s.string()); });
    EXPECT_EQ(got, "\0\b\f\n\r\t/\\"s);
}

// ---- JWS header ----

TEST(Jws, SplitsAndReadsTheHeader)
{
    channels::Jws jws;
    std::string t = token(R"({"alg":"ES256","kid":"k1","typ":"JWT"})", R"({"sub":"1"})", "\x01\x02");
    ASSERT_EQ(channels::parse_jws(t, jws), TokenError::none);
    EXPECT_EQ(jws.header.alg, channels::JwtAlg::ES256);
    EXPECT_TRUE(jws.header.has_kid);
    EXPECT_EQ(jws.header.kid, "k1");
    EXPECT_EQ(jws.signature, "\x01\x02");
    EXPECT_EQ(jws.signing_input, t.substr(0, t.rfind('.')));
    EXPECT_EQ(jws.payload_b64, b64(R"({"sub":"1"})"));
}

TEST(Jws, RejectsBadShapesAndAlgorithms)
{
    channels::Jws jws;
    for (std::string t : {"", "abc", "a.b", "a.b.c.d", ".e30.", "e30..x"}) {
        TokenError err = channels::parse_jws(t, jws);
        EXPECT_TRUE(err == TokenError::malformed || err == TokenError::bad_base64) << t;
    }
    EXPECT_EQ(channels::parse_jws("e30=.e30.", jws), TokenError::bad_base64);
    EXPECT_EQ(channels::parse_jws(b64(R"({"alg":"HS256"})") + ".e30.a*", jws), TokenError::bad_base64);
    EXPECT_EQ(header_error(R"({"alg":"none"})"), TokenError::alg_none);
    EXPECT_EQ(header_error(R"({"alg":"None"})"), TokenError::alg_unknown);
    EXPECT_EQ(header_error(R"({"alg":"HS1"})"), TokenError::alg_unknown);
    EXPECT_EQ(header_error(R"({"alg":"RSA-OAEP"})"), TokenError::alg_unknown);
    EXPECT_EQ(header_error(R"({"typ":"JWT"})"), TokenError::bad_header);
    EXPECT_EQ(header_error(R"({"alg":256})"), TokenError::bad_header);
    EXPECT_EQ(header_error(R"(["alg","HS256"])"), TokenError::bad_header);
    EXPECT_EQ(header_error(R"({"alg":"HS256",})"), TokenError::bad_header);
    EXPECT_EQ(header_error(R"({"alg":"HS256","alg":"none"})"), TokenError::bad_header);
    EXPECT_EQ(header_error(R"({"alg":"HS256","kid":7})"), TokenError::bad_header);
    EXPECT_EQ(header_error(R"({"alg":"HS256","crit":["exp"],"exp":1})"), TokenError::crit_unsupported);
    for (const char *alg : {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                            "ES256", "ES384", "EdDSA"}) {
        EXPECT_EQ(header_error("{\"alg\":\""s + alg + "\"}"), TokenError::none) << alg;
        EXPECT_EQ(channels::alg_name(*channels::alg_from_name(alg)), alg);
    }
}

// ---- claims ----

TEST(Claims, ReadsTheClaimsThatMatter)
{
    channels::Claims c = claims_of(R"({"sub":"42","iss":"https://app","aud":["a","b"],"exp":1700000000,
        "nbf":1600000000.25,"iat":1,"channels":{"subscribe":["user.42.*","news"],"publish":["user.42.out"],
        "other":[1]},"extra":{"x":[null]}})");
    EXPECT_TRUE(c.has_sub);
    EXPECT_EQ(c.sub, "42");
    EXPECT_EQ(c.iss, "https://app");
    EXPECT_EQ(c.aud, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(c.exp_ms, 1700000000000u);
    EXPECT_EQ(c.exp_s, 1700000000);
    EXPECT_EQ(c.nbf_ms, 1600000000250u);
    EXPECT_EQ(c.subscribe, (std::vector<std::string>{"user.42.*", "news"}));
    EXPECT_EQ(c.publish, (std::vector<std::string>{"user.42.out"}));
    channels::Claims none = claims_of("{}");
    EXPECT_FALSE(none.has_exp || none.has_nbf || none.has_aud || none.has_iss || none.has_sub);
    EXPECT_TRUE(none.subscribe.empty() && none.publish.empty());
    EXPECT_EQ(claims_of(R"({"aud":"x"})").aud, (std::vector<std::string>{"x"}));
    EXPECT_EQ(claims_of(R"({"exp":1.7e9})").exp_ms, 1700000000000u);
    EXPECT_EQ(claims_of(R"({"exp":1e300})").exp_s, 9999999999);
}

TEST(Claims, RejectsClaimsOfTheWrongType)
{
    for (const char *json : {R"({"exp":"1700000000"})", R"({"nbf":null})", R"({"aud":7})", R"({"aud":["a",7]})",
                             R"({"iss":["x"]})", R"({"sub":42})", R"({"channels":[]})",
                             R"({"channels":{"subscribe":"news"}})", R"({"channels":{"publish":[7]}})",
                             R"({"channels":{"subscribe":["a b"]}})", R"({"channels":{"subscribe":[""]}})",
                             R"({"channels":{"subscribe":["a%2Cb"]}})", R"({"sub":"42\r\nX-A: b"})",
                             R"({"sub":"a\u0000b"})", R"({"sub":"\t"})", R"({"sub":"a\u007fb"})"}) {
        EXPECT_EQ(claims_error(json), TokenError::bad_claim) << json;
    }
    std::string many = R"({"channels":{"subscribe":[)";
    for (size_t i = 0; i <= channels::kMaxPatterns; i++) many += (i ? ",\"c" : "\"c") + std::to_string(i) + "\"";
    EXPECT_EQ(claims_error(many + "]}}"), TokenError::bad_claim);
    EXPECT_EQ(claims_error("[]"), TokenError::bad_payload);
    EXPECT_EQ(claims_error("{"), TokenError::bad_payload);
    channels::Claims c;
    EXPECT_EQ(channels::parse_claims("e30=", c), TokenError::bad_base64);
}

TEST(Claims, ExpAndNbfWithoutLeeway)
{
    channels::Claims c = claims_of(R"({"exp":1000,"nbf":900})");
    channels::ClaimPolicy any;
    EXPECT_EQ(channels::check_claims(c, any, 899999), TokenError::not_yet_valid);
    EXPECT_EQ(channels::check_claims(c, any, 900000), TokenError::none);
    EXPECT_EQ(channels::check_claims(c, any, 999999), TokenError::none);
    EXPECT_EQ(channels::check_claims(c, any, 1000000), TokenError::expired);
    channels::Claims frac = claims_of(R"({"exp":1000.5})");
    EXPECT_EQ(channels::check_claims(frac, any, 1000499), TokenError::none);
    EXPECT_EQ(channels::check_claims(frac, any, 1000500), TokenError::expired);
    EXPECT_EQ(channels::check_claims(claims_of(R"({"exp":-5})"), any, 0), TokenError::expired);
}

TEST(Claims, AudienceAndIssuerWhenConfigured)
{
    channels::ClaimPolicy policy{"channels", "https://app"};
    auto check = [&](const char *json) { return channels::check_claims(claims_of(json), policy, 0); };
    EXPECT_EQ(check(R"({"aud":"channels","iss":"https://app"})"), TokenError::none);
    EXPECT_EQ(check(R"({"aud":["x","channels"],"iss":"https://app"})"), TokenError::none);
    EXPECT_EQ(check(R"({"iss":"https://app"})"), TokenError::wrong_audience);
    EXPECT_EQ(check(R"({"aud":[],"iss":"https://app"})"), TokenError::wrong_audience);
    EXPECT_EQ(check(R"({"aud":"Channels","iss":"https://app"})"), TokenError::wrong_audience);
    EXPECT_EQ(check(R"({"aud":"channels"})"), TokenError::wrong_issuer);
    EXPECT_EQ(check(R"({"aud":"channels","iss":"https://app/"})"), TokenError::wrong_issuer);
    channels::ClaimPolicy none;
    EXPECT_EQ(channels::check_claims(claims_of(R"({"aud":"other","iss":"x"})"), none, 0), TokenError::none);
}

// ---- grant patterns ----

TEST(Patterns, StarMatchesAnyRunOfIdCharacters)
{
    using channels::pattern_matches;
    EXPECT_TRUE(pattern_matches("news", "news"));
    EXPECT_FALSE(pattern_matches("news", "news2"));
    EXPECT_TRUE(pattern_matches("*", "x"));
    EXPECT_TRUE(pattern_matches("*", "user.42.private"));
    EXPECT_TRUE(pattern_matches("user.42.*", "user.42."));
    EXPECT_TRUE(pattern_matches("user.42.*", "user.42.a.b"));
    EXPECT_FALSE(pattern_matches("user.42.*", "user.42"));
    EXPECT_FALSE(pattern_matches("user.42.*", "user.420.a"));
    EXPECT_FALSE(pattern_matches("user.42.*", "user.43.a"));
    EXPECT_TRUE(pattern_matches("*.news", "sports.news"));
    EXPECT_FALSE(pattern_matches("*.news", "sports.news.x"));
    EXPECT_TRUE(pattern_matches("a*b*c", "abc"));
    EXPECT_TRUE(pattern_matches("a*b*c", "aXbYc"));
    EXPECT_FALSE(pattern_matches("a*b*c", "acb"));
    EXPECT_TRUE(pattern_matches("a**b", "ab"));
    EXPECT_FALSE(pattern_matches("ab*ba", "aba"));
    EXPECT_TRUE(pattern_matches("ab*ba", "abba"));
    EXPECT_TRUE(pattern_matches("*a*a*", "aa"));
    EXPECT_FALSE(pattern_matches("*a*a*", "ab"));
    EXPECT_TRUE(channels::is_granted({"x", "user.*"}, "user.7"));
    EXPECT_FALSE(channels::is_granted({}, "user.7"));
}

TEST(Patterns, AgreeWithAReferenceMatcher)
{
    std::mt19937 rng(11);
    const char alphabet[] = "ab*";
    for (int round = 0; round < 20000; round++) {
        std::string p(1 + rng() % 7, 'a'), s(rng() % 8, 'a');
        for (char &c : p) c = alphabet[rng() % 3];
        for (char &c : s) c = alphabet[rng() % 2];
        ASSERT_EQ(channels::pattern_matches(p, s), reference_match(p, s)) << p << " ~ " << s;
    }
}

TEST(Patterns, Validity)
{
    EXPECT_TRUE(channels::is_valid_pattern("*"));
    EXPECT_TRUE(channels::is_valid_pattern("user.42.*"));
    EXPECT_TRUE(channels::is_valid_pattern("a_b:c@d~e-f"));
    EXPECT_FALSE(channels::is_valid_pattern(""));
    EXPECT_FALSE(channels::is_valid_pattern("a,b"));
    EXPECT_FALSE(channels::is_valid_pattern("a/b"));
    EXPECT_FALSE(channels::is_valid_pattern(std::string(256, 'a')));
    EXPECT_TRUE(channels::is_valid_pattern(std::string(255, '*')));
}

// ---- ECDSA r||s -> DER, token-expired ----

TEST(Ecdsa, JwsSignatureBecomesDer)
{
    std::string der;
    std::string rs(64, '\0');
    rs[31] = 1;
    rs[32] = '\x80';
    ASSERT_TRUE(channels::ecdsa_jws_to_der(rs, 32, der));
    // r = 1 (leading zeros dropped); s has its high bit set: a 0x00 keeps it positive.
    std::string want = "\x30\x26\x02\x01\x01\x02\x21\x00\x80"s + std::string(31, '\0');
    EXPECT_EQ(der, want);
    EXPECT_TRUE(channels::ecdsa_jws_to_der(std::string(96, '\xff'), 48, der));
    EXPECT_EQ(der.size(), 2u + 2 * (2 + 49));
    EXPECT_FALSE(channels::ecdsa_jws_to_der(std::string(63, '\1'), 32, der));
    EXPECT_FALSE(channels::ecdsa_jws_to_der(std::string(72, '\1'), 32, der));
    EXPECT_TRUE(channels::ecdsa_jws_to_der(std::string(64, '\0'), 32, der));
    EXPECT_EQ(der, "\x30\x06\x02\x01\x00\x02\x01\x00"s);
}

TEST(TokenExpired, IsOneSseEventWithTheExpInSeconds)
{
    EXPECT_EQ(channels::token_expired_event(1700000000999), "event: token-expired\ndata: {\"exp\":1700000000}\n\n");
}
