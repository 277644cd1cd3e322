// A zone, its workers and their subscribers, driven the way nginx and the delivery layer
// drive the shared-memory store, in one test process (see ngx_stub.h for what stands in
// for nginx). Each simulated worker has its own ShmStore and ZoneSession, as each nginx
// worker has, and a live helper process whose pid it uses (the store checks liveness by
// pid and start time); calls run with ngx_pid set to that pid.
//
// TestZone::problems() asks the store's own Zone::check() and then checks more than it
// can: the tree's order, every log entry's place (ring slot or trimmed list), log_refs,
// bookmark counts, loss notices, the byte accounting against the stub pool's live bytes,
// channels nothing holds any more, and the zone's subscriber counts and wake bits
// against what the workers' registries hold.
#pragma once

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ngx_http_channels_shm.h"
#include "ngx_http_channels_zone_ops.h"
#include "ngx_stub.h"

namespace channels {
// gtest prints ids and statuses as text.
void PrintTo(const MessageId &id, std::ostream *os);
void PrintTo(const SubscribeStatus &status, std::ostream *os);
void PrintTo(const PublishCall::Status &status, std::ostream *os);
}  // namespace channels

namespace storetest {

using channels::Batch;
using channels::ChannelInfo;
using channels::EntryKind;
using channels::FirstMessage;
using channels::kMaxChannels;
using channels::kPageBytes;
using channels::kPageMessages;
using channels::LocalChannel;
using channels::MessageId;
using channels::PublishCall;
using channels::ReadPosition;
using channels::SubscribeStatus;

std::string text(MessageId id);
MessageId id_of(const std::string &text);

// A process that stays alive until killed or destroyed: a simulated worker's pid.
class LiveProcess {
public:
    LiveProcess();
    ~LiveProcess();
    LiveProcess(const LiveProcess &) = delete;
    LiveProcess &operator=(const LiveProcess &) = delete;
    pid_t pid() const { return pid_; }
    void kill_now();  // SIGKILL and reap: its pid is then dead

private:
    pid_t pid_ = -1;
    int fd_ = -1;
};

// Copies of what a Batch holds (its views point into it).
struct Msg {
    MessageId id;
    EntryKind kind = EntryKind::message;
    uint16_t index = 0;
    std::string channel, event, content_type, data;
};
struct Gap {
    uint16_t index = 0;
    std::string channel;
    MessageId oldest, upto;
};
struct Page {
    std::vector<Msg> items;
    std::vector<Gap> gaps;
    MessageId position, all_lost;
    bool more = false;
    size_t need_bytes = 0;

    std::vector<std::string> data() const;  // the items' data, in order
    std::vector<MessageId> ids() const;
    bool has_gap(const std::string &channel) const;
};
Page copy_of(const Batch &b);
// A batch as the delivery layer reserves one: kLogPageEntries items, `bytes` of data.
Batch make_batch(size_t bytes = kPageBytes);

struct Published {
    PublishCall::Status status = PublishCall::Status::failed;
    MessageId id;
    uint32_t subscribers = 0, messages = 0;
    ChannelInfo info;  // delete: the channel before
    bool ok() const { return status == PublishCall::Status::ok; }
};

struct SubOptions {
    std::optional<MessageId> cursor;
    FirstMessage first;
    bool existing_only = false;
    bool attach = true;
    bool only_if_empty = false;
    size_t limit = kPageMessages;
    size_t byte_limit = kPageBytes;
};

inline SubOptions from_cursor(MessageId cursor)
{
    SubOptions o;
    o.cursor = cursor;
    return o;
}
inline SubOptions first_oldest()
{
    SubOptions o;
    o.first.mode = FirstMessage::Mode::oldest;
    return o;
}
inline SubOptions first_last(uint32_t n)
{
    SubOptions o;
    o.first.mode = FirstMessage::Mode::last;
    o.first.last = n;
    return o;
}

class TestZone;
class Worker;

// One subscriber connection of a worker, as a transport holds it.
class Sub {
public:
    Sub(Worker &w, std::vector<std::string> ids);
    ~Sub();
    Sub(const Sub &) = delete;
    Sub &operator=(const Sub &) = delete;

    // The next replay page after the positions (read_page), moving the cursor as an SSE
    // stream does; byte_room: what its batch reserves for data.
    Page next_page(size_t limit = kPageMessages, size_t byte_limit = kPageBytes,
                   size_t byte_room = kPageBytes);
    // Pages until one comes without `more`; the items of all, and every page's gaps.
    std::vector<Msg> replay_all(std::vector<Gap> *gaps = nullptr);
    void leave(size_t index);  // the channel was deleted: its registry reference goes
    void close();              // the connection ends

