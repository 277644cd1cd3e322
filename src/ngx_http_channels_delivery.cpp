// Per-worker delivery (see ngx_http_channels_delivery.h).
//
// A publish in any worker appends to the zone's publish log and names the workers that
// hold subscribers of the channel; those get one eventfd write each (batched per event
// loop iteration). A woken worker reads the log entries after its own cursor once, under
// one lock, and hands each to its local subscribers. No timer is involved.

#include "ngx_http_channels_delivery.h"

#include "ngx_http_channels_redis.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <new>

namespace chn {
namespace {

MainConf         *worker_mcf;            // this worker's cycle configuration
ngx_connection_t *wake_conn;             // our eventfd in the event loop
uint64_t          pending_wakes;         // bits of worker numbers to wake
ngx_event_t       wake_flush_event;      // posted: writes pending_wakes out
ngx_event_t       collect_timer;         // housekeeping in worker 0 only
bool              shutting_down;

constexpr ngx_msec_t kCollectInterval = 1000;
constexpr uint64_t kTrimAfter = 256;     // subscribers gone since the last trim
constexpr size_t kFlushSlice = 1024;     // subscribers written to between event-loop turns

uint64_t          gone_since_trim;       // subscribers detached since the heap was trimmed

ZoneConf **zones(MainConf *mcf) { return static_cast<ZoneConf **>(mcf->zones.elts); }

LocalChannel *local_channel(WorkerZone *wz, ChannelKey key) {
    auto it = wz->channels.find(key);
    return it == wz->channels.end() ? nullptr : it->second;
}

bool wanted_channel(void *ctx, ChannelKey key) {
    return local_channel(static_cast<WorkerZone *>(ctx), key) != nullptr;
}

void touch(WorkerZone *wz, Subscriber *sub) {
    if (sub->touched) return;
    sub->touched = true;
    sub->touched_pass = wz->pass;
    sub->in_touched.owner = sub;
    ngx_queue_insert_tail(&wz->touched, &sub->in_touched.queue);
}

Subscriber *owner(ngx_queue_t *q) {
    return reinterpret_cast<SubscriberNode *>(reinterpret_cast<u_char *>(q) -
                                              offsetof(SubscriberNode, queue))->owner;
}

Link *channel_link(ngx_queue_t *q) {
    return reinterpret_cast<Link *>(reinterpret_cast<u_char *>(q) - offsetof(Link, in_channel));
}

// Hands one message to every local subscriber of its channel that has not had it yet.
uint64_t fan_out(WorkerZone *wz, const MessageCopy &m) {
    LocalChannel *lc = local_channel(wz, m.channel);
    if (lc == nullptr) return 0;
    MessageFrames frames;
    uint64_t n = 0;
    // Subscribers never unlink during on_message (leaving is deferred to on_flush).
    for (ngx_queue_t *q = ngx_queue_head(&lc->links); q != ngx_queue_sentinel(&lc->links);
         q = ngx_queue_next(q)) {
        Link *link = channel_link(q);
        Subscriber *sub = link->sub;
        if (!link->active || m.id <= sub->cursor) continue;
        sub->on_message(m, *link, frames);
        touch(wz, sub);
        n++;
    }
    return n;
}

// Batches no queued subscriber can point into: those older than the pass that queued
// the head of the touched queue (queued in pass order), or all once it is empty.
void release_batches(WorkerZone *wz) {
    uint64_t oldest_needed = ngx_queue_empty(&wz->touched)
        ? UINT64_MAX : owner(ngx_queue_head(&wz->touched))->touched_pass;
    while (!wz->batches.empty() && wz->batches.front().pass < oldest_needed) wz->batches.pop_front();
}

// Writes to at most kFlushSlice subscribers, then lets the event loop run (publishes
// are accepted and their messages join the writes still to come) before the rest.
void flush_touched(WorkerZone *wz) {
    for (size_t n = 0; n < kFlushSlice && !ngx_queue_empty(&wz->touched); n++) {
        Subscriber *sub = owner(ngx_queue_head(&wz->touched));
        ngx_queue_remove(&sub->in_touched.queue);
        sub->touched = false;
        sub->on_flush();
    }
    release_batches(wz);
    if (!ngx_queue_empty(&wz->touched) && !wz->flush_event.posted) {
        ngx_post_event(&wz->flush_event, &ngx_posted_next_events);
    }
}

void flush_handler(ngx_event_t *ev) noexcept { flush_touched(static_cast<WorkerZone *>(ev->data)); }

void wake_flush_handler(ngx_event_t *) noexcept;

// Other workers are woken before this one writes to its own subscribers: they then
// deliver in parallel instead of after this worker's whole pass.
void wake_others_now() {
    if (!wake_flush_event.posted) return;
    ngx_delete_posted_event(&wake_flush_event);
    wake_flush_handler(&wake_flush_event);
}

void run_delivery(WorkerZone *wz) {
    if (wz->delivering) return;
    wz->delivering = true;
    wake_others_now();
    uint64_t delivered = 0;
    size_t entries = 0;
    try {
        Batch batch = store_read_log(wz->zone, wz->record, wz->cursor, wanted_channel, wz);
        entries = batch.items.size();
        MessageId position = batch.position;
        if (entries > 0) {
            // Stored first: subscribers keep pointers to its items until their on_flush().
            wz->batches.push_back(PassBatch{++wz->pass, std::move(batch)});
            for (const MessageCopy &m : wz->batches.back().batch.items) delivered += fan_out(wz, m);
        }
        // Advanced only now: a retry after a failure skips, per subscriber cursor, what
        // was already handed out.
        wz->cursor = position;
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "channels: delivery pass failed (out of memory?); retrying");
        ngx_post_event(&wz->deliver_event, &ngx_posted_events);
    }
    flush_touched(wz);
    store_count_delivered(wz->zone, wz->record, delivered, entries);
    wz->delivering = false;
}

void deliver_handler(ngx_event_t *ev) noexcept { run_delivery(static_cast<WorkerZone *>(ev->data)); }

void shutdown_subscribers() {
    shutting_down = true;
    if (worker_mcf == nullptr) return;
    ZoneConf **zs = zones(worker_mcf);
    for (ngx_uint_t i = 0; i < worker_mcf->zones.nelts; i++) {
        redis_stop_worker(zs[i]);
        WorkerZone *wz = zs[i]->worker;
        if (wz == nullptr) continue;
        while (!ngx_queue_empty(&wz->subscribers)) {
            Subscriber *sub = owner(ngx_queue_head(&wz->subscribers));
            ngx_queue_remove(&sub->in_zone.queue);
            sub->in_zone.owner = nullptr;
            sub->on_shutdown();
        }
    }
}

void wake_handler(ngx_event_t *ev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    if (c->close) {
        // ngx_close_idle_connections(): the worker is shutting down gracefully.
        shutdown_subscribers();
        ngx_close_connection(c);
        wake_conn = nullptr;
        return;
    }
    uint64_t value;
    while (read(c->fd, &value, sizeof(value)) == ssize_t(sizeof(value))) {
    }
    ZoneConf **zs = zones(worker_mcf);
    for (ngx_uint_t i = 0; i < worker_mcf->zones.nelts; i++) {
        WorkerZone *wz = zs[i]->worker;
        if (wz == nullptr) continue;
        store_count_wakeup(wz->zone, wz->record);
        run_delivery(wz);
    }
}

void wake_flush_handler(ngx_event_t *) noexcept {
    uint64_t mask = pending_wakes;
    pending_wakes = 0;
    uint64_t one = 1;
    for (ngx_uint_t i = 0; i < worker_mcf->nwake_fds; i++) {
        if (i == ngx_worker || !(mask & (uint64_t(1) << (i & 63)))) continue;
        if (write(worker_mcf->wake_fds[i], &one, sizeof(one)) != ssize_t(sizeof(one)) &&
            ngx_errno != NGX_EAGAIN) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, ngx_errno,
                          "channels: waking worker %ui failed", i);
        }
    }
}

