// The publish side of the store: ids, history, ttl, eviction, message sizes, deletes,
// Redis ingest, and the idle-channel cap (SPEC §2, §3, §9).
#include <algorithm>
#include <map>
#include <random>

#include "store_harness.h"

namespace storetest {
namespace {

using namespace channels::shm;
using Status = PublishCall::Status;

constexpr size_t kEntryHead = offsetof(Entry, bytes);

class Publish : public StoreTest {};

TEST_F(Publish, IdsFollowTheClockAndCountWithinOneMillisecond)
{
    TestZone z;
    Worker &w = z.add_worker();
    uint64_t t0 = ngxstub::time_ms();
    // The zone starts at {now, 0}: the first id of the same ms counts on from it.
    EXPECT_EQ(w.publish("a", "1").id, (MessageId{t0, 1}));
    EXPECT_EQ(w.publish("b", "2").id, (MessageId{t0, 2}));
    ngxstub::advance_ms(5);
    EXPECT_EQ(w.publish("a", "3").id, (MessageId{t0 + 5, 0}));
    EXPECT_EQ(w.publish("c", "4").id, (MessageId{t0 + 5, 1}));
    EXPECT_EQ(z.sh()->last_id, (MessageId{t0 + 5, 1}));
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, IdsNeverGoBackWhenTheClockIsSetBack)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    ngxstub::advance_ms(10000);
    MessageId last = a.publish("x", "before").id;
    ngxstub::advance_ms(uint64_t(-60000));  // a minute back
    std::vector<MessageId> ids;
    for (int i = 0; i < 20; i++)
        ids.push_back((i % 2 ? a : b).publish(i % 3 ? "x" : "y", "after").id);
    for (MessageId id : ids) {
        EXPECT_GT(id, last);
        EXPECT_EQ(id.ms, last.ms) << "the clock is behind: the counter moves, not the time";
        last = id;
    }
    ngxstub::advance_ms(120000);  // past the old time again
    MessageId later = a.publish("x", "later").id;
    EXPECT_GT(later, last);
    EXPECT_EQ(later.seq, 0u);
    EXPECT_EQ(later.ms, ngxstub::time_ms());
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, AnswerCountsSubscribersAndRetainedMessages)
{
    TestZone::Options o;
    o.history = 3;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s1 = a.subscribe({"news"});
    auto s2 = a.subscribe({"news", "other"});
    auto s3 = b.subscribe({"news"});
    Published p;
    for (int i = 0; i < 5; i++) p = b.publish("news", "m");
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p.subscribers, 3u);
    EXPECT_EQ(p.messages, 3u);
    s2->close();
    EXPECT_EQ(a.publish("news", "m").subscribers, 2u);
    EXPECT_EQ(a.publish("other", "m").subscribers, 0u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, HistoryKeepsTheNewestPerChannel)
{
    TestZone::Options o;
    o.history = 3;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::vector<MessageId> ids;
    for (int i = 0; i < 7; i++) {
        ids.push_back(w.publish("a", "a" + std::to_string(i)).id);
        w.publish("b", "b" + std::to_string(i));
    }
    ChannelInfo info = w.info("a");
    EXPECT_TRUE(info.exists);
    EXPECT_EQ(info.messages, 3u);
    EXPECT_EQ(info.newest, ids[6]);
    EXPECT_EQ(info.oldest, ids[4]);
    EXPECT_EQ(z.channel("a")->trimmed_upto.get(), ids[3]);
    auto sub = w.subscribe({"a"}, first_oldest());
    EXPECT_EQ(sub->first.data(), (std::vector<std::string>{"a4", "a5", "a6"}));
    EXPECT_EQ(z.sh()->nmessages, 6u);
    EXPECT_EQ(z.sh()->evicted, 0u) << "trimming to history is not eviction";
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, TtlExpiresAtExactlyPublishTimePlusTtl)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    w.publish("a", "old");
    ngxstub::advance_ms(400);
    MessageId young = w.publish("a", "young").id;
    ngxstub::advance_ms(599);  // old is 999 ms old
    EXPECT_EQ(w.info("a").messages, 2u);
    ngxstub::advance_ms(1);  // 1000 ms: gone
    ChannelInfo info = w.info("a");
    EXPECT_EQ(info.messages, 1u);
    EXPECT_EQ(info.oldest, young);
    EXPECT_EQ(z.sh()->evicted, 0u) << "expiry is not eviction";
    ngxstub::advance_ms(400);
    w.collect();
    EXPECT_FALSE(w.info("a").exists) << "a channel with no message and no subscriber goes";
    EXPECT_EQ(z.nchannels(), 0u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, CollectExpiresALargeBacklogInBoundedRounds)
{
    TestZone::Options o;
    o.bytes = 8 << 20;
    o.ttl_ms = 1000;
    o.history = 100000;
    TestZone z(o);
    Worker &w = z.add_worker();
    for (int i = 0; i < 9000; i++) w.publish("c" + std::to_string(i % 7), "x");
    size_t baseline_channels = z.nchannels();
    EXPECT_EQ(baseline_channels, 7u);
    ngxstub::advance_ms(1000);
    w.collect();  // 1024 per lock hold, rounds between other events
    EXPECT_EQ(z.sh()->nmessages, 0u);
    EXPECT_EQ(z.nchannels(), 0u);
    EXPECT_EQ(z.sh()->message_bytes, ngxstub::slab_bytes(sizeof(channels::shm::WorkerRecord)))
        << "only the worker's record";
    EXPECT_CONSISTENT(z);
}

// The zone is full: every publish evicts the oldest messages of the whole zone, whatever
// their channel, so what is retained is always the newest run of what was published.
TEST_F(Publish, EvictionTakesTheOldestOfTheZoneFirst)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    o.history = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::mt19937 rng(11);
    std::vector<std::pair<std::string, MessageId>> published;
    for (int i = 0; i < 600; i++) {
        std::string ch = "c" + std::to_string(rng() % 5);
        size_t size = rng() % 3 == 0 ? 1500 : rng() % 200;
        Published p = w.publish(ch, std::string(size, 'd'));
        ASSERT_TRUE(p.ok()) << i;
        published.push_back({ch, p.id});
    }
    ASSERT_GT(z.sh()->evicted, 0u) << "the zone never filled: the test proves nothing";
    std::vector<MessageId> retained;
    for (int c = 0; c < 5; c++) {
        auto sub = w.subscribe({"c" + std::to_string(c)}, first_oldest());
        std::vector<Msg> all = sub->first.items;
        std::vector<Msg> rest = sub->replay_all();
        all.insert(all.end(), rest.begin(), rest.end());
        for (const Msg &m : all) retained.push_back(m.id);
    }
    std::sort(retained.begin(), retained.end());
    ASSERT_FALSE(retained.empty());
    size_t first = published.size() - retained.size();
    for (size_t i = 0; i < retained.size(); i++) {
        EXPECT_EQ(retained[i], published[first + i].second)
            << "retained messages are not the newest run";
    }
    EXPECT_EQ(z.sh()->evicted, first);
    EXPECT_EQ(z.sh()->published, published.size());
    EXPECT_LE(z.sh()->message_bytes, z.sh()->message_budget + 512) << "messages past their budget";
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, TooLargeForAnEmptyZoneFailsWithoutEvictingAnything)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    TestZone z(o);
    Worker &w = z.add_worker();
    for (int i = 0; i < 20; i++) ASSERT_TRUE(w.publish("keep", "m" + std::to_string(i)).ok());
    size_t budget = z.sh()->message_budget;
    Published p = w.publish("big", std::string(budget, 'x'));
    EXPECT_EQ(p.status, Status::too_large);
    EXPECT_EQ(z.sh()->evicted, 0u);
    EXPECT_EQ(w.info("keep").messages, 20u);
    EXPECT_FALSE(w.info("big").exists);
    EXPECT_EQ(z.channel("big"), nullptr) << "the channel of a refused publish stays behind";
    EXPECT_CONSISTENT(z);
}

