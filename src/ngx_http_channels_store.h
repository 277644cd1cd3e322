// The shared-memory store of one channel_zone: channels, their retained messages, the
// zone-wide publish log, and which workers hold subscribers of which channel.
//
// Everything under Shared lives in the zone's slab pool and is guarded by shpool->mutex
// (the lock nginx's master force-unlocks when a worker dies). Callers never see these
// structs: the functions below lock, copy what the caller needs into worker memory, and
// unlock. Transports (sse, longpoll, publish, stats) use only this interface.
#pragma once

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "ngx_http_channels.h"

namespace chn {

inline constexpr size_t kMaxWorkerRecords = 64;
inline constexpr size_t kMaxContentTypeLen = 255;

// Opaque identity of a channel while somebody is subscribed to it (its address in the zone).
using ChannelKey = uintptr_t;

enum class EntryKind : uint8_t { message, deleted };

// A retained message (or a channel-deleted marker) copied into worker memory.
struct MessageCopy {
    MessageId id;
    ChannelKey channel = 0;
    EntryKind kind = EntryKind::message;
    std::string_view channel_id, event, content_type, data;   // into Batch::bytes
    MessageId channel_dropped;     // the channel's newest id freed before this worker read it
    MessageId channel_oldest;      // the channel's oldest retained id (zero when none)
};

// A channel whose messages after a cursor were evicted or expired.
struct GapInfo {
    ChannelKey channel = 0;
    std::string channel_id;
    MessageId trimmed_upto;        // newest id removed without being read
    MessageId oldest;              // oldest retained (zero when none)
};

// Messages copied out of the zone under one lock, in id order. The items' views point
// into bytes, a vector (not a string: a moved short string would leave them dangling);
// so a Batch moves but never copies.
struct Batch {
    Batch() = default;
    Batch(Batch &&) = default;
    Batch &operator=(Batch &&) = default;
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;

    std::vector<MessageCopy> items;
    std::vector<GapInfo> gaps;
    std::vector<char> bytes;
    MessageId position;            // the zone's newest id when the batch was read
    bool more = false;             // a limit cut the batch short
};

struct ChannelInfo {
    bool exists = false;
    uint32_t messages = 0;
    uint32_t subscribers = 0;
    MessageId newest, oldest;      // zero when the channel holds no message
};

enum class PublishStatus { ok, too_large, no_memory };

struct PublishInput {
    std::string_view channel, data, event, content_type;
};

struct PublishResult {
    PublishStatus status = PublishStatus::ok;
    MessageId id;
    uint32_t subscribers = 0;
    uint32_t messages = 0;
    uint64_t wake_mask = 0;        // worker numbers with subscribers of the channel
};

// What a new subscriber asks for.
struct SubscribeQuery {
    const channels::ChannelList *list = nullptr;
    bool has_cursor = false;
    MessageId cursor;
    ngx_int_t first_message = kFirstNewest;   // used when !has_cursor
    size_t limit = SIZE_MAX;                  // replay at most this many messages
    size_t byte_limit = SIZE_MAX;             // and this much data (but at least one)
    bool attach = true;                       // register as subscriber
    bool attach_only_if_empty = false;        // long-poll: wait only when nothing to send
};

struct SubscribeResult {
    bool attached = false;
    bool no_memory = false;
    ChannelKey keys[channels::kMaxChannels] = {};
    Batch replay;
};

struct ZoneStats {
    size_t size = 0, used = 0;
    uint64_t channels = 0, messages = 0, subscribers = 0;
    uint64_t published = 0, delivered = 0, evicted = 0, dropped_slow = 0;
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

// ---- zone set-up (configuration time, master) ----
ngx_int_t store_init_zone(ngx_shm_zone_t *shm_zone, void *old_data);

// The newest id survives a full stop/start in a small file (master only): loaded into a
// freshly created zone, saved when the master exits.
void store_load_last_id(ZoneConf *zone, const ngx_str_t &path, ngx_log_t *log);
void store_save_last_id(ZoneConf *zone, const ngx_str_t &path, ngx_log_t *log);

// ---- worker life ----
// Claims a worker record (purging records of dead workers); returns its index or -1.
ngx_int_t store_worker_start(ZoneConf *zone, ngx_uint_t worker_number);
void store_worker_stop(ZoneConf *zone, ngx_int_t record);
// Expires old messages, removes idle channels and records of dead workers.
void store_collect(ZoneConf *zone);

// ---- publish side ----
PublishResult store_publish(ZoneConf *zone, const PublishInput &in);
ChannelInfo store_info(ZoneConf *zone, std::string_view channel);
// Deletes the channel; the marker it leaves in the log tells subscribers.
ChannelInfo store_delete(ZoneConf *zone, std::string_view channel, uint64_t *wake_mask);

// Mirrors an entry whose id was assigned elsewhere (Redis): appended when newer than the
// zone's last id, ignored otherwise (another worker of this host mirrored it). Returns the
// workers holding subscribers of its channel.
uint64_t store_ingest(ZoneConf *zone, EntryKind kind, MessageId id, const PublishInput &in);
MessageId store_last_id(ZoneConf *zone);
// Every retained cursor now counts as possibly short of messages (the shared log lost
// data): resuming clients get channel-gap.
void store_mark_gap(ZoneConf *zone);
// Cursors older than floor cannot be replayed (resuming clients get channel-gap).
void store_raise_floor(ZoneConf *zone, MessageId floor);

// ---- subscriber side ----
SubscribeResult store_subscribe(ZoneConf *zone, ngx_int_t record, const SubscribeQuery &q);
// Drops one worker-local reference per key (subscriber gone or channel left).
void store_unsubscribe(ZoneConf *zone, ngx_int_t record, const ChannelKey *keys, size_t n,
                       bool count_connection);
// Messages of the given channels after cursor, in pages (an SSE replay catching up).
Batch store_read(ZoneConf *zone, const ChannelKey *keys, size_t n, MessageId cursor, size_t limit,
                 size_t byte_limit);
// Log entries after cursor whose channel the worker holds subscribers of (wanted(ctx, key)),
// plus gap info for those channels; used by a worker's delivery pass.
using ChannelFilter = bool (*)(void *ctx, ChannelKey key);
Batch store_read_log(ZoneConf *zone, ngx_int_t record, MessageId cursor, ChannelFilter wanted,
                     void *ctx);

// ---- counters ----
void store_count_delivered(ZoneConf *zone, ngx_int_t record, uint64_t n, uint64_t entries);
void store_count_wakeup(ZoneConf *zone, ngx_int_t record);
void store_count_dropped_slow(ZoneConf *zone);
ZoneStats store_stats(ZoneConf *zone);
ChannelListing store_list(ZoneConf *zone, std::string_view prefix, std::string_view after,
                          size_t limit);

}  // namespace chn
