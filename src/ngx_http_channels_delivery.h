// Per-worker delivery: which local subscribers hold which channel, and the delivery pass
// that reads new publish-log entries once per worker and hands them to local subscribers
// in id order. Passes are started by a local publish or a wake-up from another worker
// (ngx_http_channels_wake.h), never by a timer.
#pragma once


#include "ngx_http_channels.h"
#include "ngx_http_channels_frame.h"
#include "ngx_http_channels_session.h"
#include "ngx_http_channels_store.h"

namespace channels {

class Subscriber;
struct WorkerZone;

// One subscriber's membership of one channel: links[i] goes with positions[i]. The
// links of a subscriber follow a pointer to it in one allocation (link_owner()).
struct Link {
    ngx_queue_t in_channel;    // LocalChannel::links
    PackedId    seen;          // live: the channel's messages up to here were given or told lost
    uint8_t     index;         // its place in the subscriber's links
};

inline Subscriber *link_owner(Link *link) {
    return reinterpret_cast<Subscriber *const *>(link - link->index)[-1];
}

// A queue link that knows its owner (Subscriber is not standard-layout).
struct SubscriberNode {
    ngx_queue_t queue{};
    Subscriber *owner = nullptr;
};

// A parked request or stream receiving messages.
class Subscriber {
public:
    // One message (or deletion marker) of its channel `index`, after its cursor, in id
    // order. m stays valid until its on_flush() (which may come after later passes:
    // flushing is sliced). Must not fail: a subscriber that cannot take it ends itself in
    // on_flush().
    virtual void on_message(const MessageCopy &m, size_t index, MessageFrames &frames) noexcept = 0;
    // Messages of its channel `index` up to `upto` were freed before this worker read them.
    virtual void on_lost(size_t index, MessageId upto) noexcept = 0;
    // Its turn to write, after the pass (or passes) that touched it.
    virtual void on_flush() noexcept = 0;
    // The worker is shutting down (reload or stop).
    virtual void on_shutdown() noexcept = 0;

    WorkerZone   *wz = nullptr;
    MessageId     cursor;          // the newest id it has been given (or skipped)
    MessageId     news_after;      // deletions after it are news: its cursor, else its attachment
    Link         *links = nullptr;
    ReadPosition *positions = nullptr;
    uint16_t      nlinks = 0;      // at most kMaxChannels
    uint16_t      nactive = 0;
    bool          touched = false;
    bool          attached = false;
    SubscriberNode in_zone;        // WorkerZone::subscribers
    SubscriberNode in_touched;     // WorkerZone::touched
    uint64_t      touched_pass = 0;
    // Where links live: a request pool for subscribers that end with their request, or the
    // heap (nullptr) for SSE streams, which may outlive theirs.
    ngx_pool_t   *links_pool = nullptr;

protected:
    ~Subscriber() = default;
};

inline constexpr size_t kSpareBatches = 4;

// The worker's runtime of one zone.
struct WorkerZone final : StoreListener {
    void on_appended(uint64_t wake_bits) override;
    void on_rebuilt() override;

    ZoneConf   *conf = nullptr;
    Store      *store = nullptr;
    ZoneSession session;
    MessageId   cursor;                   // newest publish-log id read
    ngx_queue_t subscribers{};
    ngx_queue_t touched{};                // awaiting on_flush(), oldest pass first
    // Passes' batches, oldest first (Batch::next_pass), kept while a subscriber they touched
    // awaits on_flush(): it points into them. Lists and arrays, not containers: nothing here
    // may throw into nginx.
    Batch      *passes = nullptr;
    Batch     **passes_last = &passes;
    Batch      *spare[kSpareBatches] = {};   // batches to reuse
    size_t      nspare = 0;
    uint64_t    pass = 0;
    uint64_t    released = 0;             // batches released so far: pointers into older ones are stale
    uint64_t    wake_bits = 0;            // other workers to wake (ngx_http_channels_wake.cpp)
    ngx_event_t deliver_event{};          // posted after a publish or a wake-up
    ngx_event_t flush_event{};            // the rest of a sliced flush, after other events
    ngx_event_t retry_timer{};            // a pass that failed tries again
    bool        delivering = false;
    bool        woken = false;            // the next pass answers a wake-up
};

// ---- worker life (init_process / exit_process) ----
ngx_int_t delivery_init_worker(ngx_cycle_t *cycle, MainConf *mcf);
void delivery_exit_worker();
// Freed requests (a detached stream's, a parked long-poll's) leave holes between live blocks
// that glibc keeps: gives them back a second from now, once however often it is asked.
void delivery_trim_heap_later() noexcept;
bool delivery_exiting();
// The worker's runtime of a zone (nullptr outside a worker, or while exiting).
WorkerZone *worker_zone(const ZoneConf *zone);
// A wake-up for the zone arrived from another worker.
void delivery_woken(WorkerZone *wz);
// Runs every zone's housekeeping (worker 0, every second).
// Every stream ends and every waiting request is answered: the worker is going away.
void delivery_shutdown();

// ---- batches (replay pages, long-poll answers, passes) ----
Batch *batch_take(WorkerZone *wz, size_t bytes);
void batch_give(WorkerZone *wz, Batch *b);
// Grows a batch that stopped with need_bytes; false when memory is short.
bool batch_grow(Batch *b);

// ---- subscribers ----
// Allocates links and positions for n channels (from the pool, or the heap when nullptr).
bool delivery_alloc_links(Subscriber *sub, size_t n, ngx_pool_t *pool);
void delivery_free_links(Subscriber *sub);
// The registry entries of the channels, before subscribing; false when memory is short
// (then nothing is held).
bool delivery_prepare(WorkerZone *wz, const ChannelList &list, LocalChannel **locals);
// After a subscribe that did not attach: drops what delivery_prepare() made.
void delivery_discard(WorkerZone *wz, LocalChannel **locals, size_t n);
// Registers a subscriber the store attached: links it to its channels.
void delivery_attach(Subscriber *sub, LocalChannel **locals, size_t n);
// Unregisters it from every channel (end of the subscriber).
void delivery_detach(Subscriber *sub);
// Drops one channel (deleted); the subscriber keeps the others.
void delivery_leave(Subscriber *sub, size_t index);

}  // namespace channels
