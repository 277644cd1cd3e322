// The store interface: what the transports (sse, longpoll, publish, stats) and the
// per-worker delivery see of a channel_zone. Two implementations: the shared-memory store
// (ngx_http_channels_shm.h) and the Redis-backed store (ngx_http_channels_redis.h), which
// keeps the shared-memory store as its local cache and fan-out point.
//
// Nothing here exposes a shared-memory struct or a request: callers get copies in worker
// memory (Batch) and opaque keys. Every call that touches the zone locks it once and does a
// bounded amount of work under the lock (a page: at most kPageMessages messages or
// kPageBytes bytes, plus its channel count), never work proportional to the history.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <cstdint>
#include <string_view>
#include <vector>

#include "channels/channel_list.h"
#include "channels/ids.h"
#include "channels/json_writer.h"

namespace channels {

// Wall clock in milliseconds (nginx's cached time).
inline uint64_t now_ms() {
    ngx_time_t *tp = ngx_timeofday();
    return uint64_t(tp->sec) * 1000 + tp->msec;
}

// Opaque identity of a channel in the zone (valid while some local subscriber holds it,
// for the zone generation it was obtained in).
using ChannelKey = uintptr_t;

enum class EntryKind : uint8_t { message, deleted };

inline constexpr size_t kMaxContentTypeLen = 255;
inline constexpr size_t kPageMessages = 64;          // one replay page, at most
inline constexpr size_t kPageBytes = 256 * 1024;     // ... and this much data (but one message)
inline constexpr size_t kLogPageEntries = 1024;      // a delivery pass reads this many log entries at most
inline constexpr ngx_msec_t kRetryAfterSeconds = 5;  // told to subscribers refused for lack of room

// A retained message (or a channel-deleted marker) copied into worker memory.
struct MessageCopy {
    MessageId id;
    EntryKind kind = EntryKind::message;
    uint16_t channel_index = 0;    // replay pages: which of the reader's channels
    std::string_view channel_id, event, content_type, data;   // into Batch::bytes
};

// A channel whose messages after a reader's position were evicted, expired or trimmed
// (replay), or freed before this worker read them (delivery: lost up to `upto`).
struct GapInfo {
    uint16_t channel_index = 0;
    std::string_view channel_id;   // into Batch::bytes
    MessageId oldest;              // oldest retained (zero when none)
    MessageId upto;                // delivery: the newest id lost
};

// Messages copied out of the zone under one lock, in id order. Capacity is reserved before
// locking (nothing is allocated under the lock): a batch that fills up stops with `more`, or
// with need_bytes when a single message does not fit (the caller grows it and reads again).
// Views point into `bytes`, so a Batch moves but never copies.
struct Batch {
    Batch() = default;
    Batch(Batch &&) = default;
    Batch &operator=(Batch &&) = default;
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;

    // Reserves room for n messages and `bytes` bytes; false when memory is short.
    bool reserve(size_t n, size_t nbytes) noexcept;
    void clear() noexcept;
    // Under the lock: copies the strings of one message if they fit, else returns false.
    bool fits(size_t nbytes) const { return bytes.size() + nbytes <= bytes.capacity(); }
    std::string_view keep(std::string_view s);

    std::vector<MessageCopy> items;
    std::vector<GapInfo> gaps;
    std::vector<char> bytes;
    MessageId position;            // the zone's newest id when the batch was read
    MessageId all_lost;            // delivery: every channel may have lost messages up to here
    bool more = false;             // a limit cut the batch short
    size_t need_bytes = 0;         // the next message needs a batch this large
    // Delivery's own: the pass that read it, and the next pass's batch (WorkerZone::passes).
    uint64_t pass = 0;
    Batch *next_pass = nullptr;
};

struct ChannelInfo {
    bool exists = false;           // published and not deleted, or waited on
    bool published = false;        // published and not deleted (channel_existing_only)
    uint32_t messages = 0;
    uint32_t subscribers = 0;
    MessageId newest, oldest;      // zero when the channel holds no message
};

struct PublishInput {
    std::string_view channel, data, event, content_type;
};

// One publish or delete in flight. The transport owns it (it lives in the request's pool);
// the store answers by calling done(), at once or later (Redis), unless cancel() came first.
struct PublishCall {
    enum class Status { ok, not_found, too_large, unavailable, failed };

    PublishInput in;
    bool remove = false;
    void (*done)(PublishCall *call) = nullptr;
    void *owner = nullptr;

