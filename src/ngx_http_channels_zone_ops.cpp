// Operations on the locked zone (see ngx_http_channels_zone_ops.h).

#include "ngx_http_channels_zone_ops.h"

#include <algorithm>
#include <cstring>

#include "ngx_http_channels_fault.h"
#include "ngx_http_channels_shm.h"

namespace channels::shm {
namespace {


Channel *channel_of(ngx_rbtree_node_t *node) { return reinterpret_cast<Channel *>(node); }

// Orders channels in the rbtree by id: the key (the first bytes), then the rest. Set as the
// tree's insert function right before each insert, by the process inserting (code
// addresses differ across reloads).
void insert_channel(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel) {
    ngx_rbtree_node_t **p;
    for (;;) {
        if (node->key != temp->key) {
            p = node->key < temp->key ? &temp->left : &temp->right;
        } else {
            p = compare_ids(channel_of(node)->name(), channel_of(temp)->name()) < 0 ? &temp->left : &temp->right;
        }
        if (*p == sentinel) break;
        temp = *p;
    }
    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}

size_t channel_size(std::string_view id) { return offsetof(Channel, id) + id.size(); }

size_t entry_size(const PublishInput &in) {
    return offsetof(Entry, bytes) + in.event.size() + in.content_type.size() + in.data.size();
}

size_t entry_size(const Entry *e) { return offsetof(Entry, bytes) + e->text_size(); }

// An empty view may have no pointer at all, which memcpy must not be given.
u_char *copy_bytes(u_char *dst, std::string_view bytes) {
    return bytes.empty() ? dst : ngx_cpymem(dst, bytes.data(), bytes.size());
}

}  // namespace

size_t slab_size(size_t size) {
    if (size > ngx_pagesize / 2) return ngx_align(size, ngx_pagesize);
    size_t slot = 8;
    while (slot < size) slot <<= 1;
    return slot;
}

ngx_rbtree_key_t id_key(std::string_view id) {
    ngx_rbtree_key_t key = 0;
    for (size_t i = 0; i < sizeof(key); i++) {
        key = key << 8 | (i < id.size() ? static_cast<unsigned char>(id[i]) : 0);
    }
    return key;
}

int compare_ids(std::string_view a, std::string_view b) {
    size_t common = std::min(a.size(), b.size());
    int rc = common == 0 ? 0 : std::memcmp(a.data(), b.data(), common);   // an empty view may hold no pointer
    if (rc != 0) return rc;
    return a.size() < b.size() ? -1 : (a.size() > b.size() ? 1 : 0);
}

ZoneLock::ZoneLock(ShmStore &store) : store_(store), pool_(store.pool()) {
    ngx_shmtx_lock(&pool_->mutex);
    sh_ = static_cast<Shared *>(pool_->data);
    if (sh_->updating) {
        sh_ = store.rebuild_locked(sh_);
        rebuilt_ = true;
    }
    sh_->updating = 1;
    sh_->updater = ngx_pid;
}

ZoneLock::~ZoneLock() {
    sh_->updating = 0;
    ngx_shmtx_unlock(&pool_->mutex);
    if (rebuilt_ && store_.listener() != nullptr) store_.listener()->on_rebuilt();
}

Zone::Zone(ShmStore &store, Shared *sh, uint64_t now) : store_(store), sh_(sh), pool_(store.pool()), now_(now) {}

// ---- channels ----

Channel *Zone::find(std::string_view id) const {
    ngx_rbtree_key_t key = id_key(id);
    ngx_rbtree_node_t *node = sh_->tree.root, *sentinel = sh_->tree.sentinel;
    while (node != sentinel) {
        if (key != node->key) {
            node = key < node->key ? node->left : node->right;
            continue;
        }
        int rc = compare_ids(id, channel_of(node)->name());
        if (rc == 0) return channel_of(node);
        node = rc < 0 ? node->left : node->right;
    }
    return nullptr;
}

Channel *Zone::init_channel(void *mem, std::string_view id) {
    auto *ch = static_cast<Channel *>(mem);
    ngx_memzero(ch, offsetof(Channel, id));
    ngx_memcpy(ch->id, id.data(), id.size());
    ch->len = uint8_t(id.size() - 1);
    ch->node.key = id_key(id);
    ch->trimmed_upto = PackedId::of(sh_->gc_floor);
    sh_->tree.insert = insert_channel;
    ngx_rbtree_insert(&sh_->tree, &ch->node);
    sh_->nchannels++;
    ch->flags = kIdle;   // no message yet: counted against the idle cap until its first
    sh_->idle_bytes += slab_size(channel_size(id));
    return ch;
}

Channel *Zone::create_for_publish(std::string_view id) {
    size_t size = channel_size(id);
    // A new channel holds a message at once: it counts against the messages' budget.
    while (sh_->message_bytes + slab_size(size) > sh_->message_budget && evict_one()) {
    }
    void *mem = alloc_evicting(size);
    return mem == nullptr ? nullptr : init_channel(mem, id);
}

Channel *Zone::create_for_subscriber(std::string_view id, Refusal *why) {
    size_t size = channel_size(id);
    if (sh_->idle_bytes + slab_size(size) > sh_->idle_cap) {
        *why = Refusal::over_cap;
        return nullptr;
    }
    void *mem = ngx_slab_alloc_locked(pool_, size);   // never evicts (README "What one client can cost")
    if (mem == nullptr) {
        *why = Refusal::no_memory;
        return nullptr;
    }
    return init_channel(mem, id);
}

// Idle channels (no message) are counted against the idle cap, the others against the
// messages' budget.
void Zone::set_idle(Channel *ch, bool idle) {
    if (ch->has(kIdle) == idle) return;
    size_t size = slab_size(channel_size(ch->name()));
    if (idle) {
        ch->flags |= kIdle;
        sh_->idle_bytes += size;
        sh_->message_bytes -= size;
    } else {
        ch->flags &= ~kIdle;
        sh_->idle_bytes -= size;
        sh_->message_bytes += size;
    }
}

void Zone::set_exists(Channel *ch, bool exists) {
    ch->flags = exists ? ch->flags | kExists : ch->flags & ~kExists;
    set_deleted(ch, !exists);
}

void Zone::set_deleted(Channel *ch, bool deleted) {
    if (ch->has(kDeleted) == deleted) return;
    ch->flags ^= kDeleted;
    if (deleted) {
        sh_->ndeleted++;
    } else {
        sh_->ndeleted--;
    }
}

void Zone::unpin(Channel *ch) {
    ch->flags &= ~kPinned;
    free_if_unused(ch);
}

// A ring holding only a deletion marker keeps the channel: a client resuming from before
// the deletion is told of it. Wake bits keep it while subscriber counts are being re-added
// after a worker died (they may be short then).
void Zone::free_if_unused(Channel *ch) {
    if (ch->ring_len() != 0 || ch->subscribers != 0 || ch->log_refs != 0 || ch->has(kPinned)) return;
    if (ch->wake_bits != 0 && !counts_settled()) return;
    free_channel(ch);
}

bool Zone::counts_settled() const {
    bool settled = true;
    for_each_record([&](WorkerRecord *r) { settled &= r->counted_epoch == sh_->count_epoch; });
    return settled;
}

void Zone::free_channel(Channel *ch) {
    sh_->gc_floor = std::max(sh_->gc_floor, ch->trimmed_upto.get());
    // Notices must not outlive their channel. Freed, it has no subscriber on any worker
    // (counts settled), so a notice has no one to tell: dropped, not widened to every
    // channel (which would tell other channels' subscribers of a loss they did not have).
    // A client resuming on the name later meets gc_floor, raised above.
    for_each_record([&](WorkerRecord *r) {
        for (uint32_t i = 0; i < r->nlosses;) {
            if (r->losses[i].channel == ch) {
                r->losses[i] = r->losses[--r->nlosses];
            } else {
                i++;
            }
        }
    });
    set_deleted(ch, false);
    ngx_rbtree_delete(&sh_->tree, &ch->node);
    sh_->nchannels--;
    size_t size = slab_size(channel_size(ch->name()));
    if (ch->has(kIdle)) {
        sh_->idle_bytes -= size;
    } else {
        sh_->message_bytes -= size;
    }
    ngx_slab_free_locked(pool_, ch);
}

MessageId Zone::trimmed_upto(const Channel *ch) const { return std::max(ch->trimmed_upto.get(), sh_->gap_floor); }

ChannelInfo Zone::info(Channel *ch) const {
    ChannelInfo info;
    if (ch == nullptr || !(ch->has(kExists) || ch->subscribers > 0)) return info;
    info.exists = true;
    info.published = ch->has(kExists);
    info.subscribers = ch->subscribers;
    info.messages = ch->nmessages;
    for (uint32_t seq = ch->next_seq; seq != ch->head_seq; seq--) {
        const Entry *e = ch->slot(seq - 1);
        if (e->kind == EntryKind::message) {
            info.newest = e->id;
            break;
        }
    }
    info.oldest = oldest_retained(ch);
    return info;
}

// ---- entries ----

MessageId Zone::next_id() {
    sh_->last_id = channels::next_id(sh_->last_id, now_);
    return sh_->last_id;
}

Entry *Zone::append(Channel *ch, EntryKind kind, const PublishInput &in, const MessageId *given) {
    size_t size = entry_size(in);
    while (sh_->message_bytes + slab_size(size) > sh_->message_budget && evict_one()) {
    }
    auto *e = static_cast<Entry *>(alloc_evicting(size));
    if (e == nullptr) return nullptr;
    sh_->message_bytes += slab_size(size);
    if (ch->ring_len() == ch->capacity() && !grow_ring(ch)) {
        sh_->message_bytes -= slab_size(size);
        ngx_slab_free_locked(pool_, e);
        return nullptr;
    }
    e->channel = ch;
    e->kind = kind;
    e->state = EntryState::retained;
    e->bookmarks = 0;
    e->data_len = uint32_t(in.data.size());
    e->event_len = uint8_t(in.event.size());
    e->ctype_len = uint8_t(in.content_type.size());
    copy_bytes(copy_bytes(copy_bytes(e->bytes, in.event), in.content_type), in.data);
    // The id last, after anything that may evict: log order is id order.
    if (given != nullptr) {
        e->id = *given;
        sh_->last_id = *given;
    } else {
        e->id = next_id();
    }
    ngx_queue_insert_tail(&sh_->log, &e->in_log);
    // A worker that had read everything reads on from here if it holds the channel, else it
    // has nothing to read: no worker walks the log to find its place, or crawls through
    // entries of channels it does not hold.
    for_each_record([&](WorkerRecord *r) {
        if (!r->active || r->bookmark != nullptr) return;
        if (ch->wake_bits >> r->bit & 1) {
            move_bookmark(r, e);
        } else {
            r->read_upto = e->id;
        }
    });
    fault::kill_point();   // tests: a worker dying here leaves the entry in the log, not its ring
    push(ch, e);
    set_idle(ch, false);
    if (kind == EntryKind::message) {
        ch->nmessages++;
        sh_->nmessages++;
    }
    return e;
}

bool Zone::grow_ring(Channel *ch) {
    uint32_t capacity = std::max<uint32_t>(ch->capacity() * 2, 2);
    size_t size = capacity * sizeof(Entry *);
    while (sh_->message_bytes + slab_size(size) > sh_->message_budget && evict_one()) {
    }
    auto **ring = static_cast<Entry **>(alloc_evicting(size));
    if (ring == nullptr) return false;
    // Evicting may have taken entries of this channel (or its whole ring): copy what is left.
    uint32_t old_capacity = ch->capacity();
    if (old_capacity >= capacity) {   // impossible; keep the old ring
        ngx_slab_free_locked(pool_, ring);
        return true;
    }
    for (uint32_t seq = ch->head_seq; seq != ch->next_seq; seq++) ring[seq & (capacity - 1)] = ch->slot(seq);
    if (ch->ring != nullptr) {
        sh_->message_bytes -= slab_size(old_capacity * sizeof(Entry *));
        ngx_slab_free_locked(pool_, ch->ring);
    }
    sh_->message_bytes += slab_size(size);
    ch->ring = ring;
    ch->ring_shift = 0;
    while ((uint32_t(1) << ch->ring_shift) < capacity) ch->ring_shift++;
    return true;
}

void Zone::push(Channel *ch, Entry *e) {
    e->seq = ch->next_seq;
    ch->slot(e->seq) = e;
    ch->next_seq++;
}

// Takes the oldest entry out of the ring (it stays in the log for the caller to decide).
Entry *Zone::pop_head(Channel *ch) {
    Entry *e = ch->slot(ch->head_seq);
    ch->head_seq++;
    if (ch->ring_len() == 0) {
        sh_->message_bytes -= slab_size(ch->capacity() * sizeof(Entry *));
        ngx_slab_free_locked(pool_, ch->ring);
        ch->ring = nullptr;
        ch->ring_shift = 0;
    }
    if (e->kind == EntryKind::message) {
        ch->nmessages--;
        sh_->nmessages--;
        ch->trimmed_upto = PackedId::of(std::max(ch->trimmed_upto.get(), e->id));
    }
    if (ch->ring_len() == 0) set_idle(ch, true);
    return e;
}

// The oldest entry leaves the ring; it stays in the log while a worker that holds
// subscribers of the channel has not read it (its live subscribers still get it).
void Zone::trim_head(Channel *ch) {
    Entry *e = pop_head(ch);
    if (!unread(e)) {
        remove_entry(e);
        return;
    }
    e->state = EntryState::trimmed;
    ngx_queue_insert_tail(&sh_->trimmed, &e->in_trimmed);
    ch->log_refs++;
}

void Zone::trim_history(Channel *ch) {
    while (ch->nmessages > sh_->history) trim_head(ch);
}

void Zone::clear(Channel *ch) {
    bool pinned = ch->has(kPinned);
    ch->flags |= kPinned;   // emptying it must not free it under our feet
    while (ch->ring_len() > 0) trim_head(ch);
    if (!pinned) ch->flags &= ~kPinned;
}

// Frees an entry that is out of its ring. A message some worker had not read yet is lost
// to that worker's subscribers: the channel remembers it so they are told (channel-gap).
void Zone::remove_entry(Entry *e) {
    Channel *ch = e->channel;
    if (e->bookmarks > 0) {
        ngx_queue_t *next = ngx_queue_next(&e->in_log);
        Entry *to = next == ngx_queue_sentinel(&sh_->log) ? nullptr : ngx_queue_data(next, Entry, in_log);
        for_each_record([&](WorkerRecord *r) {
            if (r->bookmark == e) move_bookmark(r, to);
        });
    }
    ngx_queue_remove(&e->in_log);
    if (e->state == EntryState::trimmed) {
        ngx_queue_remove(&e->in_trimmed);
        ch->log_refs--;
    }
    note_loss_all(ch, e->id);   // a message or a deletion a worker had not read: told, not skipped
    sh_->message_bytes -= slab_size(entry_size(e));
    ngx_slab_free_locked(pool_, e);
    free_if_unused(ch);
}

// Whether a worker holding subscribers of e's channel has not read the log up to e.
bool Zone::unread(const Entry *e) const {
    uint64_t bits = e->channel->wake_bits;
    if (bits == 0) return false;
    for (ngx_queue_t *q = ngx_queue_head(&sh_->records); q != ngx_queue_sentinel(&sh_->records);
         q = ngx_queue_next(q)) {
        const WorkerRecord *r = ngx_queue_data(q, WorkerRecord, in_zone);
        if (r->active && (bits >> r->bit & 1) && r->read_upto < e->id) return true;
    }
    return false;
}

size_t Zone::expire(size_t budget) {
    size_t n = 0;
    while (n < budget && !ngx_queue_empty(&sh_->log)) {
        Entry *e = ngx_queue_data(ngx_queue_head(&sh_->log), Entry, in_log);
        if (!expired(e)) break;
        if (e->state == EntryState::retained) pop_head(e->channel);   // the log's oldest is its ring's
        remove_entry(e);
        n++;
    }
    return n;
}

size_t Zone::release_read(size_t budget) {
    size_t n = 0;
    while (n < budget && !ngx_queue_empty(&sh_->trimmed)) {
        Entry *e = ngx_queue_data(ngx_queue_head(&sh_->trimmed), Entry, in_trimmed);
        if (unread(e)) break;
        remove_entry(e);
        n++;
    }
    return n;
}

// The oldest entry of the zone goes, retained or kept for a worker that has not read it:
// a lagging worker loses its oldest news before live subscribers lose their newest.
bool Zone::evict_one() {
    if (ngx_queue_empty(&sh_->log)) return false;
    Entry *e = ngx_queue_data(ngx_queue_head(&sh_->log), Entry, in_log);
    if (e->kind == EntryKind::message && (e->state == EntryState::retained || unread(e))) sh_->evicted++;
    ngx_log_debug2(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0, "channels: evicting an entry of \"%*s\"",
                   e->channel->name().size(), e->channel->name().data());
    if (e->state == EntryState::retained) pop_head(e->channel);
    remove_entry(e);
    return true;
}

// Messages of several slab sizes leave pages partly used: counted in slots, the idle cap
// could still have room while no page is free for a channel. A publish evicts (a few
// entries at a time) until the free pages cover what idle channels may still claim.
void Zone::keep_headroom(const Entry *newest) {
    uint64_t reserve = sh_->idle_cap - std::min(sh_->idle_cap, sh_->idle_bytes);
    for (int n = 0; n < kHeadroomEvictions && uint64_t(pool_->pfree) * ngx_pagesize < reserve; n++) {
        if (ngx_queue_empty(&sh_->log) || ngx_queue_head(&sh_->log) == &newest->in_log) return;   // not the new one
        evict_one();
    }
}

void *Zone::alloc_evicting(size_t size) {
    for (;;) {
        void *p = ngx_slab_alloc_locked(pool_, size);
        if (p != nullptr) return p;
        if (!evict_one()) return nullptr;
    }
}

// ---- reading ----

uint32_t Zone::seq_after(Channel *ch, MessageId cursor) const {
    uint32_t lo = 0, hi = ch->ring_len();
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ch->slot(ch->head_seq + mid)->id <= cursor) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return ch->head_seq + lo;
}

