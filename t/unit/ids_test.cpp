// Message ids: text form, strict parsing, next_id monotonicity (README "Publishing").
#include "channels/ids.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>

using channels::MessageId;

namespace {

constexpr uint64_t kMaxMs = (uint64_t{1} << 63) - 1;
constexpr uint32_t kMaxSeq = std::numeric_limits<uint32_t>::max();

std::string fmt(MessageId id)
{
    char buf[channels::kMaxIdText];
    return std::string(buf, channels::format_id(id, buf));
}

}  // namespace

TEST(FormatId, Examples)
{
    EXPECT_EQ(fmt({0, 0}), "0-0");
    EXPECT_EQ(fmt({1732290000123, 0}), "1732290000123-0");
    EXPECT_EQ(fmt({10, 7}), "10-7");
    EXPECT_EQ(fmt({kMaxMs, kMaxSeq}), "9223372036854775807-4294967295");
}

TEST(FormatId, LongestFormFillsBufferExactlyAndNoMore)
{
    char buf[channels::kMaxIdText + 8];
    std::memset(buf, 'Z', sizeof buf);
    MessageId id{std::numeric_limits<uint64_t>::max(), kMaxSeq};
    size_t n = channels::format_id(id, buf);
    EXPECT_EQ(n, channels::kMaxIdText);
    EXPECT_EQ(std::string(buf, n), "18446744073709551615-4294967295");
    for (size_t i = n; i < sizeof buf; i++) EXPECT_EQ(buf[i], 'Z') << "wrote past the end at " << i;
}

// The formatter keeps the last ms's digits: ids in a row, with the ms repeating, growing a
// digit and going back, write what format_id() writes.
TEST(IdFormatter, MatchesFormatId)
{
    channels::IdFormatter ids;
    const MessageId row[] = {{1732290000123, 0}, {1732290000123, 1}, {1732290000123, 10}, {1732290000124, 0},
                             {9, 99},           {10, 0},            {10, 1},             {0, 0},
                             {kMaxMs, kMaxSeq}, {kMaxMs, 0},        {1732290000123, 7}};
    for (const MessageId &id : row) {
        char buf[channels::kMaxIdText];
        size_t n = ids.format(id, buf);
        EXPECT_EQ(std::string(buf, n), fmt(id));
        EXPECT_EQ(ids.size(id), channels::id_text_size(id));
        EXPECT_EQ(ids.size(id), n);
    }
}

TEST(ParseId, AcceptsCanonicalForms)
{
    auto a = channels::parse_id("0-0");
    ASSERT_TRUE(a);
    EXPECT_EQ(*a, (MessageId{0, 0}));
    auto b = channels::parse_id("1732290000123-42");
    ASSERT_TRUE(b);
    EXPECT_EQ(*b, (MessageId{1732290000123, 42}));
    auto c = channels::parse_id("9223372036854775807-4294967295");
    ASSERT_TRUE(c);
    EXPECT_EQ(*c, (MessageId{kMaxMs, kMaxSeq}));
}

TEST(ParseId, AcceptsLeadingZerosByValue)
{
    auto a = channels::parse_id("007-01");
    ASSERT_TRUE(a);
    EXPECT_EQ(*a, (MessageId{7, 1}));
    // Many leading zeros do not count as overflow: the value is compared, not the length.
    auto b = channels::parse_id(std::string(40, '0') + "9223372036854775807-" + std::string(30, '0'));
    ASSERT_TRUE(b);
    EXPECT_EQ(*b, (MessageId{kMaxMs, 0}));
}

TEST(ParseId, RejectsMalformed)
{
    using namespace std::string_literals;
    const std::string bad[] = {
        "", "-", "1", "12", "1-", "-1", "--", "1--2", "1-2-3", "1-2-", "-1-2",
        "+1-2", "1-+2", "1--", " 1-2", "1-2 ", "1 -2", "1- 2", "1-2\n", "\t1-2",
        "1-2x", "x1-2", "1x-2", "1.0-2", "1-2.0", "0x1-2", "1e3-0", "1_000-0",
        "1-2\0"s, "\0"s "1-2", "1\0-2"s, "\xEF\xBC\x91-2", "1,2", "1:2", "a-b",
    };
    for (const auto &s : bad) EXPECT_FALSE(channels::parse_id(s)) << "accepted: " << s;
}

TEST(ParseId, RejectsOverflow)
{
    const char *bad[] = {
        "9223372036854775808-0",   // 2^63
        "18446744073709551615-0",  // 2^64 - 1
        "18446744073709551616-0",  // 2^64: would wrap to 0
        "36893488147419103232-0",  // 2^65: would wrap to 0
        "99999999999999999999999999-0",
        "0-4294967296",  // 2^32
        "0-8589934592",  // 2^33
        "0-18446744073709551616",
        "0-99999999999999999999",
    };
    for (const char *s : bad) EXPECT_FALSE(channels::parse_id(s)) << "accepted: " << s;
}

