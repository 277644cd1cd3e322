// The zone's life outside the data path: ids across restarts and reloads (the id file, a
// resized zone), statistics, and a worker's registry (ZoneSession).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "store_harness.h"

extern "C" {
extern ngx_module_t ngx_http_channels_module;
}

namespace storetest {
namespace {

class ZoneLife : public StoreTest {
protected:
    void SetUp() override
    {
        StoreTest::SetUp();
        char tmpl[] = "/tmp/storeunit-XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        ngxstub::set_pid_path(dir_ + "/nginx.pid");
    }
    void TearDown() override
    {
        StoreTest::TearDown();  // closes the id file (the cycle pool's cleanup)
        std::remove(id_file().c_str());
        rmdir(dir_.c_str());
        ngxstub::set_pid_path("/nonexistent/nginx.pid");
        ngxstub::set_cycle_zones({});
    }
    std::string id_file() const { return dir_ + "/channels-z.id"; }
    std::string file_text() const
    {
        std::ifstream f(id_file());
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    }
    static TestZone::Options with_id_file()
    {
        TestZone::Options o;
        o.open_id_file = true;
        return o;
    }

    std::string dir_;
};

TEST_F(ZoneLife, TheIdFileIsAheadFromTheStartAndExactAtExit)
{
    TestZone z(with_id_file());
    Worker &w = z.add_worker();
    uint64_t t0 = ngxstub::time_ms();
    std::string text = file_text();
    ASSERT_EQ(text.size(), channels::kMaxIdText + 1)
        << "fixed width, so a rewrite covers the old text";
    EXPECT_EQ(id_of(text.substr(0, text.find(' '))), (MessageId{t0 + 2000, 0}));
    MessageId last = w.publish("a", "m").id;
    z.master.save_id_file();
    text = file_text();
    EXPECT_EQ(id_of(text.substr(0, text.find(' '))), (MessageId{t0 + 2000, 0}))
        << "the exact last id, or the mark promised to the clients if it is larger";
    EXPECT_LT(last, (MessageId{t0 + 2000, 0}));
}

// A restart after the master saved the last id, with the clock set back an hour: ids go
// on above every id of the last run.
TEST_F(ZoneLife, IdsGoOnAfterARestartWithTheClockSetBack)
{
    MessageId last;
    {
        TestZone z(with_id_file());
        Worker &w = z.add_worker();
        for (int i = 0; i < 5; i++) {
            ngxstub::advance_ms(700);
            last = w.publish("a", "m").id;
            w.collect();
        }
        z.master.save_id_file();
        ngxstub::run_cleanups();
    }
    ngxstub::advance_ms(uint64_t(-3600 * 1000));
    TestZone z(with_id_file());
    Worker &w = z.add_worker();
    EXPECT_GT(w.publish("a", "m").id, last);
}

// A crash of the whole server: nothing saved at exit, but the mark the workers keep ahead
// (collect, every second) already covers every id handed out.
TEST_F(ZoneLife, IdsGoOnAfterACrashWithTheClockSetBack)
{
    MessageId last;
    {
        TestZone z(with_id_file());
        Worker &w = z.add_worker();
        for (int i = 0; i < 20; i++) {
            ngxstub::advance_ms(300);
            for (int k = 0; k < 3; k++) last = w.publish("a", "m").id;
            if (i % 3 == 0) w.collect();  // about every second
        }
        ngxstub::run_cleanups();  // killed: no save_id_file()
    }
    ngxstub::advance_ms(uint64_t(-3600 * 1000));
    TestZone z(with_id_file());
    Worker &w = z.add_worker();
    EXPECT_GT(w.publish("a", "m").id, last);
}

TEST_F(ZoneLife, AnUnreadableIdFileIsIgnoredWithAWarning)
{
    {
        std::ofstream f(id_file());
        f << "garbage\n";
    }
    TestZone z(with_id_file());
    Worker &w = z.add_worker();
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_WARN, "ignoring unreadable"), 1u);
    EXPECT_EQ(w.publish("a", "m").id.ms, ngxstub::time_ms());
}

// A reload that resizes a zone makes a new one: its ids go on from the old zone's, even
// with the clock behind them.
TEST_F(ZoneLife, AResizedZoneGoesOnFromTheOldOnesIds)
{
    TestZone old_zone;
    Worker &w = old_zone.add_worker();
    ngxstub::advance_ms(5000);
    MessageId last = w.publish("a", "m").id;
    ngxstub::advance_ms(uint64_t(-10000));
    ngxstub::set_cycle_zones({old_zone.shm_zone});
    TestZone::Options o;
    o.bytes = 512 * 1024;
    TestZone resized(o);
    Worker &w2 = resized.add_worker();
    EXPECT_GT(w2.publish("a", "m").id, last);
    EXPECT_CONSISTENT(resized);
}

// A Redis zone takes Redis' ids: it starts at zero and keeps no id file.
TEST_F(ZoneLife, ARedisZoneStartsAtZeroWithoutAnIdFile)
{
    TestZone::Options o = with_id_file();
    o.redis_ids = true;
    TestZone z(o);
    EXPECT_EQ(z.sh()->last_id, MessageId{});
    EXPECT_EQ(access(id_file().c_str(), F_OK), -1);
}