uint32_t Zone::seq_last(Channel *ch, uint32_t n) const {
    uint32_t seq = ch->next_seq;
    while (n > 0 && seq != ch->head_seq) {
        seq--;
        if (ch->slot(seq)->kind == EntryKind::message) n--;
    }
    return seq;
}

MessageId Zone::oldest_retained(Channel *ch) const {
    // Expired entries the collector has not taken yet are skipped by id, not one by one.
    uint64_t cutoff = now_ >= sh_->ttl_ms ? now_ - sh_->ttl_ms : 0;
    uint32_t first = seq_after(ch, MessageId{cutoff, UINT32_MAX});
    for (uint32_t seq = first, n = 0; seq != ch->next_seq && n < 64; seq++, n++) {
        const Entry *e = ch->slot(seq);
        if (e->kind == EntryKind::message && !expired(e)) return e->id;
    }
    return {};
}

bool Zone::copy(const Entry *e, uint16_t channel_index, Batch &out) const {
    std::string_view name = e->channel->name();
    if (out.items.size() == out.items.capacity() || !out.fits(name.size() + e->text_size())) return false;
    MessageCopy m;
    m.id = e->id;
    m.kind = e->kind;
    m.channel_index = channel_index;
    // A page mostly holds runs of one channel: its id is kept once per run. The event, content
    // type and data lie together in the entry and are copied as one.
    const MessageCopy *prev = out.items.empty() ? nullptr : &out.items.back();
    m.channel_id = prev != nullptr && prev->channel_id == name ? prev->channel_id : out.keep(name);
    std::string_view text = out.keep({reinterpret_cast<const char *>(e->bytes), e->text_size()});
    m.event = text.substr(0, e->event_len);
    m.content_type = text.substr(e->event_len, e->ctype_len);
    m.data = text.substr(size_t(e->event_len) + e->ctype_len);
    out.items.push_back(m);
    return true;
}

