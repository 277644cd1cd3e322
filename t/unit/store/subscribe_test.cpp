// The subscriber side: where a subscriber starts (cursor, newest, oldest, last N), gaps,
// and replay pages merged across channels (SPEC §2, §4, §5, §9).
#include <algorithm>
#include <random>

#include "store_harness.h"

namespace storetest {
namespace {

using namespace channels::shm;

class Subscribe : public StoreTest {};

std::vector<std::string> data_of(const std::vector<Msg> &msgs)
{
    Page p;
    p.items = msgs;
    return p.data();
}

// Everything a subscriber gets: its first page and every replay page after it.
std::vector<Msg> whole_replay(Sub &s, std::vector<Gap> *gaps = nullptr)
{
    std::vector<Msg> all = s.first.items;
    if (gaps != nullptr) *gaps = s.first.gaps;
    if (!s.first.more) return all;
    std::vector<Msg> rest = s.replay_all(gaps);
    all.insert(all.end(), rest.begin(), rest.end());
    return all;
}

TEST_F(Subscribe, NewestStartsAfterEverythingRetained)
{
    TestZone z;
    Worker &w = z.add_worker();
    w.publish("a", "old1");
    MessageId last = w.publish("a", "old2").id;
    auto s = w.subscribe({"a"});
    ASSERT_EQ(s->status, SubscribeStatus::ok);
    EXPECT_TRUE(s->attached);
    EXPECT_TRUE(s->first.items.empty());
    EXPECT_TRUE(s->first.gaps.empty());
    EXPECT_EQ(s->attached_at, last);
    EXPECT_EQ(s->first.position, last);
    w.publish("a", "new");
    EXPECT_EQ(s->next_page().data(), (std::vector<std::string>{"new"}));
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, OldestMergesChannelsInIdOrder)
{
    TestZone z;
    Worker &w = z.add_worker();
    std::vector<std::string> order;
    const char *chs[] = {"b", "a", "c", "a", "a", "c", "b"};
    for (int i = 0; i < 7; i++) {
        std::string d = std::string(chs[i]) + std::to_string(i);
        w.publish(chs[i], d);
        order.push_back(d);
    }
    auto s = w.subscribe({"c", "a", "b"}, first_oldest());
    EXPECT_EQ(s->first.data(), order);
    for (const Msg &m : s->first.items)
        EXPECT_EQ(s->ids[m.index], m.channel) << "channel_index names its channel";
    EXPECT_FALSE(s->first.more);
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, LastNTakesTheLastOfEachChannelMerged)
{
    TestZone z;
    Worker &w = z.add_worker();
    for (int i = 0; i < 5; i++) {
        w.publish("a", "a" + std::to_string(i));
        w.publish("b", "b" + std::to_string(i));
    }
    w.publish("a", "a5");
    auto s = w.subscribe({"a", "b"}, first_last(2));
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"b3", "a4", "b4", "a5"}));
    auto more = w.subscribe({"a"}, first_last(50));
    EXPECT_EQ(more->first.items.size(), 6u) << "more than retained: all of it";
    auto none = w.subscribe({"a"}, first_last(0));
    EXPECT_TRUE(none->first.items.empty());
    EXPECT_CONSISTENT(z);
}

