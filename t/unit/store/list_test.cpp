// Channel listings (SPEC §6 ?channels): bytewise id order, prefix, after, limit, paging.
#include <algorithm>
#include <random>
#include <set>

#include "store_harness.h"

namespace storetest {
namespace {

class List : public StoreTest {};

std::vector<std::string> ids_of(const channels::ChannelListing &l)
{
    std::vector<std::string> out;
    for (const auto &r : l.rows) out.push_back(r.id);
    return out;
}

channels::ChannelListing list(Worker &w, std::string_view prefix, std::string_view after,
                              size_t limit)
{
    As as(w);
    return w.store.list(prefix, after, limit);
}

// Ids that share their first 8 bytes (one tree key), prefixes of each other, and bytes on
// either side of the letters.
const std::vector<std::string> kTricky = {
    "abcdefgh",
    "abcdefgh1",
    "abcdefgh0",
    "abcdefg",
    "abcdefgi",
    "a",
    "a.b",
    "ab",
    "a-",
    "a_",
    "b",
    "B",
    "0",
    "~",
    "@",
    "a:b",
    "abcdefghabcdefgh",
    "abcdefghabcdefgg",
};

TEST_F(List, ChannelsComeInBytewiseIdOrder)
{
    TestZone z;
    Worker &w = z.add_worker();
    std::vector<std::string> ids = kTricky;
    std::shuffle(ids.begin(), ids.end(), std::mt19937(3));
    for (const std::string &id : ids) w.publish(id, "m");
    std::sort(ids.begin(), ids.end());
    channels::ChannelListing l = list(w, "", "", 100);
    EXPECT_EQ(ids_of(l), ids);
    EXPECT_FALSE(l.more);
    EXPECT_CONSISTENT(z);
}

TEST_F(List, RowsCarryCountsAndTheNewestId)
{
    TestZone z;
    Worker &w = z.add_worker();
    w.publish("a", "1");
    MessageId newest = w.publish("a", "2").id;
    auto s1 = w.subscribe({"a"});
    auto s2 = w.subscribe({"a", "waited"});
    channels::ChannelListing l = list(w, "", "", 10);
    ASSERT_EQ(ids_of(l), (std::vector<std::string>{"a", "waited"}));
    EXPECT_EQ(l.rows[0].messages, 2u);
    EXPECT_EQ(l.rows[0].subscribers, 2u);
    EXPECT_EQ(l.rows[0].newest, newest);
    EXPECT_EQ(l.rows[1].messages, 0u);
    EXPECT_EQ(l.rows[1].subscribers, 1u);
    EXPECT_EQ(l.rows[1].newest, MessageId{});
    w.remove("a");
    EXPECT_EQ(ids_of(list(w, "", "", 10)), (std::vector<std::string>{"a", "waited"}))
        << "deleted but still held by subscribers: it exists for them";
    s1->close();
    s2->close();
    EXPECT_TRUE(list(w, "", "", 10).rows.empty());
    EXPECT_CONSISTENT(z);
}

// prefix, after and limit against a plain model, over random ids and arguments.
TEST_F(List, PrefixAfterAndLimitAgreeWithAModel)
{
    TestZone::Options o;
    o.bytes = 4 << 20;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::mt19937 rng(17);
    const std::string alphabet = "ab.-_~0Z";
    std::set<std::string> model(kTricky.begin(), kTricky.end());
    for (int i = 0; i < 300; i++) {
        std::string id;
        size_t len = 1 + rng() % 12;
        for (size_t k = 0; k < len; k++) id += alphabet[rng() % alphabet.size()];
        model.insert(id);
    }
    for (const std::string &id : model) w.publish(id, "m");
    std::vector<std::string> all(model.begin(), model.end());
    for (int round = 0; round < 400; round++) {
        std::string prefix = all[rng() % all.size()].substr(0, rng() % 4);
        std::string after = rng() % 3 == 0 ? "" : all[rng() % all.size()].substr(0, 1 + rng() % 10);
        size_t limit = 1 + rng() % 40;
        std::vector<std::string> expected;
        for (const std::string &id : all) {
            if (id.compare(0, prefix.size(), prefix) == 0 && id > after) expected.push_back(id);
        }
        bool more = expected.size() > limit;
        if (more) expected.resize(limit);
        channels::ChannelListing l = list(w, prefix, after, limit);
        ASSERT_EQ(ids_of(l), expected)
            << "prefix \"" << prefix << "\" after \"" << after << "\" limit " << limit;
        ASSERT_EQ(l.more, more) << "prefix \"" << prefix << "\" after \"" << after << "\" limit "
                                << limit;
    }
}

// Paging with after = the last id of the page lists every channel once; a zone of more
// channels than one lock hold examines (1024) is walked in several.
TEST_F(List, PagingVisitsEveryChannelOnce)
{
    TestZone::Options o;
    o.bytes = 8 << 20;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::vector<std::string> ids;
    for (int i = 0; i < 3000; i++) ids.push_back("ch" + std::to_string(i * 7919 % 3000));
    for (const std::string &id : ids) w.publish(id, "m");
    std::sort(ids.begin(), ids.end());
    for (size_t limit : {1, 100, 999, 2999, 3000, 5000}) {
        std::vector<std::string> got;
        std::string after;
        for (int pages = 0; pages < 4000; pages++) {
            channels::ChannelListing l = list(w, "", after, limit);
            for (const std::string &id : ids_of(l)) got.push_back(id);
            if (!l.more) break;
            after = l.rows.back().id;
            if (limit == 1) {  // 3000 pages of one: enough to see it go on; jump near the end
                if (pages == 20) after = ids[2990];
            }
        }
        if (limit == 1) {
            std::vector<std::string> expected(ids.begin(), ids.begin() + 21);
            expected.insert(expected.end(), ids.begin() + 2991, ids.end());
            EXPECT_EQ(got, expected);
        } else {
            EXPECT_EQ(got, ids) << "pages of " << limit;
        }
    }
    // A prefix starts the walk at its first channel.
    channels::ChannelListing with_prefix = list(w, "ch2999", "", 10);
    EXPECT_EQ(ids_of(with_prefix), (std::vector<std::string>{"ch2999"}));
    EXPECT_CONSISTENT(z);
}

TEST_F(List, AnEmptyZoneListsNothing)
{
    TestZone z;
    Worker &w = z.add_worker();
    channels::ChannelListing l = list(w, "", "", 100);
    EXPECT_TRUE(l.rows.empty());
    EXPECT_FALSE(l.more);
    EXPECT_TRUE(list(w, "x", "y", 1).rows.empty());
}

}  // namespace
}  // namespace storetest