// ---- workers ----

WorkerRecord *Zone::claim_record(ngx_pid_t pid, uint64_t start_time, uint32_t wake_nonce) {
    // Counted with the messages (it may evict some), so that the idle channels' share stays whole.
    while (sh_->message_bytes + slab_size(sizeof(WorkerRecord)) > sh_->message_budget && evict_one()) {
    }
    auto *rec = static_cast<WorkerRecord *>(alloc_evicting(sizeof(WorkerRecord)));
    if (rec == nullptr) return nullptr;
    sh_->message_bytes += slab_size(sizeof(WorkerRecord));
    uint64_t used = 0;
    size_t n = 0;
    for_each_record([&](WorkerRecord *r) {
        used |= uint64_t(1) << r->bit;
        n++;
    });
    uint32_t bit = 0;
    while (bit < 64 && (used >> bit & 1)) bit++;
    if (bit == 64) bit = uint32_t(n % 64);   // more than 64 workers: bits are shared
    new (rec) WorkerRecord{};
    rec->pid = pid;
    rec->bit = bit;
    rec->start_time = start_time;
    rec->wake_nonce = wake_nonce;
    rec->read_upto = sh_->last_id;
    rec->counted_epoch = sh_->count_epoch;
    rec->lost_upto = sh_->dropped_floor;   // after a rebuild: what its subscribers had is gone
    ngx_queue_insert_tail(&sh_->records, &rec->in_zone);
    sh_->records_version++;
    return rec;
}