// last N counts messages: a deletion marker kept in the ring is neither counted nor given.
TEST_F(Subscribe, LastNSkipsDeletionMarkers)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto keeper = w.subscribe({"a"});  // keeps the marker in the ring
    w.publish("a", "before");
    w.remove("a");
    w.publish("a", "after1");
    w.publish("a", "after2");
    auto s = w.subscribe({"a"}, first_last(3));
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"after1", "after2"}));
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, CursorReplaysWhatCameAfterIt)
{
    TestZone z;
    Worker &w = z.add_worker();
    std::vector<MessageId> ids;
    for (int i = 0; i < 6; i++)
        ids.push_back(w.publish(i % 2 ? "odd" : "even", std::to_string(i)).id);
    auto s = w.subscribe({"odd", "even"}, from_cursor(ids[2]));
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"3", "4", "5"}));
    EXPECT_TRUE(s->first.gaps.empty());
    auto at_end = w.subscribe({"odd", "even"}, from_cursor(ids[5]));
    EXPECT_TRUE(at_end->first.items.empty());
    auto ahead = w.subscribe({"odd"}, from_cursor(MessageId{ids[5].ms + 100000, 0}));
    EXPECT_TRUE(ahead->first.items.empty()) << "a cursor from the future replays nothing";
    EXPECT_TRUE(ahead->first.gaps.empty());
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, CursorBeforeTrimmedMessagesGetsAGap)
{
    TestZone::Options o;
    o.history = 3;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::vector<MessageId> ids;
    for (int i = 0; i < 6; i++) ids.push_back(w.publish("a", std::to_string(i)).id);
    auto s = w.subscribe({"a"}, from_cursor(ids[1]));
    ASSERT_EQ(s->first.gaps.size(), 1u);
    EXPECT_EQ(s->first.gaps[0].channel, "a");
    EXPECT_EQ(s->first.gaps[0].oldest, ids[3]);
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"3", "4", "5"}));
    auto exact = w.subscribe({"a"}, from_cursor(ids[2]));  // the newest trimmed: nothing missed
    EXPECT_TRUE(exact->first.gaps.empty());
    EXPECT_EQ(exact->first.data(), (std::vector<std::string>{"3", "4", "5"}));
    EXPECT_CONSISTENT(z);
}

// SPEC §2: a channel that was removed keeps its floor zone-wide, so a client resuming from
// before it, on any channel created since, is told it may have missed something.
TEST_F(Subscribe, FloorOfARemovedChannelReachesNewChannels)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    auto keeper = w.subscribe({"x"});   // x stays (emptied by ttl) with its own floor
    MessageId before = w.publish("x", "x").id;
    MessageId newest = w.publish("a", "1").id;
    w.remove("a");
    ngxstub::advance_ms(1000);   // the deletion marker expires: the channel is freed
    w.collect();
    ASSERT_EQ(z.channel("a"), nullptr);
    auto old = w.subscribe({"a"}, from_cursor(before));
    EXPECT_TRUE(old->first.has_gap("a"));
    auto other = w.subscribe({"never-seen"}, from_cursor(before));
    EXPECT_TRUE(other->first.has_gap("never-seen"));
    auto recent = w.subscribe({"never-seen-2"}, from_cursor(newest));
    EXPECT_TRUE(recent->first.gaps.empty());
    auto existing = w.subscribe({"x"}, from_cursor(before));
    EXPECT_TRUE(existing->first.gaps.empty()) << "an existing channel keeps its own floor";
    EXPECT_CONSISTENT(z);
}

// More expired messages than one expiry pass removes (64): the rest are skipped while
// reading, a gap for a subscriber with a cursor, silently without one.
TEST_F(Subscribe, ExpiredMessagesAreSkippedWithAGapOnlyForACursor)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    o.history = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    MessageId before = w.publish("other", "x").id;
    for (int i = 0; i < 200; i++) w.publish("a", "old" + std::to_string(i));
    ngxstub::advance_ms(999);
    w.publish("a", "fresh");
    ngxstub::advance_ms(1);
    auto cursor = w.subscribe({"a"}, from_cursor(before));
    EXPECT_EQ(data_of(whole_replay(*cursor)), (std::vector<std::string>{"fresh"}));
    EXPECT_TRUE(cursor->first.has_gap("a"));
    auto oldest = w.subscribe({"a"}, first_oldest());
    EXPECT_EQ(oldest->first.data(), (std::vector<std::string>{"fresh"}));
    EXPECT_TRUE(oldest->first.gaps.empty());
    EXPECT_CONSISTENT(z);
}

// The gap names the oldest message retained (README: oldest_event_id is null only when
// the channel retains nothing), also behind more expired entries than one pass removes.
TEST_F(Subscribe, GapNamesTheOldestRetainedBehindManyExpired)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    o.history = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    MessageId before = w.publish("other", "x").id;
    for (int i = 0; i < 200; i++) w.publish("a", "old" + std::to_string(i));
    ngxstub::advance_ms(999);
    MessageId fresh = w.publish("a", "fresh").id;
    ngxstub::advance_ms(1);
    auto s = w.subscribe({"a"}, from_cursor(before));
    ASSERT_TRUE(s->first.has_gap("a"));
    EXPECT_EQ(s->first.gaps[0].oldest, fresh)
        << "oldest_retained() looks at 64 ring entries only: behind 136 expired ones it finds none";
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"fresh"}));
}

