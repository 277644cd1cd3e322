// The zone's layout in shared memory. Internal to the shared-memory store
// (ngx_http_channels_zone_ops.cpp, _shm_store.cpp, _shm_zone.cpp): nothing else sees it.
//
// Everything here is standard-layout, lives in the zone's slab pool and is guarded by
// shpool->mutex, the lock nginx's master force-unlocks when a worker dies. Pointers inside
// the zone point only into the zone (it is mapped before fork, at one address in every
// process, and kept across reloads).
#pragma once

#include <atomic>
#include <type_traits>

#include "ngx_http_channels_store.h"

namespace channels::shm {

// Bumped whenever a struct below changes: a reload that would adopt a zone laid out by
// other code is refused.
inline constexpr uint32_t kLayoutVersion = 4;

struct Channel;

// Whether an entry is in its channel's ring (replayable), or out of it but still in the log
// for a worker that holds subscribers of the channel and has not read it yet.
enum class EntryState : uint8_t { retained, trimmed };

// A retained message or a channel-deleted marker: one slab allocation, bytes inline.
struct Entry {
    ngx_queue_t in_log;        // Shared::log, id order
    ngx_queue_t in_trimmed;    // Shared::trimmed while trimmed
    Channel    *channel;
    MessageId   id;            // also the publish time (id.ms), for ttl
    uint32_t    seq;           // its number in the channel: ring slot seq & (capacity - 1)
    uint32_t    data_len;
    uint8_t     event_len;
    uint8_t     ctype_len;     // 0: text/plain
    EntryKind   kind;
    EntryState  state;
    uint16_t    bookmarks;     // worker records whose next unread log entry this is
    u_char      bytes[1];      // event, content type, data

    std::string_view event() const { return {reinterpret_cast<const char *>(bytes), event_len}; }
    std::string_view content_type() const {
        return {reinterpret_cast<const char *>(bytes) + event_len, ctype_len};
    }
    std::string_view data() const {
        return {reinterpret_cast<const char *>(bytes) + event_len + ctype_len, data_len};
    }
    size_t text_size() const { return size_t(event_len) + ctype_len + data_len; }
};

enum ChannelFlags : uint8_t {
    kExists = 1,   // published and not deleted since
    kIdle = 2,     // holds no entry: its bytes count against the zone's idle cap (README "What one client can cost")
    kPinned = 4,   // an operation in progress holds it: not freed by an eviction it causes
    kDeleted = 8,  // deleted, not published since: kept for its marker, not counted as a channel
};

// A channel. Its retained entries (messages and deletion markers) have consecutive
// sequence numbers [head_seq, next_seq) and sit in a power-of-two ring, so a reader's
// position is found in O(1) and an id in O(log n). Small: a channel a subscriber waits on
// costs one 128-byte slab slot with a 16-byte id, and subscribing to an existing channel
// allocates nothing (counts and wake bits are inline). A deleted channel stays as long as
// its deletion marker (a message's lifetime, or until evicted), so that a client resuming
// from before the deletion is told of it.
struct Channel {
    ngx_rbtree_node_t node;    // key: id_key(), ties broken by memcmp: in id order
    Entry    **ring;           // nullptr while empty
    uint64_t   wake_bits;      // bits of the worker records holding subscribers of it
    uint32_t   head_seq;
    uint32_t   next_seq;
    uint32_t   nmessages;      // messages in the ring (markers excluded)
    uint32_t   log_refs;       // its trimmed entries still in the log
    uint32_t   subscribers;    // in all workers (per channel: a connection may hold several)
    PackedId   trimmed_upto;   // newest message id removed from the ring
    uint8_t    ring_shift;     // ring capacity is 1 << ring_shift
    uint8_t    flags;          // ChannelFlags
    uint8_t    len;            // id length - 1 (ids are 1..255 bytes)
    u_char     id[1];