    Worker &w;
    std::vector<std::string> ids;
    channels::ChannelList list;
    LocalChannel *locals[kMaxChannels] = {};
    ReadPosition pos[kMaxChannels];
    SubscribeStatus status = SubscribeStatus::ok;
    size_t failed_index = 0;
    bool attached = false;
    MessageId attached_at, cursor;
    Page first;
    bool closed = false;
};

class Listener : public channels::StoreListener {
public:
    void on_appended(uint64_t bits) override { appended.push_back(bits); }
    void on_rebuilt() override { rebuilt++; }
    std::vector<uint64_t> appended;
    int rebuilt = 0;
};

class Worker {
public:
    Worker(TestZone &zone, size_t index);
    ~Worker();
    Worker(const Worker &) = delete;
    Worker &operator=(const Worker &) = delete;

    ngx_pid_t pid() const { return proc.pid(); }
    channels::shm::WorkerRecord *record() const;

    Published publish(std::string_view channel, std::string_view data, std::string_view event = {},
                      std::string_view content_type = {});
    Published remove(std::string_view channel);
    ChannelInfo info(std::string_view channel);
    std::unique_ptr<Sub> subscribe(std::vector<std::string> ids, SubOptions o = {});
    Page read_log(bool woken = false, size_t byte_room = kPageBytes);
    // Delivery passes until the log has nothing more for this worker (a message larger
    // than a page is read again with a batch large enough, as the delivery layer does).
    std::vector<Page> drain_log();
    uint64_t ingest(EntryKind kind, MessageId id, std::string_view channel,
                    std::string_view data = {});
    void collect();
    void stop();     // the worker exits cleanly
    void die();      // killed: its record stays, its process is gone
    void abandon();  // no longer used, its process left running (a pid taken by another)
    size_t wake_targets(uint64_t bits, std::vector<ngx_pid_t> *pids);

    TestZone &zone;
    size_t index;
    LiveProcess proc;
    channels::ShmStore store;
    channels::ZoneSession session;
    Listener listener;
    bool started = false;
};

// Makes ngx_pid the worker's for the scope.
class As {
public:
    explicit As(const Worker &w) : saved_(ngx_pid) { ngx_pid = w.pid(); }
    ~As() { ngx_pid = saved_; }

private:
    ngx_pid_t saved_;
};

class TestZone {
public:
    struct Options {
        size_t bytes = 256 * 1024;
        uint64_t history = 100;
        uint64_t ttl_ms = 3600 * 1000;
        bool redis_ids = false;
        std::string name = "z";
        bool open_id_file = false;  // with ngxstub::set_pid_path() set by the test
    };
    explicit TestZone(Options o);
    TestZone() : TestZone(Options{}) {}
    ~TestZone();
    TestZone(const TestZone &) = delete;
    TestZone &operator=(const TestZone &) = delete;

    Worker &add_worker();  // started (start_worker) at once
    Worker &w(size_t i) { return *workers_.at(i); }
    size_t nworkers() const { return workers_.size(); }
    channels::shm::Shared *sh() const { return static_cast<channels::shm::Shared *>(pool->data); }
    size_t usable() const { return size_t(pool->end - pool->start); }
    // The zone's channel of that id (read without the lock: tests are one thread), or null.
    channels::shm::Channel *channel(std::string_view id) const;
    size_t nchannels() const { return size_t(sh()->nchannels); }

    // Everything that does not add up; counts: also the subscriber counts and wake bits
    // against the workers' registries (when every running worker is in step with the zone).
    std::vector<std::string> problems(bool counts = true);

    Options opts;
    ngx_slab_pool_t *pool;
    ngx_shm_zone_t shm_zone{};
    std::string name;
    channels::ShmStore master;  // the master's copy: init, id file

private:
    std::deque<std::unique_ptr<Worker>> workers_;
};

std::string join(const std::vector<std::string> &lines);

// The store check and the deep checks find nothing.
#define EXPECT_CONSISTENT(zone)                                       \
    do {                                                              \
        std::vector<std::string> problems_ = (zone).problems();       \
        EXPECT_TRUE(problems_.empty()) << storetest::join(problems_); \
    } while (0)

// Fails a test on [alert], [crit] or [emerg] lines, as every t/*.t does; prints the log
// of a failed test.
class StoreTest : public ::testing::Test {
protected:
    void SetUp() override;
    void TearDown() override;
};

}  // namespace storetest