// A reload keeps the zone: the new cycle's store adopts it, with the new history and ttl.
TEST_F(ZoneLife, AReloadAdoptsTheZoneWithNewSettings)
{
    TestZone z;
    Worker &w = z.add_worker();
    for (int i = 0; i < 5; i++) w.publish("a", std::to_string(i));
    channels::ShmStore reloaded(
        &z.shm_zone, ngx_str_t{z.name.size(), reinterpret_cast<u_char *>(z.name.data())}, 2, 5000);
    ASSERT_EQ(reloaded.init(true), NGX_OK);
    EXPECT_EQ(z.sh()->history, 2u);
    EXPECT_EQ(z.sh()->ttl_ms, 5000u);
    EXPECT_EQ(w.info("a").messages, 5u) << "kept until the next publish trims";
    w.publish("a", "5");
    EXPECT_EQ(w.info("a").messages, 2u);
    EXPECT_CONSISTENT(z);
}

TEST_F(ZoneLife, AZoneLaidOutByOtherCodeIsRefused)
{
    TestZone z;
    z.sh()->layout += 1;
    channels::ShmStore reloaded(
        &z.shm_zone, ngx_str_t{z.name.size(), reinterpret_cast<u_char *>(z.name.data())}, 2, 5000);
    EXPECT_EQ(reloaded.init(true), NGX_ERROR);
    EXPECT_EQ(ngxstub::count_log(NGX_LOG_EMERG, "laid out by another version"), 1u);
    z.sh()->layout -= 1;
    ngxstub::clear_log();  // the emerg line was the point
}

TEST_F(ZoneLife, StatsAddUp)
{
    TestZone::Options o;
    o.bytes = 64 * 1024;
    o.history = 2;
    TestZone z(o);
    Worker &a = z.add_worker();
    Worker &b = z.add_worker();
    auto s1 = a.subscribe({"x", "y"});
    auto s2 = b.subscribe({"x"});
    for (int i = 0; i < 5; i++) a.publish("x", "m");
    for (int i = 0; i < 300; i++) a.publish("f" + std::to_string(i), std::string(200, 'f'));
    As as(a);
    a.store.count_delivered(7);
    a.store.count_dropped_slow();
    channels::ZoneStats st = a.store.stats();
    EXPECT_EQ(st.size, o.bytes);
    EXPECT_EQ(st.used, ngxstub::live_bytes(z.pool) / 4096 * 4096 +
                           (ngxstub::live_bytes(z.pool) % 4096 ? 4096 : 0))
        << "used: the pool's pages not free";
    EXPECT_EQ(st.channels, z.sh()->nchannels);
    EXPECT_EQ(st.messages, z.sh()->nmessages);
    EXPECT_EQ(st.subscribers, 2u);
    EXPECT_EQ(st.published, 305u);
    EXPECT_EQ(st.delivered, 7u);
    EXPECT_EQ(st.dropped_slow, 1u);
    EXPECT_GT(st.evicted, 0u);
    EXPECT_EQ(st.idle_cap, o.bytes / 8);
    EXPECT_EQ(st.last_id, z.sh()->last_id);
    ASSERT_EQ(st.workers.size(), 2u);
    EXPECT_EQ(st.workers[0].pid, a.pid());
    EXPECT_EQ(st.workers[0].subscribers, 1u);
    EXPECT_EQ(st.workers[1].subscribers, 1u);
}

// ---- the worker's registry ----

TEST_F(ZoneLife, TheRegistryFindsPreparesCommitsAndForgets)
{
    channels::ZoneSession s;
    s.log = ngxstub::log();
    std::vector<LocalChannel *> lcs;
    for (int i = 0; i < 1000; i++) {
        LocalChannel *lc = s.prepare("ch" + std::to_string(i));
        ASSERT_NE(lc, nullptr);
        EXPECT_FALSE(lc->registered);
        EXPECT_EQ(s.find("ch" + std::to_string(i)), nullptr) << "prepared is not registered";
        s.commit(lc);
        lcs.push_back(lc);
    }
    EXPECT_EQ(s.size(), 1000u);
    for (int i = 0; i < 1000; i++) EXPECT_EQ(s.find("ch" + std::to_string(i)), lcs[i]);
    EXPECT_EQ(s.prepare("ch5"), lcs[5]) << "preparing a registered id gives it";
    LocalChannel *tmp = s.prepare("temporary");
    EXPECT_EQ(s.size(), 1001u) << "room is counted for a prepared one";
    s.discard(tmp);
    EXPECT_EQ(s.size(), 1000u);
    for (int i = 0; i < 1000; i += 2) s.forget(lcs[i]);
    EXPECT_EQ(s.size(), 500u);
    size_t seen = 0;
    s.for_each([&](LocalChannel *lc) {
        seen++;
        EXPECT_EQ(std::stoi(std::string(lc->name().substr(2))) % 2, 1);
    });
    EXPECT_EQ(seen, 500u);
    EXPECT_EQ(s.find("ch4"), nullptr);
    EXPECT_EQ(s.find("ch5"), lcs[5]);
    std::string longest(255, 'z');
    LocalChannel *lc = s.prepare(longest);
    s.commit(lc);
    EXPECT_EQ(s.find(longest)->name(), longest);
}

}  // namespace
}  // namespace storetest
