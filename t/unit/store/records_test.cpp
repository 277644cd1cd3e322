// Worker records: wake bits, workers that exit or die, the count epochs that let live
// workers put their subscriber counts back, and the rebuild after a worker died in the
// middle of an update (SPEC §7).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>

#include "ngx_http_channels_fault.h"
#include "store_harness.h"

namespace storetest {
namespace {

using namespace channels::shm;

class Records : public StoreTest {};

size_t nrecords(TestZone &z)
{
    size_t n = 0;
    for (ngx_queue_t *q = ngx_queue_head(&z.sh()->records);
         q != ngx_queue_sentinel(&z.sh()->records); q = ngx_queue_next(q)) {
        n++;
    }
    return n;
}

TEST_F(Records, WorkersGetTheLowestFreeBit)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    Worker &c = z.add_worker();
    EXPECT_EQ(a.record()->bit, 0u);
    EXPECT_EQ(b.record()->bit, 1u);
    EXPECT_EQ(c.record()->bit, 2u);
    EXPECT_EQ(a.record()->pid, a.pid());
    uint32_t version = z.sh()->records_version;
    b.stop();
    EXPECT_EQ(nrecords(z), 2u);
    EXPECT_GT(z.sh()->records_version, version);
    Worker &d = z.add_worker();
    EXPECT_EQ(d.record()->bit, 1u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Records, AWorkerThatExitsReleasesWhatItHeld)
{
    TestZone::Options o;
    o.history = 1;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sa1 = a.subscribe({"shared", "only-a"});
    auto sa2 = a.subscribe({"shared"});
    auto sb = b.subscribe({"shared"});
    for (int i = 0; i < 5; i++) b.publish("shared", "m");  // trimmed entries wait for a
    EXPECT_EQ(z.channel("shared")->log_refs, 4u);
    a.stop();
    EXPECT_EQ(z.channel("only-a"), nullptr);
    EXPECT_EQ(z.channel("shared")->subscribers, 1u);
    EXPECT_EQ(z.sh()->connections, 1u);
    EXPECT_EQ(z.channel("shared")->log_refs, 4u) << "b has not read them either";
    EXPECT_EQ(b.read_log().items.size(), 5u);
    EXPECT_EQ(z.channel("shared")->log_refs, 0u);
    EXPECT_CONSISTENT(z);
}

// A killed worker leaves its record; the next worker to collect finds its process gone,
// drops the record and resets the counts, which each live worker puts back at its next
// call (count epochs). What only the dead worker held goes.
TEST_F(Records, ADeadWorkersRecordIsDroppedAndCountsArePutBack)
{
    TestZone::Options o;
    o.history = 1;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    Worker &c = z.add_worker();
    auto sa = a.subscribe({"shared", "only-a"});
    auto sb = b.subscribe({"shared"});
    auto sb2 = b.subscribe({"shared", "b2"});
    auto sc = c.subscribe({"shared"});
    for (int i = 0; i < 3; i++) c.publish("shared", "m");
    b.read_log();
    c.read_log();
    EXPECT_EQ(z.channel("shared")->log_refs, 2u) << "kept for a, which has not read";
    uint32_t epoch = z.sh()->count_epoch;
    a.die();
    b.collect();
    EXPECT_EQ(nrecords(z), 2u);
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_NOTICE, "releasing subscribers of exited worker " +
                                                     std::to_string(a.pid())),
              1u);
    EXPECT_EQ(z.sh()->count_epoch, epoch + 1);
    EXPECT_EQ(z.channel("only-a"), nullptr);
    EXPECT_EQ(z.channel("shared")->log_refs, 0u) << "nothing waits for a dead worker";
    EXPECT_EQ(z.sh()->connections, 3u);
    ASSERT_FALSE(b.listener.appended.empty()) << "live workers are woken to put their counts back";
    EXPECT_EQ(b.listener.appended.back(),
              (uint64_t(1) << b.record()->bit) | (uint64_t(1) << c.record()->bit));
    // Until a live worker is in step again its channels lack its counts, but are kept.
    ASSERT_NE(z.channel("b2"), nullptr);
    b.read_log();
    c.read_log();
    EXPECT_EQ(z.channel("shared")->subscribers, 3u);
    EXPECT_EQ(z.channel("b2")->subscribers, 1u);
    EXPECT_EQ(b.publish("shared", "x").subscribers, 3u);
    EXPECT_CONSISTENT(z);
}

TEST_F(Records, ADeadWorkerThatHeldNothingChangesNoCount)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sb = b.subscribe({"x"});
    uint32_t epoch = z.sh()->count_epoch;
    a.die();
    b.collect();
    EXPECT_EQ(nrecords(z), 1u);
    EXPECT_EQ(z.sh()->count_epoch, epoch);
    EXPECT_CONSISTENT(z);
}