// The largest publish an empty zone takes, found by trying.
size_t largest_fitting(const TestZone::Options &o)
{
    size_t lo = 0, hi = o.bytes;
    while (lo + 1 < hi) {
        size_t mid = lo + (hi - lo) / 2;
        TestZone z(o);
        Worker &w = z.add_worker();
        (w.publish("big", std::string(mid, 'x')).ok() ? lo : hi) = mid;
    }
    return lo;
}

// SPEC §2: a publish fails only when the message cannot fit even in an empty zone. So
// whatever the zone holds — a full log, a lagging worker's unread entries, idle channels
// of subscribers up to their cap (SPEC §9: subscribers never make a publish fail) — the
// largest message an empty zone takes is taken.
TEST_F(Publish, WhatFitsAnEmptyZoneFitsAFullOne)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    o.history = 5;
    size_t largest = largest_fitting(o);
    ASSERT_GT(largest, o.bytes / 2);
    {
        TestZone z(o);
        Worker &w = z.add_worker();
        for (int i = 0; i < 300; i++)
            ASSERT_TRUE(w.publish("c" + std::to_string(i % 9), std::string(100, 'm')).ok());
        EXPECT_TRUE(w.publish("big", std::string(largest, 'x')).ok()) << "a zone full of messages";
        EXPECT_CONSISTENT(z);
    }
    {
        TestZone z(o);
        Worker &w = z.add_worker();
        Worker &lagging = z.add_worker();
        auto sub = lagging.subscribe({"c0", "c1"});
        for (int i = 0; i < 300; i++)
            ASSERT_TRUE(w.publish("c" + std::to_string(i % 2), std::string(100, 'm')).ok());
        EXPECT_TRUE(w.publish("big", std::string(largest, 'x')).ok())
            << "a lagging worker's unread entries";
        EXPECT_CONSISTENT(z);
    }
    {
        TestZone z(o);
        Worker &w = z.add_worker();
        std::vector<std::unique_ptr<Sub>> waiting;
        for (int i = 0;; i++) {
            auto s = w.subscribe({"idle" + std::to_string(i)});
            if (s->status != SubscribeStatus::ok) break;
            waiting.push_back(std::move(s));
        }
        ASSERT_GT(waiting.size(), 10u);
        for (int i = 0; i < 300; i++)
            ASSERT_TRUE(w.publish("c" + std::to_string(i % 9), std::string(100, 'm')).ok());
        EXPECT_TRUE(w.publish("big", std::string(largest, 'x')).ok())
            << "subscribers' idle channels at their cap made a publish fail (SPEC §9); idle "
            << z.sh()->idle_bytes << " of " << z.sh()->idle_cap << ", budget "
            << z.sh()->message_budget;
        EXPECT_CONSISTENT(z);
    }
}

