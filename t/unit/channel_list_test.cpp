// Channel ids, event types, percent-decoding, channel lists (README "Directives", "Publishing").
#include "channels/channel_list.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

using channels::ChannelList;
using channels::ListError;
using namespace std::string_literals;

namespace {

const std::string kAllowed =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@~-";

std::string decode(std::string_view in)
{
    std::string out(in.size(), '\0');
    out.resize(channels::percent_decode(in, out.data()));
    return out;
}

std::vector<std::string> ids_of(const ChannelList &l)
{
    return std::vector<std::string>(l.ids.begin(), l.ids.begin() + static_cast<long>(l.count));
}

// Appends values in order; returns the first error.
ListError append_all(ChannelList &l, const std::vector<std::string> &values)
{
    for (const auto &v : values) {
        ListError e = l.append(v);
        if (e != ListError::none) return e;
    }
    return l.finish();
}

std::string numbered_list(size_t n, const char *prefix = "ch")
{
    std::string s;
    for (size_t i = 0; i < n; i++) s += (i ? "," : "") + std::string(prefix) + std::to_string(i);
    return s;
}

}  // namespace

TEST(ChannelId, EveryByteValueAgainstTheAlphabet)
{
    for (int c = 0; c < 256; c++) {
        std::string id(1, static_cast<char>(c));
        bool expect = kAllowed.find(static_cast<char>(c)) != std::string::npos;
        EXPECT_EQ(channels::is_valid_channel_id(id), expect) << "byte " << c;
        // The same byte in the middle of an otherwise valid id.
        EXPECT_EQ(channels::is_valid_channel_id("ab" + id + "cd"), expect) << "byte " << c;
    }
}

TEST(ChannelId, Lengths)
{
    EXPECT_FALSE(channels::is_valid_channel_id(""));
    EXPECT_TRUE(channels::is_valid_channel_id("a"));
    EXPECT_TRUE(channels::is_valid_channel_id(kAllowed));
    EXPECT_TRUE(channels::is_valid_channel_id(std::string(255, 'x')));
    EXPECT_FALSE(channels::is_valid_channel_id(std::string(256, 'x')));
    EXPECT_FALSE(channels::is_valid_channel_id(std::string(100000, 'x')));
}

TEST(ChannelId, TypicalRejects)
{
    const std::string bad[] = {"a b", "a/b", "a,b", "a%2Cb", "caf\xC3\xA9", "a\0b"s, "a\n", "+"};
    for (const std::string &s : bad) {
        EXPECT_FALSE(channels::is_valid_channel_id(s)) << s;
    }
}

TEST(EventType, Lengths)
{
    EXPECT_FALSE(channels::is_valid_event_type(""));
    EXPECT_TRUE(channels::is_valid_event_type("x"));
    EXPECT_TRUE(channels::is_valid_event_type(std::string(64, 'e')));
    EXPECT_FALSE(channels::is_valid_event_type(std::string(65, 'e')));
}

TEST(EventType, RejectsCrLfNulAnywhere)
{
    for (const std::string &bad : {"\r"s, "\n"s, "\0"s}) {
        EXPECT_FALSE(channels::is_valid_event_type(bad));
        EXPECT_FALSE(channels::is_valid_event_type(bad + "abc"));
        EXPECT_FALSE(channels::is_valid_event_type("ab" + bad + "c"));
        EXPECT_FALSE(channels::is_valid_event_type("abc" + bad));
        EXPECT_FALSE(channels::is_valid_event_type(std::string(63, 'e') + bad));
    }
}

TEST(EventType, AllowsOtherBytes)
{
    for (const char *ok : {"user.joined", "a b", " lead", "x:y", "\t", "\x7f", "caf\xC3\xA9", "\xFF"}) {
        EXPECT_TRUE(channels::is_valid_event_type(ok)) << ok;
    }
}

