// The publish log as the delivery layer reads it (read_log): wake bits, paging, bookmarks,
// entries kept for a lagging worker, and the loss notices that tell a worker what was
// freed before it read it.
#include <algorithm>
#include <map>

#include "store_harness.h"

namespace storetest {
namespace {

using namespace channels::shm;

class Log : public StoreTest {};

std::vector<Msg> items_of(const std::vector<Page> &pages)
{
    std::vector<Msg> out;
    for (const Page &p : pages) out.insert(out.end(), p.items.begin(), p.items.end());
    return out;
}

size_t log_length(TestZone &z)
{
    size_t n = 0;
    for (ngx_queue_t *q = ngx_queue_head(&z.sh()->log); q != ngx_queue_sentinel(&z.sh()->log);
         q = ngx_queue_next(q))
        n++;
    return n;
}

TEST_F(Log, AWorkerWithoutSubscribersReadsNothing)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    b.publish("x", "1");
    MessageId last = b.publish("y", "2").id;
    Page p = a.read_log();
    EXPECT_TRUE(p.items.empty());
    EXPECT_FALSE(p.more);
    EXPECT_EQ(p.position, last);
    EXPECT_EQ(a.record()->read_upto, last);
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, PublishesWakeTheWorkersHoldingTheChannel)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    Worker &c = z.add_worker();
    auto sa = a.subscribe({"news"});
    auto sc = c.subscribe({"news", "sport"});
    b.publish("news", "hello");
    ASSERT_EQ(b.listener.appended.size(), 1u);
    uint64_t bits = b.listener.appended.back();
    EXPECT_EQ(bits, (uint64_t(1) << a.record()->bit) | (uint64_t(1) << c.record()->bit));
    std::vector<ngx_pid_t> pids;
    b.wake_targets(bits, &pids);
    std::sort(pids.begin(), pids.end());
    std::vector<ngx_pid_t> expected{a.pid(), c.pid()};
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(pids, expected);
    a.wake_targets(bits, &pids);
    EXPECT_EQ(pids, std::vector<ngx_pid_t>{c.pid()}) << "a worker never wakes itself";
    b.publish("nobody", "x");
    EXPECT_EQ(b.listener.appended.size(), 1u) << "no wake-up for a channel nobody holds";
    Page pa = a.read_log(true);
    EXPECT_EQ(pa.data(), (std::vector<std::string>{"hello"}));
    EXPECT_EQ(pa.position, z.sh()->last_id);
    b.publish("sport", "goal");
    EXPECT_TRUE(a.read_log().items.empty());
    EXPECT_EQ(c.read_log().data(), (std::vector<std::string>{"hello", "goal"}));
    {
        As as(a);
        channels::ZoneStats st = a.store.stats();
        ASSERT_EQ(st.workers.size(), 3u);
        EXPECT_EQ(st.workers[0].wakeups, 1u);
        EXPECT_EQ(st.workers[0].entries_read, 1u);
        EXPECT_EQ(st.subscribers, 2u);
        EXPECT_EQ(st.channels, 3u);
    }
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, APassExaminesAtMostOnePageOfTheLog)
{
    TestZone::Options o;
    o.bytes = 8 << 20;
    o.history = 100000;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"a"});
    std::vector<std::string> expected;
    for (int i = 0; i < 2500; i++) {
        std::string d = std::to_string(i);
        b.publish(i % 3 ? "a" : "b", d);
        if (i % 3) expected.push_back(d);
    }
    Page first = a.read_log();
    EXPECT_TRUE(first.more);
    // Entry 0 (of b) was skipped as it came (the worker was caught up and does not hold b):
    // the page is the 1024 entries from the first of a.
    EXPECT_EQ(first.items.size(), 683u) << "the a-messages among 1024 entries";
    std::vector<Page> pages = a.drain_log();
    pages.insert(pages.begin(), first);
    EXPECT_EQ(pages.size(), 3u);
    Page all;
    all.items = items_of(pages);
    EXPECT_EQ(all.data(), expected);
    EXPECT_EQ(pages.back().position, z.sh()->last_id);
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, APassStopsWhenItsBatchIsFull)
{
    TestZone::Options o;
    o.bytes = 8 << 20;
    o.history = 100000;
    TestZone z(o);
    Worker &a = z.add_worker();
    auto s = a.subscribe({"a"});
    for (int i = 0; i < 600; i++) a.publish("a", std::string(1024, 'a' + i % 26));
    Page p = a.read_log();
    EXPECT_TRUE(p.more);
    EXPECT_GT(p.items.size(), 200u);
    EXPECT_LT(p.items.size(), 300u) << "a 256 KiB batch holds about 256 messages of 1 KiB";
    std::vector<Page> rest = a.drain_log();
    EXPECT_EQ(p.items.size() + items_of(rest).size(), 600u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, AMessageLargerThanTheBatchAsksForALargerOne)
{
    TestZone::Options o;
    o.bytes = 4 << 20;
    TestZone z(o);
    Worker &a = z.add_worker();
    auto s = a.subscribe({"a"});
    a.publish("a", "small");
    a.publish("a", std::string(400 * 1024, 'h'));
    Page p = a.read_log();
    EXPECT_EQ(p.data(), (std::vector<std::string>{"small"}));
    EXPECT_TRUE(p.more);
    EXPECT_EQ(p.need_bytes, 0u) << "not alone on its page: the next pass takes it";
    p = a.read_log();
    EXPECT_TRUE(p.items.empty());
    ASSERT_GT(p.need_bytes, 400u * 1024);
    p = a.read_log(false, p.need_bytes);
    ASSERT_EQ(p.items.size(), 1u);
    EXPECT_EQ(p.items[0].data.size(), 400u * 1024);
    EXPECT_FALSE(p.more);
    EXPECT_CONSISTENT(z);
}

// history trims the ring at once, but a worker holding subscribers of the channel still
// gets every message from the log (its live subscribers miss nothing), and the trimmed
// entries are freed as soon as it has read them.
TEST_F(Log, TrimmedEntriesWaitForALaggingWorker)
{
    TestZone::Options o;
    o.history = 2;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"a"});
    std::vector<std::string> expected;
    for (int i = 0; i < 10; i++) {
        b.publish("a", std::to_string(i));
        expected.push_back(std::to_string(i));
    }
    EXPECT_EQ(log_length(z), 10u);
    EXPECT_EQ(z.channel("a")->log_refs, 8u);
    EXPECT_EQ(b.info("a").messages, 2u);
    EXPECT_CONSISTENT(z);
    Page p = a.read_log();
    EXPECT_EQ(p.data(), expected);
    EXPECT_EQ(log_length(z), 2u) << "read: the trimmed entries go";
    EXPECT_EQ(z.channel("a")->log_refs, 0u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, NothingIsKeptForWorkersThatHaveReadOrHoldNothing)
{
    TestZone::Options o;
    o.history = 2;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sb = b.subscribe({"other"});  // active, but not on "a"
    for (int i = 0; i < 10; i++) a.publish("a", std::to_string(i));
    EXPECT_EQ(log_length(z), 2u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, TrimmedEntriesWaitForEveryLaggingWorkerThenGo)
{
    TestZone::Options o;
    o.history = 1;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    Worker &c = z.add_worker();
    auto sa = a.subscribe({"x"});
    auto sb = b.subscribe({"x"});
    for (int i = 0; i < 5; i++) c.publish("x", std::to_string(i));
    EXPECT_EQ(a.read_log().items.size(), 5u);
    EXPECT_EQ(log_length(z), 5u) << "b has not read them";
    EXPECT_CONSISTENT(z);
    b.stop();  // the lagging worker exits: nothing waits for it any more
    EXPECT_EQ(log_length(z), 1u);
    EXPECT_CONSISTENT(z);
}

// The worker's next unread entry (its bookmark) is evicted before it reads on: the
// bookmark moves to what follows, and the worker is told what it lost, before the rest.
TEST_F(Log, EvictingAWorkersNextEntryMovesItsBookmarkAndTellsTheLoss)
{
    TestZone::Options o;
    o.bytes = 256 * 1024;
    o.history = 100000;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"a"});
    std::vector<MessageId> ids;
    for (int i = 0; i < 1500; i++) ids.push_back(b.publish("a", std::to_string(i)).id);
    ASSERT_EQ(z.sh()->evicted, 0u);
    Page p1 = a.read_log();
    ASSERT_EQ(p1.items.size(), 1024u);
    ASSERT_TRUE(p1.more);
    ASSERT_NE(a.record()->bookmark, nullptr);
    EXPECT_EQ(a.record()->bookmark->id, ids[1024]);
    EXPECT_CONSISTENT(z);
    // Publishing elsewhere evicts the oldest, past the bookmark.
    while (z.channel("a") != nullptr && z.channel("a")->ring_len() > 300)
        b.publish("b", std::string(500, 'b'));
    ASSERT_NE(z.channel("a"), nullptr);
    MessageId oldest_left = z.channel("a")->slot(z.channel("a")->head_seq)->id;
    ASSERT_GT(oldest_left, ids[1024]);
    EXPECT_CONSISTENT(z);
    std::vector<Page> pages = a.drain_log();
    ASSERT_FALSE(pages.empty());
    ASSERT_TRUE(pages[0].has_gap("a")) << "the loss is told before the entries after it";
    MessageId lost_upto = pages[0].gaps[0].upto;
    EXPECT_LT(lost_upto, oldest_left);
    EXPECT_GE(lost_upto, ids[1024]);
    std::vector<Msg> got = items_of(pages);
    ASSERT_FALSE(got.empty());
    EXPECT_EQ(got.front().id, oldest_left) << "reading goes on at the first entry left";
    // Every message is either read once or covered by the loss notice.
    std::vector<MessageId> read;
    for (const Msg &m : p1.items) read.push_back(m.id);
    for (const Msg &m : got) read.push_back(m.id);
    for (MessageId id : ids) {
        bool seen = std::count(read.begin(), read.end(), id) == 1;
        EXPECT_TRUE(seen || id <= lost_upto) << "lost untold: " << text(id);
    }
    EXPECT_CONSISTENT(z);
}