TEST_F(Publish, EventAndContentTypeAreKept)
{
    TestZone z;
    Worker &w = z.add_worker();
    w.publish("a", "", "ping", "");
    w.publish("a", "{\"k\":1}", "", "application/json");
    w.publish("a", std::string("bin\0ary", 7), "update", "application/octet-stream");
    auto sub = w.subscribe({"a"}, first_oldest());
    ASSERT_EQ(sub->first.items.size(), 3u);
    const Msg &m0 = sub->first.items[0], &m1 = sub->first.items[1], &m2 = sub->first.items[2];
    EXPECT_EQ(m0.data, "");
    EXPECT_EQ(m0.event, "ping");
    EXPECT_EQ(m0.content_type, "");
    EXPECT_EQ(m1.data, "{\"k\":1}");
    EXPECT_EQ(m1.event, "");
    EXPECT_EQ(m1.content_type, "application/json");
    EXPECT_EQ(m2.data, std::string("bin\0ary", 7));
    EXPECT_EQ(m2.event, "update");
    EXPECT_EQ(m2.content_type, "application/octet-stream");
    EXPECT_EQ(m2.channel, "a");
    EXPECT_CONSISTENT(z);
}

// A deleted channel keeps only its deletion marker, as long as a message would live: a
// client resuming from before the deletion is told of it. Then the channel goes, and its
// floor stays zone-wide.
TEST_F(Publish, DeleteKeepsTheMarkerThenFreesTheChannelAndKeepsItsFloor)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    w.publish("a", "1");
    MessageId newest = w.publish("a", "2").id;
    w.publish("b", "3");
    Published d = w.remove("a");
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d.info.exists);
    EXPECT_EQ(d.info.messages, 2u);
    EXPECT_EQ(d.info.newest, newest);
    EXPECT_FALSE(w.info("a").exists);
    ASSERT_NE(z.channel("a"), nullptr) << "kept for its deletion marker";
    EXPECT_EQ(z.channel("a")->nmessages, 0u);
    EXPECT_EQ(z.sh()->ndeleted, 1u);
    EXPECT_EQ(w.remove("a").status, Status::not_found);
    EXPECT_EQ(w.remove("never").status, Status::not_found);
    {
        auto resumed = w.subscribe({"a"}, from_cursor(MessageId{newest.ms, 0}));
        ASSERT_EQ(resumed->first.items.size(), 1u);
        EXPECT_EQ(resumed->first.items[0].kind, EntryKind::deleted) << "told of the deletion";
        auto fresh = w.subscribe({"a"});
        EXPECT_TRUE(fresh->first.items.empty()) << "a subscriber without a cursor is not";
    }
    ngxstub::advance_ms(1000);
    w.collect();
    EXPECT_EQ(z.channel("a"), nullptr) << "the marker expired: the channel goes";
    EXPECT_EQ(z.sh()->ndeleted, 0u);
    EXPECT_GE(z.sh()->gc_floor, newest) << "a freed channel's floor is kept zone-wide";
    // A client resuming "a" from before the delete is told it missed something.
    auto sub = w.subscribe({"a"}, from_cursor(MessageId{newest.ms, 0}));
    EXPECT_TRUE(sub->first.has_gap("a"));
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, DeleteWithSubscribersLeavesAMarkerThenRepublishStartsOver)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto sub = w.subscribe({"a"});
    w.publish("a", "1");
    Published d = w.remove("a");
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(w.info("a").exists) << "a channel with subscribers still exists for info";
    EXPECT_EQ(w.info("a").messages, 0u);
    Page log = w.read_log();
    ASSERT_EQ(log.items.size(), 2u);
    EXPECT_EQ(log.items[1].kind, EntryKind::deleted);
    EXPECT_EQ(log.items[1].channel, "a");
    EXPECT_GT(log.items[1].id, log.items[0].id);
    Published again = w.publish("a", "2");
    EXPECT_TRUE(again.ok());
    EXPECT_EQ(again.messages, 1u);
    sub->leave(0);  // the stream leaves the deleted channel
    EXPECT_CONSISTENT(z);
    EXPECT_EQ(w.info("a").messages, 1u);
}