TEST(PercentDecode, Examples)
{
    EXPECT_EQ(decode(""), "");
    EXPECT_EQ(decode("abc"), "abc");
    EXPECT_EQ(decode("a%2Cb"), "a,b");
    EXPECT_EQ(decode("a%2cb"), "a,b");
    EXPECT_EQ(decode("%41%62%7E"), "Ab~");
    EXPECT_EQ(decode("%00"), "\0"s);
    EXPECT_EQ(decode("%ff%FF"), "\xFF\xFF");
    EXPECT_EQ(decode("a+b"), "a+b");
}

TEST(PercentDecode, EscapeCutByTheEndOfTheViewIsLiteral)
{
    // The bytes after the view would complete the escape: they must not be read.
    const std::string buf = "a%41";
    EXPECT_EQ(decode(std::string_view(buf).substr(0, 3)), "a%4");
    EXPECT_EQ(decode(std::string_view(buf).substr(0, 2)), "a%");
}

TEST(PercentDecode, DecodesOnlyOnce)
{
    EXPECT_EQ(decode("%2541"), "%41");
    EXPECT_EQ(decode("%252C"), "%2C");
    EXPECT_EQ(decode(decode("%252C")), ",");
}

TEST(PercentDecode, InvalidEscapesAreCopiedLiterally)
{
    EXPECT_EQ(decode("%"), "%");
    EXPECT_EQ(decode("a%"), "a%");
    EXPECT_EQ(decode("%4"), "%4");
    EXPECT_EQ(decode("a%4"), "a%4");
    EXPECT_EQ(decode("%zz"), "%zz");
    EXPECT_EQ(decode("%4g"), "%4g");
    EXPECT_EQ(decode("%g4"), "%g4");
    EXPECT_EQ(decode("% 41"), "% 41");
    EXPECT_EQ(decode("%%41"), "%A");
    EXPECT_EQ(decode("%%%"), "%%%");
    EXPECT_EQ(decode("100%"), "100%");
    EXPECT_EQ(decode("%-1"), "%-1");
}

TEST(PercentDecode, EveryByteBothHexCases)
{
    const char *hex_upper = "0123456789ABCDEF", *hex_lower = "0123456789abcdef";
    for (int c = 0; c < 256; c++) {
        for (const char *hex : {hex_upper, hex_lower}) {
            std::string esc = {'x', '%', hex[c >> 4], hex[c & 15], 'y'};
            EXPECT_EQ(decode(esc), "x"s + static_cast<char>(c) + "y") << esc;
        }
    }
}

TEST(PercentDecode, InPlace)
{
    std::string s = "ab%2Ccd%zz%41%";
    s.resize(channels::percent_decode(s, s.data()));
    EXPECT_EQ(s, "ab,cd%zzA%");
}

TEST(PercentDecode, RandomMatchesSimpleReference)
{
    // Reference: a byte-by-byte decoder written the obvious way.
    auto reference = [](const std::string &in) {
        auto hv = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (c | 0x20) - 'a' + 10;
            return -1;
        };
        std::string out;
        for (size_t i = 0; i < in.size(); i++) {
            if (in[i] == '%' && i + 2 < in.size() && hv(in[i + 1]) >= 0 && hv(in[i + 2]) >= 0) {
                out.push_back(static_cast<char>(hv(in[i + 1]) * 16 + hv(in[i + 2])));
                i += 2;
            } else {
                out.push_back(in[i]);
            }
        }
        return out;
    };
    std::mt19937 rng(11);
    const std::string alphabet = "%%%%0129aAfFgG,xz";
    for (int i = 0; i < 20000; i++) {
        std::string in;
        size_t len = rng() % 24;
        for (size_t k = 0; k < len; k++) in.push_back(alphabet[rng() % alphabet.size()]);
        ASSERT_EQ(decode(in), reference(in)) << in;
        std::string inplace = in;
        inplace.resize(channels::percent_decode(inplace, inplace.data()));
        ASSERT_EQ(inplace, reference(in)) << in;
    }
}