// A new worker drops the record of the crashed one it replaces, whatever its pid.
TEST_F(Records, ANewWorkerDropsTheRecordsOfDeadOnes)
{
    TestZone z;
    Worker &a = z.add_worker();
    auto sa = a.subscribe({"x"});
    a.die();
    z.add_worker();  // replaces it: claims its own record, then drops the dead one
    EXPECT_EQ(nrecords(z), 1u);
    EXPECT_EQ(z.channel("x"), nullptr);
    Worker &c = z.add_worker();
    EXPECT_EQ(c.record()->bit, 0u) << "the dead worker's bit is free again";
    EXPECT_CONSISTENT(z);
}

// A pid handed to another process: the start time tells the record's worker is gone.
TEST_F(Records, APidTakenByAnotherProcessIsADeadWorker)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sa = a.subscribe({"x"});
    ASSERT_NE(a.record()->start_time, 0u) << "/proc gives the helper's start time";
    a.record()->start_time += 1;  // the live process with a's pid started at another time
    a.abandon();
    b.collect();
    EXPECT_EQ(nrecords(z), 1u);
    EXPECT_EQ(z.channel("x"), nullptr);
    EXPECT_CONSISTENT(z);
}

TEST_F(Records, ALiveProcessWithAnUnknownStartTimeIsKept)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    a.record()->start_time = 0;
    b.collect();
    EXPECT_EQ(nrecords(z), 2u);
    EXPECT_CONSISTENT(z);
}

// More than 64 records (e.g. many workers across a reload): wake bits are shared. A
// channel a worker subscribed to and left must still go once nothing holds it.
TEST_F(Records, ChannelsGoWhenLeftUnderASharedWakeBit)
{
    TestZone::Options o;
    o.bytes = 1 << 20;
    TestZone z(o);
    for (int i = 0; i < 65; i++) z.add_worker();
    Worker &w65 = z.w(64);
    EXPECT_EQ(w65.record()->bit, z.w(0).record()->bit) << "the 65th record shares a bit";
    auto s = w65.subscribe({"x"});
    z.w(1).publish("x", "m");
    std::vector<ngx_pid_t> pids;
    z.w(1).wake_targets(z.w(1).listener.appended.back(), &pids);
    EXPECT_NE(std::find(pids.begin(), pids.end(), w65.pid()), pids.end());
    EXPECT_EQ(w65.read_log().data(), (std::vector<std::string>{"m"}));
    z.w(1).remove("x");
    w65.read_log();
    s->close();
    EXPECT_EQ(z.channel("x") ? z.channel("x")->wake_bits : 0, 0u) << "a wake bit nobody holds";
    EXPECT_FALSE(w65.info("x").exists) << "deleted: only its marker is kept";
    auto s2 = w65.subscribe({"y"});
    s2->close();
    EXPECT_EQ(z.channel("y"), nullptr)
        << "an idle channel kept forever counts against the idle cap";
    EXPECT_EQ(z.sh()->idle_bytes, 0u);
    EXPECT_CONSISTENT(z);
}

// ---- the rebuild after a torn update ----

// Runs fn in a child process with CHANNELS_FAULTS=zone_update_kill=1: the child kills itself
// at the first kill point, holding the zone lock, in the middle of an update. Returns
// whether it died that way.
bool die_in_child(const std::function<void()> &fn)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("CHANNELS_FAULTS", "zone_update_kill=1", 1);
        ngx_pid = getpid();
        channels::fault::configure(ngxstub::log());
        fn();
        _exit(3);  // no kill point reached
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

TEST_F(Records, AWorkerKilledInsideAPublishLeavesAZoneThatIsRebuilt)
{
    TestZone::Options o;
    o.history = 1000;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto live = a.subscribe({"a", "b"});
    std::vector<MessageId> ids;
    for (int i = 0; i < 10; i++) ids.push_back(b.publish(i % 2 ? "a" : "b", std::to_string(i)).id);
    SubOptions so = from_cursor(ids[0]);
    so.limit = 2;
    auto replay = b.subscribe({"a", "b"}, so);
    EXPECT_EQ(replay->first.items.size(), 2u);
    EXPECT_EQ(a.read_log().items.size(), 10u);
    uint32_t generation = z.sh()->generation;
    MessageId before = z.sh()->last_id;

    ASSERT_TRUE(die_in_child([&] { b.publish("a", "torn"); }));
    EXPECT_EQ(z.sh()->updating, 1) << "the child died marking the zone as being updated";
    EXPECT_FALSE(ngxstub::locked(z.pool)) << "the master unlocks a dead process's lock";

    // The next lock, any worker's, rebuilds it.
    Page p = a.read_log();
    EXPECT_EQ(z.sh()->generation, generation + 1);
    EXPECT_EQ(z.sh()->rebuilds, 1u);
    EXPECT_EQ(z.sh()->published, 10u);
    EXPECT_EQ(a.listener.rebuilt, 1);
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_WARN, "left half-updated by process"), 1u);
    EXPECT_TRUE(p.items.empty());
    EXPECT_GT(p.all_lost, before) << "live subscribers are told that everything may be lost";
    EXPECT_GT(z.sh()->last_id, before) << "the torn publish's id is not handed out again";
    // The worker that rebuilt wakes the others (delivery's on_rebuilt): each puts its
    // subscribers back, and gets what comes next.
    EXPECT_TRUE(b.read_log().items.empty());
    EXPECT_EQ(b.publish("a", "after").subscribers, 2u);
    MessageId after = z.sh()->last_id;
    EXPECT_GT(after, before);
    EXPECT_EQ(a.read_log().data(), (std::vector<std::string>{"after"}));
    // The replaying subscriber finds its place again by its cursor, told of the loss.
    std::vector<Gap> gaps;
    std::vector<Msg> rest = replay->replay_all(&gaps);
    EXPECT_FALSE(gaps.empty());
    for (const Msg &m : rest) EXPECT_GT(m.id, before);
    EXPECT_CONSISTENT(z);
}

