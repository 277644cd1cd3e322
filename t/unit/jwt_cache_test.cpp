// The per-worker cache of verified tokens: hits, exp, key sets, LRU bounds.
#include "channels/jwt_cache.h"

#include <gtest/gtest.h>

#include <string>

using channels::Claims;
using channels::TokenCache;

namespace {

TokenCache::Digest digest(int n)
{
    TokenCache::Digest d{};
    d[0] = static_cast<unsigned char>(n);
    d[1] = static_cast<unsigned char>(n >> 8);
    d[31] = 0x5a;
    return d;
}

Claims claims(const std::string &sub, uint64_t exp_ms = 0)
{
    Claims c;
    c.has_sub = true;
    c.sub = sub;
    c.has_exp = exp_ms != 0;
    c.exp_ms = exp_ms;
    c.subscribe = {"user." + sub + ".*"};
    return c;
}

}  // namespace

TEST(TokenCache, FindsWhatWasVerifiedBySameKeySet)
{
    TokenCache cache(10, 1 << 20);
    EXPECT_EQ(cache.find(digest(1), 1, 0), nullptr);
    const Claims *kept = cache.insert(digest(1), 1, claims("42"), 0);
    ASSERT_NE(kept, nullptr);
    EXPECT_EQ(kept->sub, "42");
    const Claims *hit = cache.find(digest(1), 1, 5);
    ASSERT_NE(hit, nullptr);
    EXPECT_EQ(hit->subscribe.front(), "user.42.*");
    EXPECT_EQ(cache.find(digest(1), 2, 5), nullptr);   // another key set did not verify it
    EXPECT_EQ(cache.find(digest(2), 1, 5), nullptr);
    EXPECT_EQ(cache.size(), 1u);
}

TEST(TokenCache, EntriesLeaveAtExp)
{
    TokenCache cache(10, 1 << 20);
    ASSERT_NE(cache.insert(digest(1), 1, claims("a", 1000), 0), nullptr);
    EXPECT_NE(cache.find(digest(1), 1, 999), nullptr);
    EXPECT_EQ(cache.find(digest(1), 1, 1000), nullptr);
    EXPECT_EQ(cache.size(), 0u);
    EXPECT_EQ(cache.bytes(), 0u);
    Claims late = claims("b", 1000);
    EXPECT_EQ(cache.insert(digest(2), 1, std::move(late), 1000), nullptr);
    EXPECT_EQ(late.sub, "b");   // not kept: left to the caller
}

TEST(TokenCache, LeastRecentlyUsedGoesFirst)
{
    TokenCache cache(3, 1 << 20);
    for (int i = 0; i < 3; i++) cache.insert(digest(i), 1, claims(std::to_string(i)), 0);
    ASSERT_NE(cache.find(digest(0), 1, 0), nullptr);   // 0 is now the most recent
    cache.insert(digest(3), 1, claims("3"), 0);
    EXPECT_EQ(cache.size(), 3u);
    EXPECT_EQ(cache.find(digest(1), 1, 0), nullptr);
    EXPECT_NE(cache.find(digest(0), 1, 0), nullptr);
    EXPECT_NE(cache.find(digest(2), 1, 0), nullptr);
    EXPECT_NE(cache.find(digest(3), 1, 0), nullptr);
}

TEST(TokenCache, BytesAreBounded)
{
    Claims big = claims("x");
    big.subscribe.assign(100, std::string(200, 'p'));
    size_t one = big.footprint();
    TokenCache cache(1000, one * 3);
    for (int i = 0; i < 50; i++) {
        Claims c = big;
        cache.insert(digest(i), 1, std::move(c), 0);
        ASSERT_LE(cache.bytes(), one * 3);
    }
    EXPECT_GE(cache.size(), 1u);
    EXPECT_LE(cache.size(), 3u);
    EXPECT_NE(cache.find(digest(49), 1, 0), nullptr);
    TokenCache tiny(1000, 100);
    Claims c = big;
    EXPECT_EQ(tiny.insert(digest(1), 1, std::move(c), 0), nullptr);
    EXPECT_EQ(c.subscribe.size(), 100u);
}

TEST(TokenCache, ReinsertReplacesAndClearEmpties)
{
    TokenCache cache(10, 1 << 20);
    cache.insert(digest(1), 1, claims("old"), 0);
    cache.insert(digest(1), 1, claims("new"), 0);
    EXPECT_EQ(cache.size(), 1u);
    EXPECT_EQ(cache.find(digest(1), 1, 0)->sub, "new");
    cache.clear();
    EXPECT_EQ(cache.size(), 0u);
    EXPECT_EQ(cache.bytes(), 0u);
    EXPECT_EQ(cache.find(digest(1), 1, 0), nullptr);
}