TEST(ChannelList, SingleAndSeveral)
{
    ChannelList l;
    EXPECT_EQ(l.append("news"), ListError::none);
    EXPECT_EQ(l.finish(), ListError::none);
    EXPECT_EQ(ids_of(l), (std::vector<std::string>{"news"}));

    ChannelList m;
    EXPECT_EQ(m.append("a,b.c,d:e@f~g-h_i"), ListError::none);
    EXPECT_EQ(ids_of(m), (std::vector<std::string>{"a", "b.c", "d:e@f~g-h_i"}));
}

TEST(ChannelList, ViewsPointIntoTheCallersBuffer)
{
    std::string value = "alpha,beta";
    ChannelList l;
    ASSERT_EQ(l.append(value), ListError::none);
    ASSERT_EQ(l.count, 2u);
    EXPECT_EQ(l.ids[0].data(), value.data());
    EXPECT_EQ(l.ids[1].data(), value.data() + 6);
}

TEST(ChannelList, EmptyValueIsSkipped)
{
    ChannelList l;
    EXPECT_EQ(l.append(""), ListError::none);
    EXPECT_EQ(l.count, 0u);
    EXPECT_EQ(l.finish(), ListError::no_channel);
    const std::vector<std::string> values = {"", "a", ""};  // must outlive the views in l
    EXPECT_EQ(append_all(l, values), ListError::none);
    EXPECT_EQ(ids_of(l), (std::vector<std::string>{"a"}));
}

TEST(ChannelList, EmptyItemsAreErrors)
{
    for (const char *v : {",", ",,", "a,,b", ",a", "a,", "a,b,", ",a,b", "a,,", ",,a"}) {
        ChannelList l;
        EXPECT_EQ(l.append(v), ListError::empty_item) << v;
    }
}

TEST(ChannelList, DuplicatesMergeWithinAndAcrossAppends)
{
    ChannelList l;
    EXPECT_EQ(l.append("a,a"), ListError::none);
    EXPECT_EQ(ids_of(l), (std::vector<std::string>{"a"}));
    EXPECT_EQ(l.append("b,a,b"), ListError::none);
    EXPECT_EQ(l.append("a"), ListError::none);
    EXPECT_EQ(ids_of(l), (std::vector<std::string>{"a", "b"}));
    // Prefixes are different ids.
    EXPECT_EQ(l.append("ab,ba"), ListError::none);
    EXPECT_EQ(ids_of(l), (std::vector<std::string>{"a", "b", "ab", "ba"}));
}

TEST(ChannelList, SixtyFourAllowedSixtyFiveNot)
{
    // The list holds views: every value must outlive it.
    const std::string sixty_four = numbered_list(64), sixty_five = numbered_list(65);
    ChannelList ok;
    EXPECT_EQ(ok.append(sixty_four), ListError::none);
    EXPECT_EQ(ok.count, 64u);
    EXPECT_EQ(ok.ids[63], "ch63");

    ChannelList over;
    EXPECT_EQ(over.append(sixty_five), ListError::too_many);
}

TEST(ChannelList, DuplicatesDoNotCountTowardTheLimit)
{
    const std::string list = numbered_list(64), twice = list + "," + list + ",ch0,ch63";
    ChannelList l;
    EXPECT_EQ(l.append(twice), ListError::none);
    EXPECT_EQ(l.count, 64u);
    EXPECT_EQ(l.append(list), ListError::none);  // again, in a second argument
    EXPECT_EQ(l.count, 64u);
    EXPECT_EQ(l.append("ch64"), ListError::too_many);
}

TEST(ChannelList, LimitCountsAcrossAppends)
{
    const std::string forty = numbered_list(40, "a"), twenty_four = numbered_list(24, "b");
    ChannelList l;
    EXPECT_EQ(l.append(forty), ListError::none);
    EXPECT_EQ(l.append(twenty_four), ListError::none);
    EXPECT_EQ(l.count, 64u);
    EXPECT_EQ(l.append("c"), ListError::too_many);
}

TEST(ChannelList, IdLengthLimit)
{
    const std::string longest = "a," + std::string(255, 'x');
    ChannelList l;
    EXPECT_EQ(l.append(longest), ListError::none);
    EXPECT_EQ(l.ids[1].size(), 255u);
    ChannelList m;
    EXPECT_EQ(m.append("a," + std::string(256, 'x') + ",b"), ListError::too_long);
}