TEST_F(Subscribe, PagesStopAtTheCountLimit)
{
    TestZone z;
    Worker &w = z.add_worker();
    for (int i = 0; i < 10; i++) w.publish(i % 3 ? "a" : "b", std::to_string(i));
    SubOptions o = first_oldest();
    o.limit = 3;
    auto s = w.subscribe({"a", "b"}, o);
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"0", "1", "2"}));
    EXPECT_TRUE(s->first.more);
    std::vector<std::string> rest;
    for (;;) {
        Page p = s->next_page(3);
        EXPECT_LE(p.items.size(), 3u);
        for (const std::string &d : p.data()) rest.push_back(d);
        if (!p.more) break;
    }
    EXPECT_EQ(rest, (std::vector<std::string>{"3", "4", "5", "6", "7", "8", "9"}));
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, PagesStopAtTheByteLimitButTakeOneMessageAlways)
{
    TestZone::Options o;
    o.bytes = 4 << 20;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::string k100(100 * 1024, 'm');
    w.publish("a", k100 + "1");
    w.publish("a", k100 + "2");
    w.publish("a", k100 + "3");
    w.publish("a", std::string(300 * 1024, 'h'));  // larger than a page
    w.publish("a", "tail");
    auto s = w.subscribe({"a"}, first_oldest());
    EXPECT_EQ(s->first.items.size(), 2u) << "200 KiB fit a 256 KiB page, 300 KiB do not";
    EXPECT_TRUE(s->first.more);
    Page p = s->next_page();
    ASSERT_EQ(p.items.size(), 1u);
    EXPECT_EQ(p.items[0].data, k100 + "3");
    EXPECT_TRUE(p.more);
    // The huge one does not fit the batch: the reader is told how large a batch to bring.
    p = s->next_page();
    EXPECT_TRUE(p.items.empty());
    EXPECT_TRUE(p.more);
    ASSERT_GT(p.need_bytes, 300u * 1024);
    p = s->next_page(kPageMessages, kPageBytes, p.need_bytes);
    ASSERT_EQ(p.items.size(), 1u) << "one message larger than the byte limit still makes a page";
    EXPECT_EQ(p.items[0].data.size(), 300u * 1024);
    EXPECT_EQ(s->next_page().data(), (std::vector<std::string>{"tail"}));
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, LongPollAttachesOnlyWhenThereIsNothingToAnswer)
{
    TestZone z;
    Worker &w = z.add_worker();
    MessageId id = w.publish("a", "x").id;
    SubOptions o = from_cursor(MessageId{id.ms - 1, 0});
    o.only_if_empty = true;
    auto answered = w.subscribe({"a"}, o);
    EXPECT_EQ(answered->status, SubscribeStatus::ok);
    EXPECT_FALSE(answered->attached);
    EXPECT_EQ(answered->first.data(), (std::vector<std::string>{"x"}));
    EXPECT_EQ(w.info("a").subscribers, 0u);
    EXPECT_EQ(w.session.size(), 0u);
    o.cursor = id;
    auto waiting = w.subscribe({"a"}, o);
    EXPECT_TRUE(waiting->attached);
    EXPECT_EQ(w.info("a").subscribers, 1u);
    SubOptions head = from_cursor(id);
    head.attach = false;  // HEAD, or a peek: never attached
    auto peek = w.subscribe({"a", "new"}, head);
    EXPECT_FALSE(peek->attached);
    EXPECT_EQ(w.info("a").subscribers, 1u);
    EXPECT_EQ(z.channel("new"), nullptr)
        << "a channel created for an unattached subscriber stays behind";
    EXPECT_EQ(z.sh()->connections, 1u);
    EXPECT_CONSISTENT(z);
}

