// JSON string escaping, UTF-8 validation, base64, decimal numbers.
#include "channels/json.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>

#include "json_decode_for_tests.h"

using namespace std::string_literals;

namespace {

std::string js(std::string_view s)
{
    std::string out;
    channels::append_json_string(out, s);
    return out;
}

std::string b64(std::string_view s)
{
    std::string out;
    channels::append_base64(out, s);
    return out;
}

// Random valid UTF-8, drawing code points from every encoded length and from the
// values next to the forbidden ranges.
std::string random_utf8(std::mt19937 &rng, size_t max_cps)
{
    static const uint32_t edges[] = {0x00, 0x1F, 0x20, 0x22, 0x5C, 0x7F, 0x80, 0x7FF, 0x800,
                                     0xD7FF, 0xE000, 0xFFFD, 0xFFFF, 0x10000, 0x10FFFF, 0x2028,
                                     0x2029, 0xFEFF};
    std::string s;
    size_t n = rng() % (max_cps + 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t cp;
        switch (rng() % 6) {
        case 0: cp = rng() % 0x20; break;
        case 1: cp = rng() % 0x80; break;
        case 2: cp = 0x80 + rng() % (0x800 - 0x80); break;
        case 3: cp = 0x800 + rng() % (0x10000 - 0x800); break;
        case 4: cp = 0x10000 + rng() % (0x110000 - 0x10000); break;
        default: cp = edges[rng() % (sizeof edges / sizeof edges[0])]; break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp -= 0x800;  // no surrogates
        json_test::encode_utf8(cp, s);
    }
    return s;
}

}  // namespace

TEST(JsonString, Examples)
{
    EXPECT_EQ(js(""), "\"\"");
    EXPECT_EQ(js("news"), "\"news\"");
    EXPECT_EQ(js("a\"b\\c/d"), "\"a\\\"b\\\\c/d\"");
    EXPECT_EQ(js("\b\f\n\r\t"), "\"\\b\\f\\n\\r\\t\"");
    EXPECT_EQ(js("\0"s), "\"\\u0000\"");
    EXPECT_EQ(js("\x01\x1f\x0b"), "\"\\u0001\\u001f\\u000b\"");
    EXPECT_EQ(js("\x7f"), "\"\x7f\"");
    EXPECT_EQ(js("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"");
}

TEST(JsonString, AppendsAfterExistingBytes)
{
    std::string out = "{\"k\":";
    channels::append_json_string(out, "v\n");
    EXPECT_EQ(out, "{\"k\":\"v\\n\"");
}

TEST(JsonString, EveryAsciiByteDecodesBack)
{
    for (int c = 0; c < 0x80; c++) {
        std::string in(3, static_cast<char>(c));
        std::string out = js(in);
        for (char o : out) EXPECT_GE(static_cast<unsigned char>(o), 0x20) << "raw control for " << c;
        auto back = json_test::decode_json_string(out);
        ASSERT_TRUE(back) << "byte " << c << " gave " << out;
        EXPECT_EQ(*back, in);
    }
}

TEST(JsonString, RandomValidUtf8RoundTrips)
{
    std::mt19937 rng(2024);
    for (int i = 0; i < 20000; i++) {
        std::string in = random_utf8(rng, i % 50 == 0 ? 400 : 16);
        ASSERT_TRUE(json_test::reference_valid_utf8(in));
        std::string out = js(in);
        auto back = json_test::decode_json_string(out);
        ASSERT_TRUE(back) << out;
        ASSERT_EQ(*back, in);
    }
}

TEST(Utf8, ValidBoundaries)
{
    const std::string ok[] = {
        "", "plain ascii", "\0"s, "a\0b"s, "\x7F",
        "\xC2\x80", "\xDF\xBF",                  // U+0080, U+07FF
        "\xE0\xA0\x80", "\xED\x9F\xBF",          // U+0800, U+D7FF
        "\xEE\x80\x80", "\xEF\xBF\xBF",          // U+E000, U+FFFF
        "\xF0\x90\x80\x80", "\xF4\x8F\xBF\xBF",  // U+10000, U+10FFFF
        "\xF3\xBF\xBF\xBF", "\xE1\x80\x80", "\xEC\xBF\xBF",
        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
    };
    for (const auto &s : ok) {
        EXPECT_TRUE(channels::is_valid_utf8(s)) << testing::PrintToString(s);
        EXPECT_TRUE(json_test::reference_valid_utf8(s)) << testing::PrintToString(s);
    }
}

TEST(Utf8, InvalidClasses)
{
    const std::string bad[] = {
        // overlong
        "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xE0\x9F\xBF", "\xF0\x80\x80\x80", "\xF0\x8F\xBF\xBF",
        // surrogates, alone and as a CESU-8 pair
        "\xED\xA0\x80", "\xED\xAF\xBF", "\xED\xB0\x80", "\xED\xBF\xBF", "\xED\xA0\xBD\xED\xB8\x80",
        // above U+10FFFF, and lead bytes that cannot start anything
        "\xF4\x90\x80\x80", "\xF4\xBF\xBF\xBF", "\xF5\x80\x80\x80", "\xF7\xBF\xBF\xBF",
        "\xF8\x88\x80\x80\x80", "\xFC\x84\x80\x80\x80\x80", "\xFE", "\xFF",
        // truncated
        "\xC2", "\xE0\xA0", "\xE2\x82", "\xF0\x90\x80", "\xF4\x8F\xBF", "abc\xE2\x82", "\xE2\x82" "A",
        "\xF0\x9F\x98" "abcdefghijk",
        // stray continuation bytes, too many continuations
        "\x80", "\xBF", "a\x80", "\xC2\x80\x80", "\xE2\x82\xAC\xAC",
        // lead followed by a non-continuation
        "\xC2\xC2\x80", "\xE2\x28\xA1", "\xF0\x28\x8C\xBC",
    };
    for (const auto &s : bad) {
        EXPECT_FALSE(channels::is_valid_utf8(s)) << testing::PrintToString(s);
        EXPECT_FALSE(json_test::reference_valid_utf8(s)) << testing::PrintToString(s);
    }
}

TEST(Utf8, ViewEndingInsideASequenceIsTruncated)
{
    // The bytes after the view would complete the sequence: they must not be read. The
    // cut copy sits in an exact-size heap block so a sanitizer build sees any over-read.
    const std::string full[] = {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "abcdefgh\xF0\x9F\x98\x80"};
    for (const auto &s : full) {
        ASSERT_TRUE(channels::is_valid_utf8(s));
        size_t lead = s.find_first_of("\xC3\xE2\xF0");
        for (size_t cut = lead + 1; cut < s.size(); cut++) {
            std::unique_ptr<char[]> exact(new char[cut]);
            std::memcpy(exact.get(), s.data(), cut);
            EXPECT_FALSE(channels::is_valid_utf8(std::string_view(s).substr(0, cut)))
                << testing::PrintToString(s) << " cut at " << cut;
            EXPECT_FALSE(channels::is_valid_utf8(std::string_view(exact.get(), cut)));
        }
    }
}

TEST(Utf8, InvalidByteAtEveryOffsetOfALongAsciiRun)
{
    // Exercises the word-at-a-time ASCII skip at each alignment.
    for (size_t len = 0; len < 40; len++) {
        for (size_t at = 0; at <= len; at++) {
            std::string s(len, 'a');
            s.insert(at, "\xE2\x82");  // truncated euro sign
            if (at + 2 < s.size()) {
                EXPECT_FALSE(channels::is_valid_utf8(s)) << len << "/" << at;
            }
            s.insert(at + 2, "\xAC");  // complete it
            EXPECT_TRUE(channels::is_valid_utf8(s)) << len << "/" << at;
        }
        std::string tail(len, 'a');
        tail += "\xF0\x9F\x98";
        EXPECT_FALSE(channels::is_valid_utf8(tail)) << len;
    }
}

TEST(Utf8, RandomBytesAgreeWithReferenceDecoder)
{
    std::mt19937 rng(77);
    static const unsigned char interesting[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                                                0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                                                0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
    size_t valid = 0;
    for (int i = 0; i < 200000; i++) {
        std::string s;
        size_t len = rng() % 12;
        for (size_t k = 0; k < len; k++) {
            s.push_back(static_cast<char>(rng() % 3 ? interesting[rng() % sizeof interesting] : rng() % 256));
        }
        bool want = json_test::reference_valid_utf8(s);
        valid += want;
        ASSERT_EQ(channels::is_valid_utf8(s), want) << testing::PrintToString(s);
    }
    EXPECT_GT(valid, 1000u);  // the generator reaches both outcomes
}

TEST(Utf8, RandomValidStringsAndSingleByteMutations)
{
    std::mt19937 rng(78);
    for (int i = 0; i < 20000; i++) {
        std::string s = random_utf8(rng, 20);
        ASSERT_TRUE(channels::is_valid_utf8(s));
        if (s.empty()) continue;
        s[rng() % s.size()] = static_cast<char>(rng() % 256);
        ASSERT_EQ(channels::is_valid_utf8(s), json_test::reference_valid_utf8(s))
            << testing::PrintToString(s);
    }
}

TEST(Base64, Rfc4648Vectors)
{
    EXPECT_EQ(b64(""), "");
    EXPECT_EQ(b64("f"), "Zg==");
    EXPECT_EQ(b64("fo"), "Zm8=");
    EXPECT_EQ(b64("foo"), "Zm9v");
    EXPECT_EQ(b64("foob"), "Zm9vYg==");
    EXPECT_EQ(b64("fooba"), "Zm9vYmE=");
    EXPECT_EQ(b64("foobar"), "Zm9vYmFy");
}

TEST(Base64, HighBytesUseBothExtraLetters)
{
    EXPECT_EQ(b64("\xFB\xFF\xBF"), "+/+/");
    EXPECT_EQ(b64("\0\0\0"s), "AAAA");
    EXPECT_EQ(b64("\xFF"), "/w==");
    EXPECT_EQ(b64("\xFF\xFF"), "//8=");
}

TEST(Base64, AppendsAfterExistingBytes)
{
    std::string out = "x:";
    channels::append_base64(out, "foob");
    EXPECT_EQ(out, "x:Zm9vYg==");
}

TEST(Base64, RandomRoundTrip)
{
    std::mt19937 rng(3);
    for (int i = 0; i < 20000; i++) {
        std::string in;
        size_t len = rng() % (i % 100 == 0 ? 2000 : 40);
        for (size_t k = 0; k < len; k++) in.push_back(static_cast<char>(rng() % 256));
        std::string out = b64(in);
        ASSERT_EQ(out.size(), (len + 2) / 3 * 4);
        auto back = json_test::decode_base64(out);
        ASSERT_TRUE(back) << out;
        ASSERT_EQ(*back, in);
    }
}

TEST(AppendUint, Values)
{
    std::string out = "n=";
    channels::append_uint(out, 0);
    EXPECT_EQ(out, "n=0");
    std::mt19937_64 rng(1);
    for (int i = 0; i < 10000; i++) {
        uint64_t v = rng() >> (rng() % 64);
        if (i == 0) v = std::numeric_limits<uint64_t>::max();
        std::string s;
        channels::append_uint(s, v);
        ASSERT_EQ(s, std::to_string(v));
    }
}