// A channel only waited on (never published) exists for info and delete: the delete tells
// its subscribers (SPEC §3).
TEST_F(Publish, DeleteOfAWaitedOnChannelTellsItsSubscribers)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto sub = w.subscribe({"w"});
    EXPECT_TRUE(w.info("w").exists);
    Published d = w.remove("w");
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d.info.subscribers, 1u);
    Page log = w.read_log();
    ASSERT_EQ(log.items.size(), 1u);
    EXPECT_EQ(log.items[0].kind, EntryKind::deleted);
    sub->close();
    EXPECT_FALSE(w.info("w").exists);
    EXPECT_EQ(z.nchannels(), 1u) << "kept for its deletion marker";
    EXPECT_CONSISTENT(z);
}

TEST_F(Publish, IngestKeepsGivenIdsAndIgnoresWhatIsNotNewer)
{
    TestZone::Options o;
    o.redis_ids = true;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sub = b.subscribe({"r"});
    uint64_t t = ngxstub::time_ms() - 5000;  // Redis' clock: ids come from there
    EXPECT_NE(a.ingest(EntryKind::message, {t, 3}, "r", "one"), 0u)
        << "wake bits of b's subscriber";
    EXPECT_EQ(b.ingest(EntryKind::message, {t, 3}, "r", "dup"), 0u)
        << "another worker mirrored it first";
    EXPECT_EQ(b.ingest(EntryKind::message, {t - 1, 9}, "r", "old"), 0u);
    EXPECT_NE(b.ingest(EntryKind::message, {t, 4}, "r", "two"), 0u);
    EXPECT_EQ(z.sh()->last_id, (MessageId{t, 4}));
    Page log = b.read_log();
    EXPECT_EQ(log.data(), (std::vector<std::string>{"one", "two"}));
    EXPECT_EQ(log.ids(), (std::vector<MessageId>{{t, 3}, {t, 4}}));
    // A delete of a channel nobody has here only moves the position on.
    EXPECT_EQ(a.ingest(EntryKind::deleted, {t + 100, 0}, "nothing"), 0u);
    EXPECT_EQ(z.sh()->last_id, (MessageId{t + 100, 0}));
    EXPECT_NE(a.ingest(EntryKind::deleted, {t + 101, 0}, "r"), 0u);
    log = b.read_log();
    ASSERT_EQ(log.items.size(), 1u);
    EXPECT_EQ(log.items[0].kind, EntryKind::deleted);
    EXPECT_EQ(log.items[0].id, (MessageId{t + 101, 0}));
    EXPECT_CONSISTENT(z);
}

