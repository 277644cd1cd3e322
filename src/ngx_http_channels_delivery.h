// Per-worker delivery: which local requests subscribe to which channel, the wake-up
// eventfd each worker listens on, and the delivery pass that reads new publish-log
// entries once per worker and hands them to local subscribers in id order.
#pragma once

#include <deque>
#include <unordered_map>

#include "ngx_http_channels.h"
#include "ngx_http_channels_store.h"

namespace chn {

class Subscriber;
struct LocalChannel;

// A formatted SSE event shared by every local subscriber that receives it (zero-copy
// for HTTP/1.x: bufs point into it). Reference-counted, in worker memory.
struct Frame {
    uint32_t refs;
    uint32_t len;
    u_char   data[1];
};
Frame *frame_new(std::string_view bytes);
void frame_ref(Frame *f);
void frame_unref(Frame *f);

// One subscriber's membership of one channel.
struct Link {
    ngx_queue_t   in_channel;      // LocalChannel::links
    Subscriber   *sub;
    LocalChannel *channel;
    ChannelKey    key;
    bool          active;
};

struct LocalChannel {
    ChannelKey  key;
    ngx_queue_t links;
    size_t      count;
};

// Frames of one message, made on first use during a delivery pass: for single- and
// multi-channel streams (event defaults to the channel id), each bare or with its own
// HTTP/1.1 chunk framing (streams written without nginx's filters).
struct MessageFrames {
    Frame *variants[4] = {};
    Frame *&slot(bool named, bool chunked) { return variants[(named ? 2 : 0) + (chunked ? 1 : 0)]; }
    ~MessageFrames();
    MessageFrames() = default;
    MessageFrames(const MessageFrames &) = delete;
    MessageFrames &operator=(const MessageFrames &) = delete;
};

// A queue link that knows its owner (Subscriber is not standard-layout, so no offsetof).
struct SubscriberNode {
    ngx_queue_t queue{};
    Subscriber *owner = nullptr;
};

// A parked request receiving messages. Lives in r->pool; a request cleanup detaches it.
class Subscriber {
public:
    // One message of a channel it holds, after its cursor, in id order. m stays valid
    // until its on_flush() (which may come after later passes: flushing is sliced).
    virtual void on_message(const MessageCopy &m, Link &link, MessageFrames &frames) = 0;
    // Its turn to write, after the pass (or passes) that touched it.
    virtual void on_flush() = 0;
    // The worker is shutting down (reload or stop).
    virtual void on_shutdown() = 0;

    ngx_http_request_t *request = nullptr;
    WorkerZone         *wz = nullptr;
    MessageId           cursor;          // the newest id it has been given (or skipped)
    Link               *links = nullptr;
    size_t              nlinks = 0;
    size_t              nactive = 0;
    SubscriberNode      in_zone;         // WorkerZone::subscribers
    SubscriberNode      in_touched;      // WorkerZone::touched
    uint64_t            touched_pass = 0;    // the pass that queued it for on_flush()
    bool                touched = false;
    bool                attached = false;
    // Where links are allocated: a request pool for subscribers that end with their request
    // (small heap blocks per waiter would keep glibc from giving memory back), or the heap
    // (nullptr) for SSE streams, which may outlive theirs.
    ngx_pool_t         *links_pool = nullptr;

protected:
    ~Subscriber() = default;
};

// A delivery pass's messages, kept while a subscriber it touched awaits on_flush().
struct PassBatch {
    uint64_t pass;
    Batch    batch;
};

struct WorkerZone {
    ZoneConf   *zone = nullptr;
    ngx_int_t   record = -1;             // this worker's record in the zone
    MessageId   cursor;                  // newest publish-log id read
    std::unordered_map<ChannelKey, LocalChannel *> channels;
    ngx_queue_t subscribers{};
    ngx_queue_t touched{};               // awaiting on_flush(), oldest pass first
    std::deque<PassBatch> batches;       // what touched subscribers may point into
    uint64_t    pass = 0;
    ngx_event_t deliver_event{};         // posted after a local publish or a wake-up
    ngx_event_t flush_event{};           // the rest of a sliced flush, after other events
    bool        delivering = false;
};

// Worker start/stop (init_process / exit_process).
ngx_int_t delivery_init_worker(ngx_cycle_t *cycle, MainConf *mcf);
void delivery_exit_worker(MainConf *mcf);

// Registers a subscriber whose store_subscribe() attached it; keys from the result.
// Returns NGX_ERROR (and undoes the store's attachment) when memory is short.
ngx_int_t delivery_attach(Subscriber *sub, const SubscribeResult &res, size_t nchannels);
// For a subscriber request: attaches it when the store did, else answers 503 (the zone
// has no memory for its channels). NGX_OK: attached; anything else: the handler's result.
ngx_int_t delivery_attach_request(Subscriber *sub, const SubscribeResult &res, size_t nchannels);
// Unregisters it from every channel (request cleanup).
void delivery_detach(Subscriber *sub);
// Drops one channel (deleted); the subscriber keeps the others.
void delivery_leave(Subscriber *sub, Link &link);
// After a publish or delete in this worker: deliver locally and wake the other workers.
void delivery_notify(ZoneConf *zone, uint64_t wake_mask);

bool delivery_exiting();

}  // namespace chn