// A subscriber replaying when its channel is deleted gets the marker in id order among its
// other channels' messages; that channel ends there for it (a later republish is not its).
TEST_F(Subscribe, ReplayCarriesADeletionInOrder)
{
    TestZone z;
    Worker &w = z.add_worker();
    MessageId start = w.publish("b", "b0").id;
    SubOptions o = from_cursor(start);
    o.limit = 1;
    w.publish("b", "b1");
    auto s = w.subscribe({"a", "b"}, o);
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"b1"}));
    w.publish("b", "b2");
    w.remove("a");
    w.publish("b", "b3");
    w.publish("a", "a-again");
    std::vector<Msg> rest = s->replay_all();
    EXPECT_EQ(data_of(rest), (std::vector<std::string>{"b2", "<deleted a>", "b3"}));
    EXPECT_FALSE(s->pos[0].active);
    EXPECT_CONSISTENT(z);
}

// Deleted before the subscriber came: history, not news.
// A deletion after the reader's cursor is news to it (and ends its reading of the channel);
// one before a reader without a cursor is history.
TEST_F(Subscribe, DeletionsAfterTheCursorAreReplayedNotOlderOnes)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto keeper = w.subscribe({"a"});
    MessageId before = w.publish("a", "1").id;
    w.remove("a");
    w.publish("a", "2");
    auto s = w.subscribe({"a"}, from_cursor(MessageId{before.ms - 1, 0}));
    std::vector<Msg> replay = whole_replay(*s);
    ASSERT_EQ(replay.size(), 1u) << "the deletion took \"1\" with it";
    EXPECT_EQ(replay[0].kind, EntryKind::deleted) << "the deletion, which ends the channel for it";
    auto oldest = w.subscribe({"a"}, first_oldest());
    EXPECT_EQ(oldest->first.data(), (std::vector<std::string>{"2"}));
    EXPECT_CONSISTENT(z);
}

// A replay overtaken by eviction: the reader is told (gap) and goes on from what is left.
TEST_F(Subscribe, ReplayOvertakenByEvictionGetsAGapAndGoesOn)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    o.history = 1000;
    TestZone z(o);
    Worker &w = z.add_worker();
    MessageId start = w.publish("x", "x").id;
    for (int i = 0; i < 40; i++) w.publish("a", "a" + std::to_string(i));
    SubOptions so = from_cursor(start);
    so.limit = 5;
    auto s = w.subscribe({"a"}, so);
    EXPECT_EQ(s->first.items.size(), 5u);
    uint64_t evicted = z.sh()->evicted;
    for (int i = 0; i < 200; i++) w.publish("b", std::string(400, 'b'));
    ASSERT_GT(z.sh()->evicted, evicted + 40) << "a's messages should all be gone";
    w.publish("a", "a-new");
    std::vector<Gap> gaps;
    std::vector<Msg> rest = s->replay_all(&gaps);
    EXPECT_EQ(data_of(rest), (std::vector<std::string>{"a-new"}));
    ASSERT_EQ(gaps.size(), 1u);
    EXPECT_EQ(gaps[0].channel, "a");
    EXPECT_CONSISTENT(z);
}

// Random interleavings of several channels, read in small pages: the reader gets exactly
// the publish order, each message once.
TEST_F(Subscribe, SmallPagesOfManyChannelsKeepThePublishOrder)
{
    TestZone::Options o;
    o.history = 10000;
    o.bytes = 4 << 20;
    TestZone z(o);
    Worker &w = z.add_worker();
    std::mt19937 rng(5);
    std::vector<std::string> ids;
    for (int i = 0; i < 20; i++) ids.push_back("ch" + std::to_string(i));
    MessageId start = w.publish("other", "x").id;
    std::vector<std::string> order;
    for (int i = 0; i < 800; i++) {
        std::string d = std::to_string(i);
        w.publish(ids[rng() % ids.size()], d);
        order.push_back(d);
    }
    for (size_t limit : {1, 2, 7, 64}) {
        SubOptions so = from_cursor(start);
        so.limit = limit;
        auto s = w.subscribe(ids, so);
        std::vector<std::string> got = s->first.data();
        while (true) {
            Page p = s->next_page(limit);
            for (const std::string &d : p.data()) got.push_back(d);
            if (!p.more) break;
        }
        EXPECT_EQ(got, order) << "pages of " << limit;
    }
    EXPECT_CONSISTENT(z);
}