void collect_handler(ngx_event_t *ev) noexcept {
    ZoneConf **zs = zones(worker_mcf);
    for (ngx_uint_t i = 0; i < worker_mcf->zones.nelts; i++) store_collect(zs[i]);
    if (!ngx_exiting && !ngx_terminate) ngx_add_timer(ev, kCollectInterval);
}

ngx_int_t start_wake_listener(ngx_cycle_t *cycle, MainConf *mcf) {
    if (mcf->wake_fds == nullptr || ngx_worker >= mcf->nwake_fds) return NGX_OK;
    ngx_connection_t *c = ngx_get_connection(mcf->wake_fds[ngx_worker], cycle->log);
    if (c == nullptr) return NGX_ERROR;
    c->read->handler = wake_handler;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    c->data = nullptr;
    c->idle = 1;   // so that a graceful shutdown reaches wake_handler with c->close set
    c->read->data = c;
    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_free_connection(c);
        return NGX_ERROR;
    }
    wake_conn = c;
    return NGX_OK;
}

WorkerZone *start_zone(ngx_cycle_t *cycle, ZoneConf *zone) {
    auto *wz = new (std::nothrow) WorkerZone();
    if (wz == nullptr) return nullptr;
    wz->zone = zone;
    wz->record = store_worker_start(zone, ngx_worker);
    if (wz->record < 0) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "channels: zone \"%V\": more than %uz live worker processes",
                      &zone->name, kMaxWorkerRecords);
    }
    wz->cursor = store_stats(zone).last_id;
    ngx_queue_init(&wz->subscribers);
    ngx_queue_init(&wz->touched);
    wz->deliver_event.handler = deliver_handler;
    wz->deliver_event.data = wz;
    wz->deliver_event.log = cycle->log;
    wz->flush_event.handler = flush_handler;
    wz->flush_event.data = wz;
    wz->flush_event.log = cycle->log;
    return wz;
}

}  // namespace

