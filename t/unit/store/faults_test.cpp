// The store when allocations fail: a slab fuller than the budgets say (fragmentation), a
// ring that cannot grow, no room for a worker record. Nothing leaks, nothing is left half
// done, and the zone recovers when memory comes back.
#include "store_harness.h"

namespace storetest {
namespace {

using namespace channels::shm;
using Status = PublishCall::Status;

class Faults : public StoreTest {};

// nginx's slab loses room to partly used pages: it may be full while the messages are
// under their budget. Publishes then evict until their allocation succeeds; a subscriber
// of a new channel, which never evicts, is refused (no_memory: 503).
TEST_F(Faults, ASlabFullBeforeTheBudgetsStillTakesPublishes)
{
    TestZone::Options o;
    o.bytes = 128 * 1024;
    TestZone z(o);
    Worker &w = z.add_worker();
    ngxstub::set_capacity(z.pool, z.usable() * 3 / 4);
    for (int i = 0; i < 500; i++) {
        ASSERT_TRUE(w.publish("c" + std::to_string(i % 6), std::string(300, 'x')).ok()) << i;
    }
    EXPECT_GT(z.sh()->evicted, 0u);
    EXPECT_LT(z.sh()->message_bytes, z.sh()->message_budget)
        << "evicted for the slab, not the budget";
    // Publishes evict ahead to keep free pages for idle channels (Zone::keep_headroom): the
    // allocator is not run dry by them.
    EXPECT_EQ(ngxstub::allocs_failed(z.pool), 0u);
    auto idle = w.subscribe({"idle-channel"});
    EXPECT_EQ(idle->status, SubscribeStatus::ok) << "room kept for a channel without messages";
    idle->close();
    ngxstub::set_capacity(z.pool, ngxstub::live_bytes(z.pool));  // not one slot left
    uint64_t messages = z.sh()->nmessages;
    auto s = w.subscribe({"new"});
    EXPECT_EQ(s->status, SubscribeStatus::no_memory);
    EXPECT_EQ(z.sh()->nmessages, messages) << "a subscriber evicted messages";
    EXPECT_EQ(z.channel("new"), nullptr);
    auto existing = w.subscribe({"c1"});
    EXPECT_EQ(existing->status, SubscribeStatus::ok) << "existing channels cost nothing";
    EXPECT_CONSISTENT(z);
}

// A ring that cannot grow: the entry allocated for the message is given back and the
// publish fails (or, once evicting made room, succeeds); nothing is left half appended.
TEST_F(Faults, ARingThatCannotGrow)
{
    TestZone z;
    Worker &w = z.add_worker();
    auto s = w.subscribe({"a"});
    w.publish("a", "1");
    w.publish("a", "2");  // a ring of 2: the next append grows it to 4
    w.publish("other", "o");
    size_t ring4 = 4 * sizeof(Entry *);
    int failures = 1;
    ngxstub::fail_allocs_if(z.pool, [&](size_t size) { return size == ring4 && failures-- > 0; });
    Published p = w.publish("a", "3");
    EXPECT_TRUE(p.ok()) << "one failure: evicting the oldest entry made room";
    EXPECT_EQ(w.info("a").messages, 2u) << "the oldest of the zone went for it";
    EXPECT_CONSISTENT(z);
    ngxstub::fail_allocs_if(z.pool, [&](size_t size) { return size == 8 * sizeof(Entry *); });
    for (int i = 4; i < 6; i++) w.publish("a", std::to_string(i));
    p = w.publish("a", "6");  // the ring of 4 is full: growing to 8 always fails
    EXPECT_EQ(p.status, Status::too_large);
    EXPECT_CONSISTENT(z);
    ngxstub::fail_allocs_if(z.pool, nullptr);
    EXPECT_TRUE(w.publish("a", "7").ok());
    EXPECT_EQ(w.read_log().data().back(), "7");
    EXPECT_CONSISTENT(z);
}

// No room for a worker record at start: the worker says so ([alert]), refuses subscribers,
// still publishes, and claims its record at its first call once there is room.
TEST_F(Faults, NoRoomForAWorkerRecord)
{
    TestZone z;
    Worker &a = z.add_worker();
    ngxstub::fail_allocs_if(z.pool, [](size_t size) { return size == sizeof(WorkerRecord); });
    Worker &b = z.add_worker();
    EXPECT_EQ(b.record(), nullptr);
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_ALERT, "has no room for a worker record"), 1u);
    ngxstub::clear_log();  // the alert was the point
    EXPECT_EQ(b.subscribe({"x"})->status, SubscribeStatus::no_memory);
    EXPECT_EQ(z.channel("x"), nullptr);
    EXPECT_TRUE(b.publish("x", "m").ok());
    EXPECT_TRUE(b.read_log().items.empty());
    ngxstub::fail_allocs_if(z.pool, nullptr);
    auto s = b.subscribe({"x"});
    EXPECT_EQ(s->status, SubscribeStatus::ok);
    ASSERT_NE(b.record(), nullptr);
    a.publish("x", "after");
    EXPECT_EQ(b.read_log().data(), (std::vector<std::string>{"after"}));
    EXPECT_CONSISTENT(z);
}

}  // namespace
}  // namespace storetest