// Between a rebuild and another worker's next call (it is woken by the one that rebuilt),
// messages may be published to its channels. Its live subscribers must get them, or be
// told they lost them: never miss them silently.
TEST_F(Records, AfterARebuildAWorkerPutBackLateMissesNothingUntold)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sb = b.subscribe({"x"});
    a.publish("x", "before");
    EXPECT_EQ(b.read_log().data(), (std::vector<std::string>{"before"}));
    ASSERT_TRUE(die_in_child([&] { a.publish("y", "torn"); }));
    a.read_log();  // a's lock rebuilds the zone; b is woken, but has not run yet
    ngxstub::advance_ms(5);
    MessageId p = a.publish("x", "published meanwhile").id;
    Page got = b.read_log();
    bool delivered = got.data() == std::vector<std::string>{"published meanwhile"};
    bool told = got.all_lost >= p || (got.has_gap("x") && got.gaps[0].upto >= p);
    EXPECT_TRUE(delivered || told)
        << "lost silently: " << text(p) << " neither read nor covered (all_lost "
        << text(got.all_lost) << ", read_upto of the new record " << text(b.record()->read_upto)
        << ")";
    EXPECT_CONSISTENT(z);
}

TEST_F(Records, AWorkerKilledInsideASubscribeLeavesAZoneThatIsRebuilt)
{
    TestZone z;
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto sa = a.subscribe({"kept"});
    b.publish("kept", "1");
    ASSERT_TRUE(die_in_child([&] { b.subscribe({"new1", "new2", "kept"}); }));
    EXPECT_EQ(b.info("kept").subscribers, 0u) << "b's lock rebuilt the zone; a is not back yet";
    EXPECT_EQ(b.listener.rebuilt, 1);
    a.read_log();
    EXPECT_EQ(b.info("kept").subscribers, 1u);
    EXPECT_EQ(z.channel("new1"), nullptr);
    EXPECT_CONSISTENT(z);
}

// A zone found marked as being updated, whatever else it holds, is rebuilt before anyone
// reads it, keeping its counters and its ids.
TEST_F(Records, AZoneLeftMarkedIsRebuiltKeepingIdsAndCounters)
{
    TestZone z;
    Worker &a = z.add_worker();
    for (int i = 0; i < 5; i++) a.publish("x", "m");
    MessageId last = z.sh()->last_id;
    z.sh()->updating = 1;
    z.sh()->updater = 12345;
    EXPECT_FALSE(a.info("x").exists);
    EXPECT_EQ(z.sh()->published, 5u);
    EXPECT_EQ(z.sh()->rebuilds, 1u);
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_WARN, "by process 12345"), 1u);
    EXPECT_GT(a.publish("x", "again").id, last);
    auto s = a.subscribe({"x"}, from_cursor(last));
    EXPECT_EQ(s->first.data(), (std::vector<std::string>{"again"}));
    EXPECT_CONSISTENT(z);
}

// After a rebuild a worker holding more channels than the idle cap takes puts them all back
// (the zone was just emptied: it takes them as it can).
TEST_F(Records, ARebuildPutsBackMoreChannelsThanTheIdleCap)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    TestZone z(o);
    Worker &a = z.add_worker();
    std::vector<std::unique_ptr<Sub>> subs;
    for (int i = 0; i < 80; i++) {
        a.publish("c" + std::to_string(i), "m");  // channels with messages: not capped
        subs.push_back(a.subscribe({"c" + std::to_string(i)}));
        ASSERT_EQ(subs.back()->status, SubscribeStatus::ok);
    }
    z.sh()->updating = 1;
    a.read_log();
    EXPECT_EQ(z.nchannels(), 80u);
    EXPECT_GT(z.sh()->idle_bytes, z.sh()->idle_cap) << "(the case this test is about)";
    for (auto &s : subs) s->close();
    EXPECT_EQ(z.nchannels(), 0u);
    EXPECT_CONSISTENT(z);
}

}  // namespace
}  // namespace storetest