// Ids from Redis are the clock of whoever published: one older than ttl expires at once.
TEST_F(Publish, IngestOfAnIdOlderThanTtlExpiresWithoutBeingRead)
{
    TestZone::Options o;
    o.redis_ids = true;
    o.ttl_ms = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    auto sub = w.subscribe({"r"});
    uint64_t t = ngxstub::time_ms() - 2000;
    w.ingest(EntryKind::message, {t, 0}, "r", "stale");
    w.ingest(EntryKind::message, {t + 1500, 0}, "r", "fresh");
    Page log = w.read_log();
    EXPECT_EQ(log.data(), (std::vector<std::string>{"fresh"}));
    EXPECT_TRUE(log.has_gap("r"))
        << "an expired entry the worker had not read is a loss it is told about";
    EXPECT_CONSISTENT(z);
}

// An entry from Redis this zone cannot hold is a loss its subscribers are told about.
TEST_F(Publish, IngestThatCannotFitIsALossForSubscribers)
{
    TestZone::Options o;
    o.redis_ids = true;
    o.bytes = 64 * 1024;
    TestZone z(o);
    Worker &w = z.add_worker();
    auto sub = w.subscribe({"r"});
    std::string huge(o.bytes, 'x');
    uint64_t t = ngxstub::time_ms();
    EXPECT_EQ(w.ingest(EntryKind::message, {t, 0}, "r", huge), uint64_t(1) << w.record()->bit)
        << "the subscriber's worker is woken to be told";
    EXPECT_EQ(z.sh()->last_id, (MessageId{t, 0}));
    Page log = w.read_log();
    EXPECT_TRUE(log.items.empty());
    ASSERT_TRUE(log.has_gap("r"));
    EXPECT_EQ(log.gaps[0].upto, (MessageId{t, 0}));
    auto resumed = w.subscribe({"r"}, from_cursor(MessageId{t - 1, 0}));
    EXPECT_TRUE(resumed->first.has_gap("r")) << "a resuming client is told too";
    EXPECT_CONSISTENT(z);
}