// ---- frames ----

Frame *frame_new(std::string_view bytes) {
    auto *f = static_cast<Frame *>(ngx_alloc(offsetof(Frame, data) + bytes.size(), ngx_cycle->log));
    if (f == nullptr) return nullptr;
    f->refs = 1;
    f->len = uint32_t(bytes.size());
    copy_bytes(f->data, bytes);
    return f;
}

void frame_ref(Frame *f) { f->refs++; }

void frame_unref(Frame *f) {
    if (f != nullptr && --f->refs == 0) ngx_free(f);
}

MessageFrames::~MessageFrames() {
    for (Frame *f : variants) frame_unref(f);
}

// ---- worker life ----

ngx_int_t delivery_init_worker(ngx_cycle_t *cycle, MainConf *mcf) {
    worker_mcf = mcf;
    shutting_down = false;
    ZoneConf **zs = zones(mcf);
    for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
        zs[i]->worker = start_zone(cycle, zs[i]);
        if (zs[i]->worker == nullptr || redis_init_worker(cycle, zs[i]) != NGX_OK) return NGX_ERROR;
    }
    wake_flush_event.handler = wake_flush_handler;
    wake_flush_event.log = cycle->log;
    if (start_wake_listener(cycle, mcf) != NGX_OK) return NGX_ERROR;
    if (ngx_worker == 0 && mcf->zones.nelts > 0) {
        collect_timer.handler = collect_handler;
        collect_timer.log = cycle->log;
        collect_timer.cancelable = 1;
        ngx_add_timer(&collect_timer, kCollectInterval);
    }
    return NGX_OK;
}

void delivery_exit_worker(MainConf *mcf) {
    ZoneConf **zs = zones(mcf);
    for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
        redis_stop_worker(zs[i]);
        if (zs[i]->worker == nullptr) continue;
        store_worker_stop(zs[i], zs[i]->worker->record);
        delete zs[i]->worker;
        zs[i]->worker = nullptr;
    }
}

bool delivery_exiting() { return shutting_down || ngx_exiting || ngx_terminate; }

// ---- subscribers ----