bool Zone::bit_shared(const WorkerRecord *rec) const {
    bool shared = false;
    for_each_record([&](WorkerRecord *r) {
        if (r != rec && r->bit == rec->bit) shared = true;
    });
    return shared;
}

void Zone::note_loss(WorkerRecord *rec, Channel *ch, MessageId upto) {
    for (uint32_t i = 0; i < rec->nlosses; i++) {
        if (rec->losses[i].channel == ch) {
            rec->losses[i].upto = std::max(rec->losses[i].upto, upto);
            return;
        }
    }
    if (rec->nlosses < kLossNotices) {
        rec->losses[rec->nlosses++] = {ch, upto};
    } else {
        rec->lost_upto = std::max(rec->lost_upto, upto);   // too many: every channel is told
    }
}

void Zone::note_loss_all(Channel *ch, MessageId upto) {
    if (ch->wake_bits == 0) return;
    for_each_record([&](WorkerRecord *r) {
        if (r->active && (ch->wake_bits >> r->bit & 1) && r->read_upto < upto) note_loss(r, ch, upto);
    });
}

void Zone::take_losses(WorkerRecord *rec, Batch &out) {
    for (uint32_t i = 0; i < rec->nlosses; i++) {
        std::string_view name = rec->losses[i].channel->name();
        if (out.gaps.size() == out.gaps.capacity() || !out.fits(name.size())) {
            out.all_lost = std::max(out.all_lost, rec->losses[i].upto);
            continue;
        }
        out.gaps.push_back({0, out.keep(name), {}, rec->losses[i].upto});
    }
    rec->nlosses = 0;
    out.all_lost = std::max(out.all_lost, rec->lost_upto);
    rec->lost_upto = {};
}