// The Redis store's calls when the shared log lost data: every cursor now falls short, and
// live subscribers are told with their next read.
TEST_F(Publish, MarkGapTellsResumingAndLiveSubscribers)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto live = b.subscribe({"x"});
    MessageId first = a.publish("x", "1").id;
    MessageId last = a.publish("x", "2").id;
    EXPECT_EQ(b.read_log().items.size(), 2u);
    {
        As as(a);
        a.store.mark_gap();
    }
    Page p = b.read_log();
    EXPECT_GT(p.all_lost, last);
    EXPECT_TRUE(b.read_log().all_lost == MessageId{}) << "told once";
    EXPECT_TRUE(a.subscribe({"x"}, from_cursor(first))->first.has_gap("x"));
    EXPECT_TRUE(a.subscribe({"new"}, from_cursor(first))->first.has_gap("new"));
    EXPECT_FALSE(a.subscribe({"x"}, from_cursor(last))->first.has_gap("x"));
    MessageId later = a.publish("x", "3").id;
    {
        As as(a);
        a.store.raise_floor(later);
    }
    EXPECT_TRUE(a.subscribe({"x"}, from_cursor(last))->first.has_gap("x"));
    EXPECT_FALSE(a.subscribe({"x"}, from_cursor(later))->first.has_gap("x"));
    EXPECT_CONSISTENT(z);
}

// ---- the idle-channel cap (SPEC §9) ----

TEST_F(Publish, SubscribersOfNewChannelsNeverEvictAndAreCapped)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    TestZone z(o);
    Worker &w = z.add_worker();
    for (int i = 0; i < 400; i++)
        ASSERT_TRUE(w.publish("m" + std::to_string(i % 4), std::string(150, 'x')).ok());
    uint64_t evicted = z.sh()->evicted, messages = z.sh()->nmessages;
    ASSERT_GT(evicted, 0u) << "the zone should be full of messages";
    std::vector<std::unique_ptr<Sub>> subs;
    for (;;) {
        auto s = w.subscribe({"idle" + std::to_string(subs.size())});
        if (s->status != SubscribeStatus::ok) break;
        subs.push_back(std::move(s));
        ASSERT_LT(subs.size(), 10000u);
    }
    ASSERT_GT(subs.size(), 10u);
    EXPECT_EQ(z.sh()->evicted, evicted) << "a subscriber evicted messages";
    EXPECT_EQ(z.sh()->nmessages, messages);
    EXPECT_LE(z.sh()->idle_bytes, z.sh()->idle_cap);
    // Existing channels are still served past the cap.
    auto existing = w.subscribe({"m1"});
    EXPECT_EQ(existing->status, SubscribeStatus::ok);
    // A leaving subscriber frees its channel: another may take the room.
    subs.pop_back();
    EXPECT_EQ(w.subscribe({"another"})->status, SubscribeStatus::ok);
    EXPECT_CONSISTENT(z);
}