ngx_int_t delivery_attach(Subscriber *sub, const SubscribeResult &res, size_t n) {
    WorkerZone *wz = sub->wz;
    if (wz->channels.empty()) {
        // Nothing older than this subscriber's start can be for a local subscriber: do not
        // walk the log published while the worker had none.
        wz->cursor = std::max(wz->cursor, res.replay.position);
    }
    sub->links = static_cast<Link *>(sub->links_pool != nullptr
                                         ? ngx_pcalloc(sub->links_pool, n * sizeof(Link))
                                         : ngx_calloc(n * sizeof(Link), ngx_cycle->log));
    size_t linked = 0;
    try {
        if (sub->links == nullptr) throw std::bad_alloc();
        for (; linked < n; linked++) {
            LocalChannel *lc = local_channel(wz, res.keys[linked]);
            if (lc == nullptr) {
                lc = new LocalChannel{res.keys[linked], {}, 0};
                ngx_queue_init(&lc->links);
                try {
                    wz->channels.emplace(lc->key, lc);
                } catch (...) {
                    delete lc;
                    throw;
                }
            }
            Link &link = sub->links[linked];
            link = Link{{}, sub, lc, res.keys[linked], true};
            ngx_queue_insert_tail(&lc->links, &link.in_channel);
            lc->count++;
        }
    } catch (...) {
        sub->nlinks = sub->nactive = linked;
        sub->attached = true;
        delivery_detach(sub);   // also releases the store's counts for all n channels
        store_unsubscribe(wz->zone, wz->record, res.keys + linked, n - linked, false);
        return NGX_ERROR;
    }
    sub->nlinks = sub->nactive = n;
    sub->attached = true;
    sub->in_zone.owner = sub;
    ngx_queue_insert_tail(&wz->subscribers, &sub->in_zone.queue);
    return NGX_OK;
}

ngx_int_t delivery_attach_request(Subscriber *sub, const SubscribeResult &res, size_t n) {
    ngx_http_request_t *r = sub->request;
    if (!res.attached) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "channels: zone \"%V\" is full",
                      &sub->wz->zone->name);
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "channel zone is full");
    }
    return delivery_attach(sub, res, n) == NGX_OK ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}

namespace {

// Unlinks a link from its local channel; returns whether it was still linked.
bool unlink(WorkerZone *wz, Link &link) {
    if (link.channel == nullptr) return false;
    ngx_queue_remove(&link.in_channel);
    if (--link.channel->count == 0) {
        wz->channels.erase(link.key);
        delete link.channel;
    }
    link.channel = nullptr;
    link.active = false;
    return true;
}

}  // namespace

void delivery_leave(Subscriber *sub, Link &link) {
    if (!unlink(sub->wz, link)) return;
    sub->nactive--;
    store_unsubscribe(sub->wz->zone, sub->wz->record, &link.key, 1, false);
}

void delivery_detach(Subscriber *sub) {
    if (!sub->attached) return;
    WorkerZone *wz = sub->wz;
    ChannelKey keys[channels::kMaxChannels];
    size_t n = 0;
    for (size_t i = 0; i < sub->nlinks; i++) {
        if (unlink(wz, sub->links[i])) keys[n++] = sub->links[i].key;
    }
    store_unsubscribe(wz->zone, wz->record, keys, n, true);
    if (sub->touched) {
        ngx_queue_remove(&sub->in_touched.queue);
        sub->touched = false;
    }
    if (sub->in_zone.owner != nullptr) {
        ngx_queue_remove(&sub->in_zone.queue);
        sub->in_zone.owner = nullptr;
    }
    sub->nactive = 0;
    sub->attached = false;
    // Thousands of parked requests leave freed memory between live blocks, which glibc
    // keeps; once a worker's subscribers are all gone, it goes back to the system.
    if (++gone_since_trim >= kTrimAfter && wz->channels.empty()) {
        gone_since_trim = 0;
#if defined(__GLIBC__)
        malloc_trim(0);
#endif
    }
    if (sub->links_pool == nullptr) ngx_free(sub->links);
    sub->links = nullptr;
    sub->nlinks = 0;
}

void delivery_notify(ZoneConf *zone, uint64_t wake_mask) {
    if (zone->worker == nullptr || wake_mask == 0) return;
    uint64_t own = uint64_t(1) << (ngx_worker & 63);
    if (wake_mask & own) {
        ngx_post_event(&zone->worker->deliver_event, &ngx_posted_events);
    }
    pending_wakes |= wake_mask;
    if ((pending_wakes & ~own) != 0 || worker_mcf->nwake_fds > 64) {
        ngx_post_event(&wake_flush_event, &ngx_posted_events);
    }
}

}  // namespace chn