// Entries trimmed (history) but unread are the first to go when room is needed, before
// retained messages older than them; the worker that needed them is told.
TEST_F(Log, EvictingUnreadTrimmedEntriesIsALossToldToTheWorker)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    o.history = 1;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    b.publish("k", "the oldest retained");
    auto s = a.subscribe({"a"});
    std::vector<MessageId> ids;
    for (int i = 0; i < 40; i++) ids.push_back(b.publish("a", std::to_string(i)).id);
    EXPECT_EQ(z.channel("a")->log_refs, 39u);
    for (int i = 0; z.channel("a")->log_refs > 20; i++) {
        ASSERT_LT(i, 1000);
        b.publish("b" + std::to_string(i), std::string(300, 'b'));  // history 1: many channels
    }
    // The zone's oldest entries go first, retained or kept for the lagging worker: "k" (older
    // than all) went before them, and the unread ones evicted count as evicted messages.
    EXPECT_FALSE(b.info("k").exists) << "the oldest of the zone goes first";
    EXPECT_GE(z.sh()->evicted, 20u) << "the unread trimmed messages evicted are counted";
    EXPECT_EQ(b.info("a").messages, 1u);
    Page p = a.read_log();
    ASSERT_TRUE(p.has_gap("a"));
    MessageId upto = p.gaps[0].upto;
    for (const Msg &m : p.items) EXPECT_GT(m.id, upto);
    for (MessageId id : ids) {
        bool read =
            std::any_of(p.items.begin(), p.items.end(), [&](const Msg &m) { return m.id == id; });
        EXPECT_TRUE(read || id <= upto) << text(id);
    }
    ASSERT_FALSE(p.items.empty());
    EXPECT_EQ(p.items.back().id, ids.back());
    EXPECT_CONSISTENT(z);
}