    std::string_view name() const { return {reinterpret_cast<const char *>(id), size_t(len) + 1}; }
    uint32_t ring_len() const { return next_seq - head_seq; }
    uint32_t capacity() const { return ring == nullptr ? 0 : uint32_t(1) << ring_shift; }
    Entry *&slot(uint32_t seq) { return ring[seq & (capacity() - 1)]; }
    bool has(uint8_t f) const { return (flags & f) != 0; }
};

// A message a worker had to read but that was freed first (evicted, expired, lost): its
// subscribers of the channel are told before their stream passes it (channel-gap).
struct LossNotice {
    Channel  *channel;
    MessageId upto;            // the newest such id of the channel
};

inline constexpr size_t kLossNotices = 64;

// One worker process using the zone. Lets the others wake it, keeps log entries it still
// has to read, and lets a dead worker's subscriber counts be released.
struct WorkerRecord {
    ngx_queue_t in_zone;       // Shared::records
    ngx_pid_t   pid;
    uint32_t    bit;           // its wake bit in Channel::wake_bits (0..63)
    uint64_t    start_time;    // the process's start time: a reused pid is not this worker
    MessageId   read_upto;     // its delivery has read the log up to here
    Entry      *bookmark;      // active: the first log entry after read_upto (nullptr: read all)
    uint64_t    connections;   // subscriber connections it holds
    uint32_t    counted_epoch; // its subscriber counts are in the zone for this epoch
    uint8_t     active;        // it holds subscribers: entries it has not read are kept
    uint32_t    wake_nonce;    // its wake-up socket's name ends with it (0: the plain name)
    uint32_t    nlosses;
    LossNotice  losses[kLossNotices];
    MessageId   lost_upto;     // more losses than notices, or a zone-wide loss: every channel
    std::atomic<uint64_t> wakeups;
    std::atomic<uint64_t> entries_read;
};

// The zone's root, at shpool->data.
struct Shared {
    uint32_t          layout;           // kLayoutVersion
    uint32_t          generation;       // bumped when the zone is rebuilt after a torn update
    uint32_t          count_epoch;      // bumped when subscriber counts were reset (a worker died)
    uint32_t          records_version;  // bumped when a worker record comes or goes
    uint8_t           updating;         // set under the lock: found set, a worker died mid-update
    ngx_pid_t         updater;          // who set it
    ngx_rbtree_t      tree;
    ngx_rbtree_node_t sentinel;
    ngx_queue_t       log;              // every Entry, id order: the publish log
    ngx_queue_t       trimmed;          // Entry::in_trimmed of trimmed entries, about id order
    ngx_queue_t       records;          // WorkerRecord::in_zone
    MessageId         last_id;          // newest id handed out
    MessageId         gc_floor;         // newest trimmed id of freed channels (new channels start here)
    MessageId         gap_floor;        // cursors below it may have missed messages (any channel)
    MessageId         dropped_floor;    // live subscribers below it missed messages (any channel)
    uint64_t          persisted_ms;     // the id file promises ids below this are taken
    uint64_t          history;
    uint64_t          ttl_ms;
    uint64_t          nchannels;
    uint64_t          ndeleted;         // channels kept only for their deletion marker (kDeleted)
    uint64_t          nmessages;
    uint64_t          connections;
    uint64_t          idle_bytes;       // slab bytes of channels without messages
    uint64_t          idle_cap;         // 1/8 of the zone (README "What one client can cost")
    uint64_t          message_bytes;    // slab bytes of entries, rings and channels with messages
    uint64_t          message_budget;   // the rest of the zone: publishes evict past it
    uint64_t          published;
    uint64_t          evicted;
    uint64_t          rebuilds;
    std::atomic<uint64_t> delivered;
    std::atomic<uint64_t> dropped_slow;
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared counters need lock-free atomics");
static_assert(std::is_standard_layout_v<Shared>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<Entry>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<Channel>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<WorkerRecord>, "shared memory holds standard-layout data only");
static_assert(offsetof(Channel, id) + 16 <= 128, "a channel with a 16-byte id fits a 128-byte slab slot");

}  // namespace channels::shm