void Zone::move_bookmark(WorkerRecord *rec, Entry *to) {
    if (rec->bookmark != nullptr) rec->bookmark->bookmarks--;
    rec->bookmark = to;
    if (to != nullptr) to->bookmarks++;
}

void Zone::sync(ZoneSession &s) {
    if (s.record != nullptr && s.generation == sh_->generation) {
        if (s.counted_epoch == sh_->count_epoch) return;
        // Counts were reset after a worker died: add this worker's back.
        s.for_each([](LocalChannel *lc) {
            if (lc->count > 0 && lc->key != 0) reinterpret_cast<Channel *>(lc->key)->subscribers += lc->count;
        });
        s.counted_epoch = sh_->count_epoch;
        record_of(s)->counted_epoch = s.counted_epoch;
        return;
    }
    // First call of this worker, or a new zone (rebuilt after a torn update): claim a
    // record, put every held channel back.
    bool rejoins = s.record != nullptr;
    WorkerRecord *rec = claim_record(ngx_pid, store_.start_time(), s.wake_nonce);
    s.record = rec;
    s.generation = sh_->generation;
    s.counted_epoch = sh_->count_epoch;
    if (rec == nullptr) return;
    s.bit = rec->bit;
    uint32_t held = 0;
    s.for_each([&](LocalChannel *lc) {
        lc->key = 0;
        if (lc->count == 0) return;
        Channel *ch = find(lc->name());
        Refusal why;
        if (ch == nullptr && (ch = create_for_subscriber(lc->name(), &why)) == nullptr) {
            ch = create_for_publish(lc->name());   // the zone was just emptied: room is there
        }
        if (ch == nullptr) return;
        ch->subscribers += lc->count;
        ch->wake_bits |= uint64_t(1) << rec->bit;
        lc->key = reinterpret_cast<ChannelKey>(ch);
        held++;
    });
    rec->connections = s.connections;
    sh_->connections += s.connections;
    rec->active = held > 0;
    // Published in the rebuilt zone before this worker came back: not read by it, so lost to
    // its subscribers, and told. (A worker's first call has no subscriber yet: nothing lost.)
    if (rejoins && held > 0) rec->lost_upto = std::max(rec->lost_upto, sh_->last_id);
}