TEST_F(Log, ExpiringUnreadEntriesIsALossToldToTheWorker)
{
    TestZone::Options o;
    o.ttl_ms = 1000;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"a"});
    b.publish("a", "1");
    MessageId second = b.publish("a", "2").id;
    ngxstub::advance_ms(1000);
    b.collect();
    Page p = a.read_log();
    EXPECT_TRUE(p.items.empty());
    ASSERT_TRUE(p.has_gap("a"));
    EXPECT_EQ(p.gaps[0].upto, second);
    EXPECT_TRUE(a.read_log().gaps.empty()) << "told once";
    EXPECT_CONSISTENT(z);
}

// More channels lost than a record has notices: the rest is one zone-wide mark.
TEST_F(Log, ManyLossesBecomeOneZoneWideMark)
{
    TestZone::Options o;
    o.bytes = 128 * 1024;
    o.history = 1;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    std::vector<std::string> chs;   // more channels than notices (two subscribers: 64 a request)
    for (size_t i = 0; i < kLossNotices + 16; i++) chs.push_back("c" + std::to_string(i));
    size_t half = chs.size() / 2;
    auto s1 = a.subscribe(std::vector<std::string>(chs.begin(), chs.begin() + half));
    auto s2 = a.subscribe(std::vector<std::string>(chs.begin() + half, chs.end()));
    for (int round = 0; round < 3; round++) {
        for (const std::string &c : chs) b.publish(c, "m");
    }
    for (int i = 0; i < 600; i++) b.publish("flood" + std::to_string(i), std::string(300, 'f'));
    Page p = a.read_log();
    EXPECT_EQ(p.gaps.size(), kLossNotices);
    EXPECT_NE(p.all_lost, MessageId{}) << "channels past the notices are covered by all_lost";
    // Whatever was published to c* and not read is covered by a gap or all_lost.
    std::map<std::string, MessageId> told;
    for (const Gap &g : p.gaps) told[g.channel] = g.upto;
    for (const std::string &c : chs) {
        MessageId covered = std::max(told.count(c) ? told[c] : MessageId{}, p.all_lost);
        bool any_read = std::any_of(p.items.begin(), p.items.end(),
                                    [&](const Msg &m) { return m.channel == c; });
        EXPECT_TRUE(any_read || covered != MessageId{}) << c;
    }
    EXPECT_CONSISTENT(z);
}