TEST(ChannelList, BadCharacters)
{
    const std::string bad[] = {"a b", "a,b/c", "a%2Cb", "caf\xC3\xA9", "a\0b"s, "a;b", "a|b", "a\r\n"};
    for (const std::string &v : bad) {
        ChannelList l;
        EXPECT_EQ(l.append(v), ListError::bad_char) << v;
    }
}

TEST(ChannelList, FirstErrorWins)
{
    ChannelList a;
    EXPECT_EQ(a.append("a b,,c"), ListError::bad_char);
    ChannelList b;
    EXPECT_EQ(b.append(",a b"), ListError::empty_item);
    ChannelList c;
    EXPECT_EQ(c.append(std::string(300, 'x') + ",a b"), ListError::too_long);
    ChannelList d;
    EXPECT_EQ(d.append(numbered_list(64) + ",new,,"), ListError::too_many);
}

TEST(ChannelList, DecodedCommaSplits)
{
    // README "sse_channel": "?ch=a%2Cb" as browsers encode it.
    std::string value = decode("a%2Cb%2ca");
    ChannelList l;
    EXPECT_EQ(l.append(value), ListError::none);
    EXPECT_EQ(ids_of(l), (std::vector<std::string>{"a", "b"}));
}

TEST(ChannelList, RandomMatchesReference)
{
    std::mt19937 rng(99);
    const std::vector<std::string> pieces = {"a", "b", "c", "ab", "x.y", "", " ", "%", "q"};
    for (int iter = 0; iter < 5000; iter++) {
        std::vector<std::string> values(1 + rng() % 3);
        for (auto &v : values) {
            size_t items = rng() % 4;
            for (size_t k = 0; k < items; k++) {
                v += (k ? "," : "") + pieces[rng() % pieces.size()];
            }
        }
        // Reference: the rules spelled out with a vector.
        std::vector<std::string> want;
        ListError want_err = ListError::none;
        for (const auto &v : values) {
            if (v.empty() || want_err != ListError::none) continue;
            size_t start = 0;
            for (;;) {
                size_t comma = v.find(',', start);
                std::string item = v.substr(start, comma == std::string::npos ? comma : comma - start);
                if (item.empty()) { want_err = ListError::empty_item; break; }
                if (item.find_first_not_of(kAllowed) != std::string::npos) {
                    want_err = ListError::bad_char;
                    break;
                }
                if (std::find(want.begin(), want.end(), item) == want.end()) want.push_back(item);
                if (comma == std::string::npos) break;
                start = comma + 1;
            }
        }
        if (want_err == ListError::none && want.empty()) want_err = ListError::no_channel;
        ChannelList l;
        ASSERT_EQ(append_all(l, values), want_err);
        if (want_err == ListError::none) {
            ASSERT_EQ(ids_of(l), want);
        }
    }
}

TEST(Describe, OneShortLinePerError)
{
    const ListError errs[] = {ListError::empty_item, ListError::too_long, ListError::bad_char,
                              ListError::too_many, ListError::no_channel};
    std::vector<std::string> seen;
    for (ListError e : errs) {
        std::string d(channels::describe(e));
        EXPECT_FALSE(d.empty());
        EXPECT_LT(d.size(), 100u) << d;
        EXPECT_EQ(d.find_first_of("\r\n"s + '\0'), std::string::npos) << d;
        EXPECT_EQ(std::find(seen.begin(), seen.end(), d), seen.end()) << "repeated: " << d;
        seen.push_back(d);
    }
    EXPECT_EQ(channels::describe(ListError::bad_char),
              "invalid channel id: character outside A-Z a-z 0-9 _ . : @ ~ -");
    EXPECT_NE(channels::describe(ListError::too_long).find("255"), std::string_view::npos);
    EXPECT_NE(channels::describe(ListError::too_many).find("64"), std::string_view::npos);
}