void Zone::attach(ZoneSession &s, Channel *ch, LocalChannel *lc) {
    WorkerRecord *rec = record_of(s);
    if (lc->count++ == 0) {
        ch->wake_bits |= uint64_t(1) << rec->bit;
        s.held++;
    }
    lc->key = reinterpret_cast<ChannelKey>(ch);
    ch->subscribers++;
    if (!rec->active) {
        // Its first subscriber: the worker reads the log from here on, and nothing older
        // has to wait for it.
        rec->active = 1;
        rec->read_upto = sh_->last_id;
        move_bookmark(rec, nullptr);
    }
}

void Zone::detach(ZoneSession &s, Channel *ch, LocalChannel *lc) {
    if (lc->count == 0) return;
    WorkerRecord *rec = record_of(s);
    if (ch->subscribers > 0) ch->subscribers--;
    if (ch->subscribers == 0 && ch->wake_bits != 0 && counts_settled()) {
        ch->wake_bits = 0;   // no worker holds it (also clears bits shared by 65+ records)
    }
    if (--lc->count == 0) {
        if (!bit_shared(rec)) ch->wake_bits &= ~(uint64_t(1) << rec->bit);
        if (--s.held == 0) {
            rec->active = 0;
            move_bookmark(rec, nullptr);
        }
    }
    free_if_unused(ch);
}

void Zone::drop_record(WorkerRecord *rec) {
    move_bookmark(rec, nullptr);
    sh_->connections -= std::min(sh_->connections, rec->connections);
    ngx_queue_remove(&rec->in_zone);
    ngx_slab_free_locked(pool_, rec);
    sh_->message_bytes -= slab_size(sizeof(WorkerRecord));
    sh_->records_version++;
}

uint64_t Zone::record_bits() const {
    uint64_t bits = 0;
    for_each_record([&](WorkerRecord *r) { bits |= uint64_t(1) << r->bit; });
    return bits;
}

// After dropping records of dead workers: their subscriber counts cannot be told apart
// from the others', so every channel's count restarts at zero and each live worker adds
// its own back (ZoneSession::counted_epoch, Zone::sync()). Bits no live worker uses go.
void Zone::reset_counts() {
    sh_->count_epoch++;   // first: no count is settled until its worker adds it back
    uint64_t live = record_bits();
    for_each_channel([&](Channel *ch) {
        ch->subscribers = 0;
        ch->wake_bits &= live;
        free_if_unused(ch);
    });
}

}  // namespace channels::shm
