// Per-worker delivery (see ngx_http_channels_delivery.h).
//
// A publish in any worker appends to the zone's publish log and names the worker records
// holding subscribers of the channel; the publishing worker posts its own pass and wakes
// the others (batched per event-loop turn). A pass reads the log entries after the
// worker's position once, a page at a time under the lock, and hands each to the local
// subscribers of its channel. No timer is involved.

#include "ngx_http_channels_delivery.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <new>

#include "ngx_http_channels_fault.h"
#include "ngx_http_channels_wake.h"

namespace channels {
namespace {

constexpr ngx_msec_t kCollectInterval = 1000;
constexpr ngx_msec_t kRetryInterval = 100;   // a pass that failed (memory) tries again
constexpr uint64_t kTrimAfter = 256;          // subscribers gone since the last heap trim
constexpr ngx_msec_t kTrimDelay = 1000;       // a trim waits this long: long-poll loops empty the
                                              // registry all the time, and a trim costs page faults
constexpr size_t kFlushSlice = 1024;          // subscribers written to between event-loop turns
constexpr size_t kBatchSlack = kMaxChannels * 256;

WorkerZone **runtime;                         // this worker's zones, by ZoneConf::index
size_t       nruntime;
ngx_event_t  collect_timer;                   // housekeeping in worker 0 only
ngx_event_t  sweep_event;                     // its long work, in rounds between other events
bool         shutting_down;
uint64_t     gone_since_trim;                 // subscribers detached since the heap was trimmed
ngx_event_t  trim_timer;

uintptr_t zone_key(const WorkerZone *wz) { return reinterpret_cast<uintptr_t>(wz->conf->shm_zone->shm.addr); }

Subscriber *owner(ngx_queue_t *q) { return (ngx_queue_data(q, SubscriberNode, queue))->owner; }

void touch(WorkerZone *wz, Subscriber *sub) {
    if (sub->touched) return;
    sub->touched = true;
    sub->touched_pass = wz->pass;
    sub->in_touched.owner = sub;
    ngx_queue_insert_tail(&wz->touched, &sub->in_touched.queue);
}

// Hands one message to every local subscriber of its channel that has not had it yet.
uint64_t fan_out(WorkerZone *wz, const MessageCopy &m) {
    LocalChannel *lc = wz->session.find(m.channel_id);
    if (lc == nullptr) return 0;   // a shared wake bit brought an entry of another worker's channel
    MessageFrames frames;
    uint64_t n = 0;
    // Subscribers never unlink during on_message (leaving is deferred to on_flush).
    for (ngx_queue_t *q = ngx_queue_head(&lc->links); q != ngx_queue_sentinel(&lc->links); q = ngx_queue_next(q)) {
        Link *link = ngx_queue_data(q, Link, in_channel);
        Subscriber *sub = link_owner(link);
        size_t index = link->index;
        if (!sub->positions[index].active || m.id <= sub->cursor) continue;
        sub->on_message(m, index, frames);
        touch(wz, sub);
        n++;
    }
    return n;
}

// Losses come before the entries read with them: a subscriber is told before its stream
// passes what it will never get.
void announce_losses(WorkerZone *wz, const Batch &b) {
    for (const GapInfo &g : b.gaps) {
        LocalChannel *lc = wz->session.find(g.channel_id);
        if (lc == nullptr) continue;
        for (ngx_queue_t *q = ngx_queue_head(&lc->links); q != ngx_queue_sentinel(&lc->links); q = ngx_queue_next(q)) {
            Link *link = ngx_queue_data(q, Link, in_channel);
            Subscriber *sub = link_owner(link);
            if (!sub->positions[link->index].active) continue;
            sub->on_lost(link->index, g.upto);
            touch(wz, sub);
        }
    }
    if (b.all_lost == MessageId{}) return;
    for (ngx_queue_t *q = ngx_queue_head(&wz->subscribers); q != ngx_queue_sentinel(&wz->subscribers); q = ngx_queue_next(q)) {
        Subscriber *sub = owner(q);
        for (size_t i = 0; i < sub->nlinks; i++) {
            if (sub->positions[i].active) sub->on_lost(i, b.all_lost);
        }
        touch(wz, sub);
    }
}

// Batches no queued subscriber can point into: those older than the pass that queued the
// head of the touched queue (queued in pass order), or all once it is empty.
void release_batches(WorkerZone *wz) {
    uint64_t oldest_needed = ngx_queue_empty(&wz->touched) ? UINT64_MAX : owner(ngx_queue_head(&wz->touched))->touched_pass;
    while (wz->passes != nullptr && wz->passes->pass < oldest_needed) {
        Batch *b = wz->passes;
        wz->passes = b->next_pass;
        if (wz->passes == nullptr) wz->passes_last = &wz->passes;
        batch_give(wz, b);
        wz->released++;
    }
}

// Writes to at most kFlushSlice subscribers, then lets the event loop run (publishes are
// accepted and their messages join the writes still to come) before the rest.
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

// Reads the next page of the log; nullptr when memory is short (the caller retries later).
Batch *read_page(WorkerZone *wz, bool woken) {
    Batch *b = batch_take(wz, kPageBytes);
    if (b == nullptr || fault::hit(fault::Site::delivery_read)) {
        if (b != nullptr) batch_give(wz, b);
        return nullptr;
    }
    wz->store->read_log(wz->session, *b, woken);
    if (b->need_bytes > 0) {   // one message larger than a page
        announce_losses(wz, *b);   // taken from the zone with this read: not read again
        if (!batch_grow(b)) {
            batch_give(wz, b);
            return nullptr;
        }
        b->clear();
        wz->store->read_log(wz->session, *b, false);
    }
    return b;
}

void run_delivery(WorkerZone *wz) {
    if (wz->delivering) return;
    wz->delivering = true;
    wake_flush_now();   // the other workers deliver in parallel, not after this pass
    bool woken = wz->woken;
    wz->woken = false;
    Batch *b = read_page(wz, woken);
    if (b == nullptr) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "channels: delivery pass failed (out of memory?); retrying");
        if (!wz->retry_timer.timer_set) ngx_add_timer(&wz->retry_timer, kRetryInterval);
        wz->delivering = false;
        return;
    }
    wz->cursor = b->position;
    bool more = b->more;
    uint64_t delivered = 0;
    announce_losses(wz, *b);
    if (b->items.empty()) {
        batch_give(wz, b);
    } else {
        // Stored first: subscribers keep pointers to its items until their on_flush().
        b->pass = ++wz->pass;
        b->next_pass = nullptr;
        *wz->passes_last = b;
        wz->passes_last = &b->next_pass;
        for (const MessageCopy &m : b->items) delivered += fan_out(wz, m);
    }
    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "channels: delivery pass of zone \"%V\": %uz entries, %uL deliveries, more: %d",
                   &wz->conf->name, b->items.size(), delivered, int(more));
    flush_touched(wz);
    if (delivered > 0) wz->store->count_delivered(delivered);
    // A page limit stopped the pass: the rest after other events had their turn.
    if (more && !wz->deliver_event.posted) {
        ngx_post_event(&wz->deliver_event, &ngx_posted_next_events);
    }
    wz->delivering = false;
}