    // The answer.
    Status status = Status::ok;
    MessageId id;                  // of the published message
    uint32_t subscribers = 0;      // this host's, at publish time
    uint32_t messages = 0;         // retained now
    ChannelInfo info;              // delete: the channel before it was deleted
    void *store_data = nullptr;    // the store's own bookkeeping while pending
};

// channel_first_message: what a subscriber without a cursor gets first.
struct FirstMessage {
    enum class Mode : uint8_t { newest, oldest, last } mode = Mode::newest;
    uint32_t last = 0;             // Mode::last: the last N of each channel
};

// The worker's view of a channel it holds subscribers of (worker memory). Lives in the
// worker's registry (ngx_http_channels_session.h); the delivery layer links its subscribers.
struct LocalChannel;

// Where a reader stands in one channel: the channel's sequence number of the next entry to
// read. Entries of a channel are numbered as they are appended; its retained ones always
// have consecutive numbers, so a position reads on in O(1) whatever the history.
struct ReadPosition {
    LocalChannel *channel = nullptr;
    uint32_t seq = 0;
    uint16_t generation = 0;       // (the low bits of) the zone generation seq belongs to
    bool active = true;            // false once left (deleted)
    bool positioned = false;
};

enum class SubscribeStatus { ok, not_found, over_cap, no_memory };

struct SubscribeQuery {
    const ChannelList *list = nullptr;
    LocalChannel **locals = nullptr;          // per list item, from registry_prepare()
    bool has_cursor = false;
    MessageId cursor;
    FirstMessage first;                       // used when !has_cursor
    bool existing_only = false;               // channel_existing_only: 404 for missing channels
    bool attach = true;                       // register the subscriber
    bool attach_only_if_empty = false;        // long-poll: only when nothing is there to answer
    size_t limit = kPageMessages;             // the first page
    size_t byte_limit = kPageBytes;
};

struct SubscribeResult {
    SubscribeStatus status = SubscribeStatus::ok;
    size_t failed_index = 0;                  // not_found/over_cap: the channel it is about
    bool attached = false;
    MessageId attached_at;                    // the zone position it starts from
};

struct ZoneStats {
    size_t size = 0, used = 0;
    uint64_t channels = 0, messages = 0, subscribers = 0;
    uint64_t published = 0, delivered = 0, evicted = 0, dropped_slow = 0;
    uint64_t idle_bytes = 0, idle_cap = 0, rebuilds = 0;
    MessageId last_id;
    struct Worker {
        ngx_pid_t pid;
        uint64_t subscribers, wakeups, entries_read;
    };
    std::vector<Worker> workers;
};

struct ChannelListing {
    struct Row {
        std::string id;
        uint32_t messages, subscribers;
        MessageId newest;
    };
    std::vector<Row> rows;
    bool more = false;
};

struct ZoneCheck {
    std::vector<std::string> problems;
};

class ZoneSession;

// A worker to wake: its pid and the nonce its wake-up socket's name ends with (0: none).
struct WakeTarget {
    ngx_pid_t pid;
    uint32_t  nonce;
};

// Told by the store that entries were appended to the log (wake_bits: worker records that
// hold subscribers of the channel). Implemented by the delivery layer; the store never
// calls upward otherwise.
class StoreListener {
public:
    virtual void on_appended(uint64_t wake_bits) = 0;
    // The zone was rebuilt (a worker died mid-update): every worker must put its
    // subscriptions back, including those no record of the new zone knows yet.
    virtual void on_rebuilt() = 0;

protected:
    ~StoreListener() = default;
};

class Store {
public:
    // ---- publish side ----
    // Starts a publish or delete; NGX_OK: call->done() has run; NGX_AGAIN: it will run
    // later (or never, after cancel()).
    virtual ngx_int_t start(PublishCall *call) = 0;
    virtual void cancel(PublishCall *call) = 0;
    virtual ChannelInfo info(std::string_view channel) = 0;
    // The zone's newest id: a cursor that misses nothing published after now.
    virtual MessageId position() = 0;

    // ---- worker life ----
    virtual ngx_int_t start_worker(ngx_cycle_t *cycle, ZoneSession *session, StoreListener *listener) = 0;
    virtual void stop_worker(ZoneSession *session) = 0;
    // Housekeeping (one worker, every second); true: expired or released entries are left,
    // to be taken by sweep() rounds between other events.
    virtual bool collect(ZoneSession *session) = 0;
    virtual bool sweep() = 0;   // one more short round of that; true: more is left

    // ---- subscriber side ----
    virtual SubscribeResult subscribe(ZoneSession &s, const SubscribeQuery &q, ReadPosition *positions,
                                      Batch &first_page) = 0;
    // Drops one local reference per channel (a subscriber gone or a channel left).
    virtual void unsubscribe(ZoneSession &s, LocalChannel *const *channels, size_t n,
                             bool count_connection) = 0;
    // The next page of a reader's channels after its positions, in id order (a replay
    // catching up). Markers of deletions newer than news_after are included in order.
    virtual void read_page(ZoneSession &s, ReadPosition *positions, size_t n, MessageId cursor,
                           MessageId news_after, size_t limit, size_t byte_limit, Batch &out) = 0;
    // The next log entries this worker has not read, of channels it holds (delivery pass;
    // woken: the pass was started by a wake-up, counted in the stats).
    virtual void read_log(ZoneSession &s, Batch &out, bool woken) = 0;

    // Processes (other than this one) of worker records holding any of the bits: whom to
    // wake. Returns how many were written (at most max).
    virtual size_t wake_targets(uint64_t bits, WakeTarget *targets, size_t max) = 0;

    // ---- counters and administration ----
    virtual void count_delivered(uint64_t n) = 0;
    virtual void count_dropped_slow() = 0;
    virtual ZoneStats stats() = 0;
    virtual ChannelListing list(std::string_view prefix, std::string_view after, size_t limit) = 0;
    virtual ZoneCheck check() = 0;
    // Extra members of the zone's stats object (Redis: its link).
    virtual void append_stats(JsonWriter<StringSink> &w) = 0;

    virtual std::string_view name() const = 0;

protected:
    ~Store() = default;
};

}  // namespace channels