// A channel's sequence numbers are 32 bits and wrap: rings, positions, trimming, the
// binary search of a cursor and last-N all work across the wrap.
TEST_F(Subscribe, SequenceNumbersWrapAround)
{
    TestZone::Options o;
    o.history = 50;
    TestZone z(o);
    Worker &w = z.add_worker();
    {
        auto creator = w.subscribe({"a"});
        Channel *ch = z.channel("a");
        ASSERT_EQ(ch->ring, nullptr);
        ch->head_seq = ch->next_seq = UINT32_MAX - 20;  // as after four billion appends
        w.publish("a", "0");  // the channel holds a message: it outlives its creator
    }
    std::vector<MessageId> ids;
    std::vector<std::string> data;
    for (int i = 1; i < 80; i++) {
        ids.push_back(w.publish("a", std::to_string(i)).id);
        data.push_back(std::to_string(i));
        if (i == 15) {  // a replay positioned before the wrap, read after it
            SubOptions so = first_oldest();
            so.limit = 4;
            auto early = w.subscribe({"a"}, so);
            EXPECT_EQ(early->first.items.size(), 4u);
        }
    }
    EXPECT_TRUE(seq_before(z.channel("a")->head_seq, z.channel("a")->next_seq));
    EXPECT_LT(z.channel("a")->next_seq, 100u) << "wrapped";
    auto oldest = w.subscribe({"a"}, first_oldest());
    EXPECT_EQ(oldest->first.data(), std::vector<std::string>(data.end() - 50, data.end()));
    SubOptions so = from_cursor(ids[40]);
    so.limit = 3;
    auto cursor = w.subscribe({"a"}, so);
    std::vector<Msg> all = cursor->first.items;
    std::vector<Msg> rest = cursor->replay_all();
    all.insert(all.end(), rest.begin(), rest.end());
    EXPECT_EQ(data_of(all), std::vector<std::string>(data.begin() + 41, data.end()));
    auto last = w.subscribe({"a"}, first_last(10));
    EXPECT_EQ(last->first.data(), std::vector<std::string>(data.end() - 10, data.end()));
    ChannelInfo info = w.info("a");
    EXPECT_EQ(info.messages, 50u);
    EXPECT_EQ(info.newest, ids.back());
    EXPECT_EQ(info.oldest, ids[ids.size() - 50]);
    EXPECT_CONSISTENT(z);
}

// SPEC §9: what one subscriber's request does under the zone lock is bounded by its page
// and its channel count, never by the history. Measured in slab frees per lock hold: a
// subscriber leaving a worker that lags behind a burst (its entries were kept for it).
TEST_F(Subscribe, ALeavingSubscriberDoesBoundedWorkUnderTheLock)
{
    TestZone::Options o;
    o.bytes = 16 << 20;
    o.history = 1;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"x"});
    auto other = a.subscribe({"y"});  // a stays active
    for (int i = 0; i < 20000; i++) b.publish("x", "m");
    ngxstub::reset_max_frees(z.pool);
    auto resumed = a.subscribe({"x"}, from_cursor(MessageId{}));
    resumed->replay_all();
    resumed->close();
    EXPECT_LE(ngxstub::max_frees_per_hold(z.pool), 64u) << "subscribing, replaying";
    ngxstub::reset_max_frees(z.pool);
    s->close();
    EXPECT_LE(ngxstub::max_frees_per_hold(z.pool), channels::kLogPageEntries)
        << "one unsubscribe freed every entry kept for its worker under one lock hold";
    EXPECT_CONSISTENT(z);
}

TEST_F(Subscribe, SeveralSubscribersOfOneChannelInOneWorker)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto s1 = w.subscribe({"a"});
    auto s2 = w.subscribe({"a", "b"});
    EXPECT_EQ(w.info("a").subscribers, 2u);
    EXPECT_EQ(w.session.size(), 2u);
    EXPECT_EQ(z.sh()->connections, 2u);
    s1->close();
    EXPECT_EQ(w.info("a").subscribers, 1u);
    EXPECT_EQ(w.session.find("a")->count, 1u);
    s2->leave(0);
    EXPECT_EQ(w.session.find("a"), nullptr);
    EXPECT_EQ(z.channel("a"), nullptr);
    EXPECT_EQ(z.sh()->connections, 1u) << "leaving a channel is not closing the connection";
    s2->close();
    EXPECT_EQ(z.sh()->connections, 0u);
    EXPECT_EQ(z.nchannels(), 0u);
    EXPECT_CONSISTENT(z);
}

}  // namespace
}  // namespace storetest