void deliver_handler(ngx_event_t *ev) noexcept { run_delivery(static_cast<WorkerZone *>(ev->data)); }

void woken_handler(uintptr_t key) {
    for (size_t i = 0; i < nruntime; i++) {
        if (runtime[i] != nullptr && zone_key(runtime[i]) == key) delivery_woken(runtime[i]);
    }
}

void trim_handler(ngx_event_t *) noexcept {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

// Rounds of a large expiry or release, one per zone between the worker's other events.
void sweep_handler(ngx_event_t *ev) noexcept {
    bool more = false;
    for (size_t i = 0; i < nruntime; i++) {
        if (runtime[i] != nullptr && runtime[i]->store->sweep()) more = true;
    }
    if (more && !ev->posted) {
        ngx_post_event(ev, &ngx_posted_next_events);
    }
}

void collect_handler(ngx_event_t *ev) noexcept {
    bool more = false;
    for (size_t i = 0; i < nruntime; i++) {
        if (runtime[i] != nullptr && runtime[i]->store->collect(&runtime[i]->session)) more = true;
    }
    if (more && !sweep_event.posted) {
        ngx_post_event(&sweep_event, &ngx_posted_next_events);
    }
    if (!ngx_exiting && !ngx_terminate) ngx_add_timer(ev, kCollectInterval);
}

void init_event(ngx_event_t *ev, ngx_event_handler_pt handler, WorkerZone *wz, ngx_log_t *log) {
    ev->handler = handler;
    ev->data = wz;
    ev->log = log;
    ev->cancelable = 1;
}

WorkerZone *start_zone(ngx_cycle_t *cycle, ZoneConf *zone) {
    auto *wz = new (std::nothrow) WorkerZone();
    if (wz == nullptr) return nullptr;
    wz->conf = zone;
    wz->store = zone->store;
    ngx_queue_init(&wz->subscribers);
    ngx_queue_init(&wz->touched);
    init_event(&wz->deliver_event, deliver_handler, wz, cycle->log);
    init_event(&wz->flush_event, flush_handler, wz, cycle->log);
    init_event(&wz->retry_timer, deliver_handler, wz, cycle->log);
    wz->session.wake_nonce = wake_nonce();
    if (wz->store->start_worker(cycle, &wz->session, wz) != NGX_OK) {
        delete wz;
        return nullptr;
    }
    return wz;
}

void stop_zone(WorkerZone *wz) {
    for (ngx_event_t *ev : {&wz->deliver_event, &wz->flush_event}) {
        if (ev->posted) {
            ngx_delete_posted_event(ev);
        }
    }
    if (wz->retry_timer.timer_set) ngx_del_timer(&wz->retry_timer);
    wz->store->stop_worker(&wz->session);
    while (Batch *b = wz->passes) {
        wz->passes = b->next_pass;
        delete b;
    }
    for (size_t i = 0; i < wz->nspare; i++) delete wz->spare[i];
    delete wz;
}

}  // namespace