TEST(ParseId, RoundTripsWithFormatId)
{
    std::mt19937_64 rng(20241123);
    for (int i = 0; i < 20000; i++) {
        // Mix small, clock-like and huge values, including both range ends.
        uint64_t ms = rng() >> (rng() % 64);
        ms &= kMaxMs;
        auto seq = static_cast<uint32_t>(rng() >> (32 + rng() % 32));
        if (i == 0) ms = 0, seq = 0;
        if (i == 1) ms = kMaxMs, seq = kMaxSeq;
        MessageId id{ms, seq};
        std::string text = fmt(id);
        auto back = channels::parse_id(text);
        ASSERT_TRUE(back) << text;
        EXPECT_EQ(*back, id) << text;
        EXPECT_EQ(fmt(*back), text);
    }
}

TEST(MessageIdOrder, ComparesMsThenSeq)
{
    MessageId a{5, 9}, b{6, 0}, c{6, 1};
    EXPECT_TRUE(a < b);
    EXPECT_TRUE(b < c);
    EXPECT_TRUE(a < c);
    EXPECT_FALSE(b < a);
    EXPECT_TRUE(a <= a);
    EXPECT_TRUE(c > b);
    EXPECT_TRUE(c >= c);
    EXPECT_TRUE(a != b);
    EXPECT_TRUE((MessageId{6, 1}) == c);
}

TEST(NextId, ClockAheadStartsNewMillisecondAtZero)
{
    EXPECT_EQ(channels::next_id({100, 7}, 101), (MessageId{101, 0}));
    EXPECT_EQ(channels::next_id({0, 0}, 1732290000123), (MessageId{1732290000123, 0}));
}

TEST(NextId, SameMillisecondBumpsCounter)
{
    EXPECT_EQ(channels::next_id({100, 7}, 100), (MessageId{100, 8}));
    // The very first id of a fresh zone at clock 0 must still exceed {0, 0}.
    EXPECT_EQ(channels::next_id({0, 0}, 0), (MessageId{0, 1}));
}

TEST(NextId, ClockSetBackKeepsIncreasing)
{
    EXPECT_EQ(channels::next_id({1000, 3}, 10), (MessageId{1000, 4}));
    EXPECT_EQ(channels::next_id({1000, 3}, 0), (MessageId{1000, 4}));
}

TEST(NextId, CounterOverflowAdvancesMs)
{
    EXPECT_EQ(channels::next_id({1000, kMaxSeq}, 1000), (MessageId{1001, 0}));
    EXPECT_EQ(channels::next_id({1000, kMaxSeq}, 5), (MessageId{1001, 0}));
    EXPECT_EQ(channels::next_id({1000, kMaxSeq}, 1001), (MessageId{1001, 0}));
}

TEST(NextId, AbsurdClockStaysParseable)
{
    MessageId n = channels::next_id({5, 0}, std::numeric_limits<uint64_t>::max());
    EXPECT_GT(n, (MessageId{5, 0}));
    EXPECT_TRUE(channels::parse_id(fmt(n))) << fmt(n);
    // At the very top nothing larger parses: never go backwards.
    MessageId top{kMaxMs, kMaxSeq};
    MessageId after_top = channels::next_id(top, std::numeric_limits<uint64_t>::max());
    EXPECT_GE(after_top, top);
    EXPECT_TRUE(channels::parse_id(fmt(after_top))) << fmt(after_top);
    // One below the top still strictly increases.
    EXPECT_EQ(channels::next_id({kMaxMs - 1, kMaxSeq}, 0), (MessageId{kMaxMs, 0}));
}

TEST(NextId, RandomClockSequenceIsStrictlyIncreasing)
{
    std::mt19937_64 rng(7);
    MessageId last{0, 0};
    uint64_t clock = 1732290000000;
    for (int i = 0; i < 100000; i++) {
        // Mostly steady, sometimes jumping forward, sometimes set back by a lot.
        switch (rng() % 8) {
        case 0: clock += rng() % 1000; break;
        case 1: clock -= std::min<uint64_t>(clock, rng() % 100000); break;
        default: clock += rng() % 2; break;
        }
        MessageId next = channels::next_id(last, clock);
        ASSERT_GT(next, last) << "at step " << i;
        ASSERT_GE(next.ms, std::min(clock, kMaxMs));
        // Never jump past the clock unless the last id was already at or past it.
        if (clock > last.ms) {
            ASSERT_EQ(next, (MessageId{clock, 0}));
        }
        last = next;
    }
}