// SPEC §9: channels without messages may take 1/8 of the zone, and messages the rest, so
// that a zone full of messages still has the idle share for subscribers: the refusal that
// comes is the cap's (over_cap), at the cap, not a full slab's (no_memory) before it.
TEST_F(Publish, AZoneFullOfMessagesStillHasTheIdleShare)
{
    for (size_t nworkers : {1, 4}) {
        TestZone::Options o;
        o.bytes = 64 * 1024;
        TestZone z(o);
        for (size_t i = 0; i < nworkers; i++) z.add_worker();
        Worker &w = z.w(0);
        for (int i = 0; i < 400; i++)
            ASSERT_TRUE(w.publish("m" + std::to_string(i % 4), std::string(150, 'x')).ok());
        std::vector<std::unique_ptr<Sub>> subs;
        SubscribeStatus refusal;
        for (;;) {
            auto s = w.subscribe({"idle" + std::to_string(subs.size())});
            if ((refusal = s->status) != SubscribeStatus::ok) break;
            subs.push_back(std::move(s));
        }
        EXPECT_EQ(refusal, SubscribeStatus::over_cap)
            << nworkers << " workers: refused with no_memory at " << z.sh()->idle_bytes
            << " idle bytes of a cap of " << z.sh()->idle_cap << "; the pool holds "
            << ngxstub::live_bytes(z.pool) << " of " << z.usable() << ": messages "
            << z.sh()->message_bytes << " (budget " << z.sh()->message_budget
            << "), and the root, its log context and " << nworkers
            << " worker records, counted in neither";
    }
}

// A publish to a channel a subscriber waits on moves its bytes from the idle cap to the
// messages' budget; when its messages go again, back to the idle cap.
TEST_F(Publish, AChannelMovesBetweenTheIdleCapAndTheBudget)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    auto sub = w.subscribe({"a"});
    uint64_t idle = z.sh()->idle_bytes;
    EXPECT_GT(idle, 0u);
    w.publish("a", "x");
    EXPECT_EQ(z.sh()->idle_bytes, 0u);
    ngxstub::advance_ms(1000);
    w.collect();
    EXPECT_EQ(z.sh()->idle_bytes, idle);
    sub->close();
    EXPECT_EQ(z.sh()->idle_bytes, 0u);
    EXPECT_EQ(z.nchannels(), 0u);
    EXPECT_CONSISTENT(z);
}

// A multi-channel subscribe refused on its third channel releases the two it created.
TEST_F(Publish, ARefusedSubscribeReleasesWhatItCreated)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::vector<std::unique_ptr<Sub>> subs;
    for (;;) {  // fill the cap to within two channels
        auto s = w.subscribe({"f" + std::to_string(subs.size())});
        if (s->status != SubscribeStatus::ok) break;
        subs.push_back(std::move(s));
    }
    subs.pop_back();
    subs.pop_back();
    uint64_t idle = z.sh()->idle_bytes;
    size_t channels = z.nchannels();
    auto s = w.subscribe({"n1", "n2", "n3", "n4"});
    EXPECT_EQ(s->status, SubscribeStatus::over_cap);
    EXPECT_EQ(s->failed_index, 2u);
    EXPECT_EQ(z.sh()->idle_bytes, idle);
    EXPECT_EQ(z.nchannels(), channels);
    EXPECT_EQ(w.session.size(), subs.size())
        << "the registry keeps what a refused subscribe prepared";
    EXPECT_CONSISTENT(z);
}

// An existing_only subscriber of a missing channel (SPEC §1: 404) creates nothing.
TEST_F(Publish, ExistingOnlyRefusesMissingAndDeletedChannels)
{
    TestZone z;
    Worker &w = z.add_worker();
    w.publish("here", "x");
    w.publish("gone", "x");
    w.remove("gone");
    SubOptions o;
    o.existing_only = true;
    EXPECT_EQ(w.subscribe({"here"}, o)->status, SubscribeStatus::ok);
    auto s = w.subscribe({"here", "missing"}, o);
    EXPECT_EQ(s->status, SubscribeStatus::not_found);
    EXPECT_EQ(s->failed_index, 1u);
    EXPECT_EQ(w.subscribe({"gone"}, o)->status, SubscribeStatus::not_found);
    auto waiting = w.subscribe({"waited"});  // waited on, never published: not "existing"
    EXPECT_EQ(w.subscribe({"waited"}, o)->status, SubscribeStatus::not_found);
    EXPECT_EQ(z.channel("missing"), nullptr);
    EXPECT_CONSISTENT(z);
}

}  // namespace
}  // namespace storetest