void WorkerZone::on_appended(uint64_t bits) {
    if (bits & (uint64_t(1) << session.bit)) {
        ngx_post_event(&deliver_event, &ngx_posted_events);
    }
    wake_others(zone_key(this), store, bits);
}

void WorkerZone::on_rebuilt() {
    if (!deliver_event.posted) {
        ngx_post_event(&deliver_event, &ngx_posted_events);
    }
    wake_siblings(zone_key(this));
}

// ---- batches ----

Batch *batch_take(WorkerZone *wz, size_t bytes) {
    if (wz->nspare > 0) {
        Batch *b = wz->spare[--wz->nspare];
        if (b->bytes.capacity() >= bytes + kBatchSlack || b->reserve(kLogPageEntries, bytes + kBatchSlack)) return b;
        delete b;
        return nullptr;
    }
    auto *b = new (std::nothrow) Batch();
    if (b == nullptr || !b->reserve(kLogPageEntries, bytes + kBatchSlack)) {
        delete b;
        return nullptr;
    }
    return b;
}

void batch_give(WorkerZone *wz, Batch *b) {
    // Only page-sized batches are kept: one grown for a huge message gives its memory back.
    if (wz->nspare == kSpareBatches || b->bytes.capacity() > 2 * (kPageBytes + kBatchSlack)) {
        delete b;
        return;
    }
    b->clear();
    wz->spare[wz->nspare++] = b;
}

bool batch_grow(Batch *b) { return b->reserve(b->items.capacity(), b->need_bytes + kBatchSlack); }

// ---- worker life ----

ngx_int_t delivery_init_worker(ngx_cycle_t *cycle, MainConf *mcf) {
    fault::configure(cycle->log);
    shutting_down = false;
    nruntime = mcf->zones.nelts;
    runtime = static_cast<WorkerZone **>(ngx_pcalloc(cycle->pool, nruntime * sizeof(WorkerZone *)));
    if (runtime == nullptr) return NGX_ERROR;
    auto **zones = static_cast<ZoneConf **>(mcf->zones.elts);
    // The socket first: the zones' worker records carry its name.
    if (wake_init_worker(cycle, WakeHandlers{woken_handler, delivery_shutdown}) != NGX_OK) return NGX_ERROR;
    for (size_t i = 0; i < nruntime; i++) {
        runtime[i] = start_zone(cycle, zones[i]);
        if (runtime[i] == nullptr) return NGX_ERROR;
    }
    if (ngx_worker == 0 && nruntime > 0) {
        collect_timer.handler = collect_handler;
        collect_timer.log = cycle->log;
        collect_timer.cancelable = 1;
        sweep_event.handler = sweep_handler;
        sweep_event.log = cycle->log;
        ngx_add_timer(&collect_timer, kCollectInterval);
    }
    return NGX_OK;
}

void delivery_exit_worker() {
    if (collect_timer.timer_set) ngx_del_timer(&collect_timer);
    if (sweep_event.posted) {
        ngx_delete_posted_event(&sweep_event);
    }
    if (trim_timer.timer_set) ngx_del_timer(&trim_timer);
    for (size_t i = 0; i < nruntime; i++) {
        if (runtime[i] != nullptr) stop_zone(runtime[i]);
        runtime[i] = nullptr;
    }
    nruntime = 0;
    runtime = nullptr;
    wake_exit_worker();
}

bool delivery_exiting() { return shutting_down || ngx_exiting || ngx_terminate; }

WorkerZone *worker_zone(const ZoneConf *zone) {
    if (zone == nullptr || zone->index >= nruntime) return nullptr;
    return runtime[zone->index];
}

void delivery_woken(WorkerZone *wz) {
    wz->woken = true;
    run_delivery(wz);
}

void delivery_shutdown() {
    shutting_down = true;
    for (size_t i = 0; i < nruntime; i++) {
        WorkerZone *wz = runtime[i];
        if (wz == nullptr) continue;
        while (!ngx_queue_empty(&wz->subscribers)) {
            Subscriber *sub = owner(ngx_queue_head(&wz->subscribers));
            ngx_queue_remove(&sub->in_zone.queue);
            sub->in_zone.owner = nullptr;
            sub->on_shutdown();
        }
    }
}