// A deletion marker freed before a lagging worker read it (evicted here; expiry takes the
// same path) is lost to that worker's subscribers like a message would be: they must be
// told, not left waiting on a channel that was deleted.
TEST_F(Log, ADeletionFreedBeforeALaggingWorkerReadItIsNotLostSilently)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    o.history = 1000;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"x"});
    b.publish("x", "m");
    ASSERT_TRUE(b.remove("x").ok());
    MessageId marker = z.channel("x")->slot(z.channel("x")->head_seq)->id;
    for (int i = 0; z.channel("x")->ring_len() > 0; i++) {
        ASSERT_LT(i, 1000);
        b.publish("f" + std::to_string(i % 50), std::string(300, 'f'));
    }
    Page p = a.read_log();
    bool delivered = std::any_of(p.items.begin(), p.items.end(),
                                 [](const Msg &m) { return m.kind == EntryKind::deleted; });
    bool told = p.all_lost >= marker || (p.has_gap("x") && p.gaps[0].upto >= marker);
    EXPECT_TRUE(delivered || told) << "the delete of x (" << text(marker) << ") vanished: gap upto "
                                   << (p.gaps.empty() ? std::string("none") : text(p.gaps[0].upto));
    EXPECT_CONSISTENT(z);
}

// A deletion reaches a live worker after the messages published before it (the worker
// had not read them: they wait in the log).
TEST_F(Log, ADeleteComesAfterTheMessagesBeforeIt)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"a", "b"});
    b.publish("a", "1");
    b.publish("b", "x");
    b.publish("a", "2");
    b.remove("a");
    b.publish("a", "3");
    Page p = a.read_log();
    EXPECT_EQ(p.data(), (std::vector<std::string>{"1", "x", "2", "<deleted a>", "3"}));
    EXPECT_TRUE(p.gaps.empty());
    EXPECT_CONSISTENT(z);
}

// A worker whose last subscriber left reads from "now" when one comes again: what was
// published meanwhile is nobody's news.
TEST_F(Log, AWorkerThatHeldNothingStartsAgainFromNow)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s = a.subscribe({"a"});
    b.publish("a", "1");
    EXPECT_EQ(a.read_log().data(), (std::vector<std::string>{"1"}));
    s->close();
    EXPECT_FALSE(a.record()->active);
    b.publish("a", "2");
    b.publish("a", "3");
    auto again = a.subscribe({"a"});
    b.publish("a", "4");
    EXPECT_EQ(a.read_log().data(), (std::vector<std::string>{"4"}));
    EXPECT_CONSISTENT(z);
}

}  // namespace
}  // namespace storetest