// ---- subscribers ----

bool delivery_alloc_links(Subscriber *sub, size_t n, ngx_pool_t *pool) {
    size_t size = sizeof(Subscriber *) + n * (sizeof(Link) + sizeof(ReadPosition));
    void *mem = pool != nullptr ? ngx_pcalloc(pool, size) : ngx_calloc(size, ngx_cycle->log);
    if (mem == nullptr) return false;
    sub->links_pool = pool;
    *static_cast<Subscriber **>(mem) = sub;   // what link_owner() finds
    sub->links = reinterpret_cast<Link *>(static_cast<Subscriber **>(mem) + 1);
    sub->positions = reinterpret_cast<ReadPosition *>(sub->links + n);
    for (size_t i = 0; i < n; i++) sub->links[i].index = uint8_t(i);
    for (size_t i = 0; i < n; i++) new (&sub->positions[i]) ReadPosition();
    sub->nlinks = uint16_t(n);
    return true;
}

void delivery_free_links(Subscriber *sub) {
    if (sub->links_pool == nullptr && sub->links != nullptr) ngx_free(reinterpret_cast<Subscriber **>(sub->links) - 1);
    sub->links = nullptr;
    sub->positions = nullptr;
    sub->nlinks = 0;
}

bool delivery_prepare(WorkerZone *wz, const ChannelList &list, LocalChannel **locals) {
    for (size_t i = 0; i < list.count; i++) {
        locals[i] = wz->session.prepare(list.ids[i]);
        if (locals[i] == nullptr) {
            delivery_discard(wz, locals, i);
            return false;
        }
    }
    return true;
}

void delivery_discard(WorkerZone *wz, LocalChannel **locals, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!locals[i]->registered && locals[i]->count == 0) wz->session.discard(locals[i]);
    }
}

void delivery_attach(Subscriber *sub, LocalChannel **locals, size_t n) {
    WorkerZone *wz = sub->wz;
    for (size_t i = 0; i < n; i++) {
        wz->session.commit(locals[i]);
        sub->positions[i].channel = locals[i];
        ngx_queue_insert_tail(&locals[i]->links, &sub->links[i].in_channel);
    }
    sub->nactive = uint16_t(n);
    sub->attached = true;
    sub->in_zone.owner = sub;
    ngx_queue_insert_tail(&wz->subscribers, &sub->in_zone.queue);
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0, "channels: subscriber %p attached to %uz channels", sub, n);
}

namespace {

// Unlinks a link from its local channel; returns the channel, or nullptr if it was not linked.
LocalChannel *unlink(Subscriber *sub, size_t i) {
    LocalChannel *lc = sub->positions[i].channel;
    if (lc == nullptr) return nullptr;
    ngx_queue_remove(&sub->links[i].in_channel);
    sub->positions[i].channel = nullptr;
    sub->positions[i].active = false;
    return lc;
}

// After the store dropped the counts: registry entries nobody here holds any more go.
void forget_unused(WorkerZone *wz, LocalChannel *const *lcs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (lcs[i]->count == 0 && ngx_queue_empty(&lcs[i]->links)) wz->session.forget(lcs[i]);
    }
}

}  // namespace

void delivery_leave(Subscriber *sub, size_t index) {
    LocalChannel *lc = unlink(sub, index);
    if (lc == nullptr) return;
    sub->nactive--;
    sub->wz->store->unsubscribe(sub->wz->session, &lc, 1, false);
    forget_unused(sub->wz, &lc, 1);
}

void delivery_detach(Subscriber *sub) {
    if (!sub->attached) return;
    WorkerZone *wz = sub->wz;
    LocalChannel *lcs[kMaxChannels] = {};
    size_t n = 0;
    for (size_t i = 0; i < sub->nlinks; i++) {
        if (LocalChannel *lc = unlink(sub, i)) lcs[n++] = lc;
    }
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0, "channels: subscriber %p detached from %uz channels", sub, n);
    wz->store->unsubscribe(wz->session, lcs, n, true);
    forget_unused(wz, lcs, n);
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
    // Thousands of gone subscribers leave freed memory between live blocks, which glibc
    // keeps; once the zone's registry is empty, it goes back to the system.
    if (++gone_since_trim >= kTrimAfter && wz->session.size() == 0) {
        gone_since_trim = 0;
        delivery_trim_heap_later();
    }
}

void delivery_trim_heap_later() noexcept {
    if (trim_timer.timer_set) return;
    trim_timer.handler = trim_handler;
    trim_timer.log = ngx_cycle->log;
    trim_timer.cancelable = 1;
    ngx_add_timer(&trim_timer, kTrimDelay);
}

}  // namespace channels
