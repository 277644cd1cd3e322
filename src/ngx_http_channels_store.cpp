// The shared-memory store (see ngx_http_channels_store.h for the contract).

#include "ngx_http_channels_store.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <new>

namespace chn {
namespace {

struct Channel;

// Where an entry's in_channel link is.
enum class EntryState : uint8_t {
    retained,   // in its channel's messages: replayable
    trimmed,    // out of its channel (history), in Shared::trimmed until every worker read it
    marker,     // a channel-deleted marker: self-linked
};

// A retained message or a channel-deleted marker. One slab allocation, bytes inline.
struct Entry {
    ngx_queue_t in_log;        // Shared::log, id order
    ngx_queue_t in_channel;    // Channel::messages (markers: self-linked)
    Channel    *channel;
    MessageId   id;
    uint64_t    time_ms;       // publish time, for ttl
    uint32_t    data_len;
    uint8_t     event_len;
    uint8_t     ctype_len;     // 0: text/plain
    EntryKind   kind;
    EntryState  state;
    u_char      bytes[1];      // event, content type, data

    std::string_view event() const { return {reinterpret_cast<const char *>(bytes), event_len}; }
    std::string_view content_type() const {
        return {reinterpret_cast<const char *>(bytes) + event_len, ctype_len};
    }
    std::string_view data() const {
        return {reinterpret_cast<const char *>(bytes) + event_len + ctype_len, data_len};
    }
};

// How many subscribers of one channel one worker process holds.
struct WorkerSub {
    ngx_queue_t in_channel;    // Channel::workers
    ngx_queue_t in_record;     // WorkerRecord::subs
    Channel    *channel;
    uint32_t    count;
    uint32_t    record;
};

struct Channel {
    ngx_rbtree_node_t node;    // key: crc32 of the id, ties broken by memcmp
    ngx_queue_t messages;      // Entry::in_channel, id order
    ngx_queue_t lru;           // Shared::channels, least recently active first
    ngx_queue_t workers;       // WorkerSub::in_channel
    MessageId   trimmed_upto;  // newest id no longer replayable (history, ttl, eviction)
    MessageId   dropped_upto;  // newest id freed before every worker had read it
    uint64_t    last_active_ms;
    uint32_t    nmessages;
    uint32_t    log_refs;      // its entries in the log but not in messages (trimmed, markers)
    uint32_t    subscribers;
    uint32_t    pins;          // held by an operation in progress
    uint8_t     exists;        // cleared by DELETE until the next publish or subscribe
    uint8_t     len;           // id length - 1 (ids are 1..255 bytes)
    u_char      id[1];

    std::string_view name() const {
        return {reinterpret_cast<const char *>(id), size_t(len) + 1};
    }
};

// One live worker process using the zone. Lets a worker that died be accounted for.
struct WorkerRecord {
    ngx_pid_t   pid;
    uint32_t    number;        // ngx_worker: index of its wake-up eventfd
    uint64_t    connections;   // subscriber connections it holds
    ngx_queue_t subs;          // WorkerSub::in_record
    MessageId   read_upto;     // the log up to here was read by this worker's delivery
    std::atomic<uint64_t> wakeups;
    std::atomic<uint64_t> entries_read;
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared counters need lock-free atomics");

}  // namespace

struct Shared {
    ngx_rbtree_t      tree;
    ngx_rbtree_node_t sentinel;
    ngx_queue_t       log;            // every Entry, id order: the publish log
    ngx_queue_t       trimmed;        // Entry::in_channel of trimmed messages, about id order
    ngx_queue_t       channels;       // Channel::lru
    MessageId         last_id;
    MessageId         gc_floor;       // newest trimmed id of channels already collected
    uint64_t          history;
    uint64_t          ttl_ms;
    uint64_t          nchannels;
    uint64_t          nmessages;
    uint64_t          connections;
    uint64_t          published;
    uint64_t          evicted;
    std::atomic<uint64_t> delivered;
    std::atomic<uint64_t> dropped_slow;
    WorkerRecord      workers[kMaxWorkerRecords];
};

static_assert(std::is_standard_layout_v<Shared>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<Entry>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<Channel>, "shared memory holds standard-layout data only");

namespace {

// Scoped zone lock: the one lock guarding everything under Shared.
class ZoneLock {
public:
    explicit ZoneLock(ngx_slab_pool_t *pool) : pool_(pool) { ngx_shmtx_lock(&pool_->mutex); }
    ~ZoneLock() { ngx_shmtx_unlock(&pool_->mutex); }
    ZoneLock(const ZoneLock &) = delete;
    ZoneLock &operator=(const ZoneLock &) = delete;

private:
    ngx_slab_pool_t *pool_;
};

template <typename T>
T *container(ngx_queue_t *q, ngx_queue_t T::*member) {
    auto offset = reinterpret_cast<size_t>(&(static_cast<T *>(nullptr)->*member));
    return reinterpret_cast<T *>(reinterpret_cast<u_char *>(q) - offset);
}

Entry *log_entry(ngx_queue_t *q) { return container(q, &Entry::in_log); }
Entry *channel_entry(ngx_queue_t *q) { return container(q, &Entry::in_channel); }
Channel *lru_channel(ngx_queue_t *q) { return container(q, &Channel::lru); }
WorkerSub *channel_worker(ngx_queue_t *q) { return container(q, &WorkerSub::in_channel); }
WorkerSub *record_sub(ngx_queue_t *q) { return container(q, &WorkerSub::in_record); }

uint32_t hash_id(std::string_view id) {
    return ngx_crc32_short(reinterpret_cast<u_char *>(const_cast<char *>(id.data())), id.size());
}

int compare_ids(std::string_view a, std::string_view b) {
    int rc = std::memcmp(a.data(), b.data(), std::min(a.size(), b.size()));
    if (rc != 0) return rc;
    return a.size() < b.size() ? -1 : (a.size() > b.size() ? 1 : 0);
}

extern "C" void channels_rbtree_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
                                       ngx_rbtree_node_t *sentinel) {
    ngx_rbtree_node_t **p;
    for (;;) {
        if (node->key != temp->key) {
            p = node->key < temp->key ? &temp->left : &temp->right;
        } else {
            auto *a = reinterpret_cast<Channel *>(node);
            auto *b = reinterpret_cast<Channel *>(temp);
            p = compare_ids(a->name(), b->name()) < 0 ? &temp->left : &temp->right;
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

// The operations below run with the zone locked.
class Locked {
public:
    Locked(ZoneConf *zone, uint64_t now) : zone_(zone), sh_(zone->sh), pool_(zone->shpool), now_(now) {}

    Channel *find(std::string_view id) const {
        uint32_t hash = hash_id(id);
        ngx_rbtree_node_t *node = sh_->tree.root, *sentinel = sh_->tree.sentinel;
        while (node != sentinel) {
            if (hash != node->key) {
                node = hash < node->key ? node->left : node->right;
                continue;
            }
            int rc = compare_ids(id, reinterpret_cast<Channel *>(node)->name());
            if (rc == 0) return reinterpret_cast<Channel *>(node);
            node = rc < 0 ? node->left : node->right;
        }
        return nullptr;
    }

    // Finds or creates the channel, pinned so that eviction cannot free it.
    Channel *pin(std::string_view id) {
        Channel *ch = find(id);
        if (ch == nullptr) {
            ch = create(id);
            if (ch == nullptr) return nullptr;
        }
        ch->pins++;
        set_exists(ch, true);
        touch(ch);
        return ch;
    }

    // nchannels counts channels that exist (not deleted, not yet collected).
    void set_exists(Channel *ch, bool exists) {
        if (bool(ch->exists) == exists) return;
        ch->exists = exists;
        if (exists) {
            sh_->nchannels++;
        } else {
            sh_->nchannels--;
        }
    }

    void unpin(Channel *ch) { ch->pins--; }

    void touch(Channel *ch) {
        ch->last_active_ms = now_;
        ngx_queue_remove(&ch->lru);
        ngx_queue_insert_tail(&sh_->channels, &ch->lru);
    }

    bool expired(const Entry *e) const { return e->time_ms + sh_->ttl_ms <= now_; }

    // Removes expired entries from the head of the log, at most `budget` of them.
    void expire(size_t budget) {
        while (budget-- > 0 && !ngx_queue_empty(&sh_->log)) {
            Entry *e = log_entry(ngx_queue_head(&sh_->log));
            if (!expired(e)) break;
            remove_entry(e);
        }
    }

    // Whether a worker holding subscribers of e's channel has not read the log up to e.
    bool unread(const Entry *e) const {
        const Channel *ch = e->channel;
        for (const ngx_queue_t *q = ngx_queue_head(&ch->workers); q != ngx_queue_sentinel(&ch->workers);
             q = ngx_queue_next(q)) {
            const auto *ws = reinterpret_cast<const WorkerSub *>(
                reinterpret_cast<const u_char *>(q) - offsetof(WorkerSub, in_channel));
            if (sh_->workers[ws->record].read_upto < e->id) return true;
        }
        return false;
    }

    // Takes e out of the zone. A message some worker had not read yet is lost to that
    // worker's subscribers: the channel remembers it so they are told (channel-gap).
    void remove_entry(Entry *e) {
        Channel *ch = e->channel;
        ngx_queue_remove(&e->in_log);
        if (e->state == EntryState::retained) {
            unlink_retained(e);
        } else {
            if (e->state == EntryState::trimmed) {
                ngx_queue_remove(&e->in_channel);   // a multi-statement macro: keep the braces
            }
            ch->log_refs--;
        }
        if (e->kind == EntryKind::message && unread(e)) {
            ch->dropped_upto = std::max(ch->dropped_upto, e->id);
        }
        ngx_slab_free_locked(pool_, e);
    }

    void unlink_retained(Entry *e) {
        Channel *ch = e->channel;
        ngx_queue_remove(&e->in_channel);
        ch->nmessages--;
        sh_->nmessages--;
        ch->trimmed_upto = std::max(ch->trimmed_upto, e->id);
    }

    // History trimming: the message leaves its channel (no more replay) but stays in the
    // log until every worker holding subscribers has read it, so live subscribers of a
    // lagging worker still get it.
    void trim_oldest(Channel *ch) {
        Entry *e = channel_entry(ngx_queue_head(&ch->messages));
        if (!unread(e)) {
            remove_entry(e);
            return;
        }
        unlink_retained(e);
        e->state = EntryState::trimmed;
        ngx_queue_insert_tail(&sh_->trimmed, &e->in_channel);
        ch->log_refs++;
    }

    // Frees trimmed messages read by every worker that needed them. Stops at the first
    // still needed: its channel is active, so its workers are about to read it.
    void release_read() {
        while (!ngx_queue_empty(&sh_->trimmed)) {
            Entry *e = channel_entry(ngx_queue_head(&sh_->trimmed));
            if (unread(e)) break;
            remove_entry(e);
        }
    }

    // Allocates, evicting the zone's oldest entries (then idle channels) while memory is short.
    void *alloc(size_t size) {
        for (;;) {
            void *p = ngx_slab_alloc_locked(pool_, size);
            if (p != nullptr) return p;
            if (!evict_one()) return nullptr;
        }
    }

    bool evict_one() {
        for (ngx_queue_t *q : {&sh_->trimmed, &sh_->log}) {
            if (ngx_queue_empty(q)) continue;
            Entry *e = q == &sh_->log ? log_entry(ngx_queue_head(q)) : channel_entry(ngx_queue_head(q));
            if (e->state == EntryState::retained) sh_->evicted++;
            remove_entry(e);
            return true;
        }
        for (ngx_queue_t *q = ngx_queue_head(&sh_->channels); q != ngx_queue_sentinel(&sh_->channels);
             q = ngx_queue_next(q)) {
            Channel *ch = lru_channel(q);
            if (collectable(ch)) {
                free_channel(ch);
                return true;
            }
        }
        return false;
    }

    bool collectable(const Channel *ch) const {
        return ch->nmessages == 0 && ch->log_refs == 0 && ch->subscribers == 0 && ch->pins == 0;
    }

    void free_channel(Channel *ch) {
        set_exists(ch, false);
        sh_->gc_floor = std::max(sh_->gc_floor, ch->trimmed_upto);
        ngx_rbtree_delete(&sh_->tree, &ch->node);
        ngx_queue_remove(&ch->lru);
        ngx_slab_free_locked(pool_, ch);
    }

    MessageId next_id() {
        sh_->last_id = channels::next_id(sh_->last_id, now_);
        return sh_->last_id;
    }

    // Appends an entry to the log (and to its channel when it is a message). The id is the
    // zone's next one, or one assigned elsewhere (Redis) that is newer than the zone's last.
    Entry *append(Channel *ch, EntryKind kind, const PublishInput &in, const MessageId *given = nullptr) {
        size_t size = offsetof(Entry, bytes) + in.event.size() + in.content_type.size() + in.data.size();
        auto *e = static_cast<Entry *>(alloc(size));
        if (e == nullptr) return nullptr;
        e->channel = ch;
        if (given != nullptr) {
            e->id = *given;
            sh_->last_id = *given;
        } else {
            e->id = next_id();
        }
        e->time_ms = given != nullptr ? std::min(given->ms, now_) : now_;
        e->kind = kind;
        e->state = kind == EntryKind::message ? EntryState::retained : EntryState::marker;
        e->data_len = uint32_t(in.data.size());
        e->event_len = uint8_t(in.event.size());
        e->ctype_len = uint8_t(in.content_type.size());
        copy_bytes(copy_bytes(copy_bytes(e->bytes, in.event), in.content_type), in.data);
        ngx_queue_insert_tail(&sh_->log, &e->in_log);
        if (kind == EntryKind::message) {
            ngx_queue_insert_tail(&ch->messages, &e->in_channel);
            ch->nmessages++;
            sh_->nmessages++;
        } else {
            ngx_queue_init(&e->in_channel);
            ch->log_refs++;
        }
        return e;
    }

    void trim_history(Channel *ch) {
        while (ch->nmessages > sh_->history) trim_oldest(ch);
    }

    uint64_t wake_mask(Channel *ch) const {
        uint64_t mask = 0;
        for (ngx_queue_t *q = ngx_queue_head(&ch->workers); q != ngx_queue_sentinel(&ch->workers);
             q = ngx_queue_next(q)) {
            mask |= uint64_t(1) << (sh_->workers[channel_worker(q)->record].number & 63);
        }
        return mask;
    }

    WorkerSub *worker_sub(Channel *ch, uint32_t record) const {
        for (ngx_queue_t *q = ngx_queue_head(&ch->workers); q != ngx_queue_sentinel(&ch->workers);
             q = ngx_queue_next(q)) {
            if (channel_worker(q)->record == record) return channel_worker(q);
        }
        return nullptr;
    }

    WorkerSub *add_worker_sub(Channel *ch, uint32_t record) {
        auto *ws = static_cast<WorkerSub *>(alloc(sizeof(WorkerSub)));
        if (ws == nullptr) return nullptr;
        ws->channel = ch;
        ws->count = 0;
        ws->record = record;
        ngx_queue_insert_tail(&ch->workers, &ws->in_channel);
        ngx_queue_insert_tail(&sh_->workers[record].subs, &ws->in_record);
        return ws;
    }

    void drop_worker_sub(WorkerSub *ws, uint32_t count) {
        ws->count -= count;
        ws->channel->subscribers -= count;
        if (ws->count == 0) {
            ngx_queue_remove(&ws->in_channel);
            ngx_queue_remove(&ws->in_record);
            ngx_slab_free_locked(pool_, ws);
        }
    }

    void purge_record(uint32_t index) {
        WorkerRecord &rec = sh_->workers[index];
        while (!ngx_queue_empty(&rec.subs)) {
            WorkerSub *ws = record_sub(ngx_queue_head(&rec.subs));
            drop_worker_sub(ws, ws->count);
        }
        sh_->connections -= rec.connections;
        rec.connections = 0;
        rec.pid = 0;
    }

    void purge_dead_records() {
        for (uint32_t i = 0; i < kMaxWorkerRecords; i++) {
            ngx_pid_t pid = sh_->workers[i].pid;
            if (pid != 0 && pid != ngx_pid && kill(pid, 0) == -1 && errno == ESRCH) {
                ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                              "channels: zone \"%V\": releasing subscribers of exited worker %P",
                              &zone_->name, pid);
                purge_record(i);
            }
        }
    }

    // Newest entries of a channel after `after`, oldest first, into out.
    void collect_after(Channel *ch, MessageId after, std::vector<Entry *> &out) const {
        size_t first = out.size();
        for (ngx_queue_t *q = ngx_queue_last(&ch->messages); q != ngx_queue_sentinel(&ch->messages);
             q = ngx_queue_prev(q)) {
            Entry *e = channel_entry(q);
            if (e->id <= after) break;
            if (!expired(e)) out.push_back(e);
        }
        std::reverse(out.begin() + first, out.end());
    }

    void collect_last(Channel *ch, ngx_int_t n, std::vector<Entry *> &out) const {
        size_t first = out.size();
        for (ngx_queue_t *q = ngx_queue_last(&ch->messages);
             n > 0 && q != ngx_queue_sentinel(&ch->messages); q = ngx_queue_prev(q)) {
            Entry *e = channel_entry(q);
            if (expired(e)) break;
            out.push_back(e);
            n--;
        }
        std::reverse(out.begin() + first, out.end());
    }

    MessageId oldest_retained(Channel *ch) const {
        for (ngx_queue_t *q = ngx_queue_head(&ch->messages); q != ngx_queue_sentinel(&ch->messages);
             q = ngx_queue_next(q)) {
            if (!expired(channel_entry(q))) return channel_entry(q)->id;
        }
        return {};
    }

    ChannelInfo info(Channel *ch) const {
        ChannelInfo info;
        if (ch == nullptr || !ch->exists) return info;
        info.exists = true;
        info.subscribers = ch->subscribers;
        for (ngx_queue_t *q = ngx_queue_head(&ch->messages); q != ngx_queue_sentinel(&ch->messages);
             q = ngx_queue_next(q)) {
            if (expired(channel_entry(q))) continue;
            if (info.messages++ == 0) info.oldest = channel_entry(q)->id;
            info.newest = channel_entry(q)->id;
        }
        return info;
    }

    Shared *sh() const { return sh_; }
    uint64_t now() const { return now_; }

private:
    Channel *create(std::string_view id) {
        void *mem = alloc(offsetof(Channel, id) + id.size());
        if (mem == nullptr) return nullptr;
        auto *ch = new (mem) Channel{};
        ngx_memcpy(ch->id, id.data(), id.size());
        ch->len = uint8_t(id.size() - 1);
        ch->node.key = hash_id(id);
        ch->trimmed_upto = sh_->gc_floor;
        ch->dropped_upto = sh_->gc_floor;
        ngx_queue_init(&ch->messages);
        ngx_queue_init(&ch->workers);
        ngx_queue_insert_tail(&sh_->channels, &ch->lru);
        ngx_rbtree_insert(&sh_->tree, &ch->node);
        return ch;
    }

    ZoneConf        *zone_;
    Shared          *sh_;
    ngx_slab_pool_t *pool_;
    uint64_t         now_;
};

// Copies entries into worker memory. Runs under the lock; may throw bad_alloc, which
// leaves the zone untouched.
void copy_entries(Locked &z, const std::vector<Entry *> &entries, Batch &batch) {
    size_t total = 0;
    for (Entry *e : entries) {
        total += e->channel->name().size() + e->event_len + e->ctype_len + e->data_len;
    }
    batch.bytes.reserve(batch.bytes.size() + total);
    batch.items.reserve(batch.items.size() + entries.size());
    auto keep = [&batch](std::string_view s) {
        size_t at = batch.bytes.size();
        batch.bytes.insert(batch.bytes.end(), s.begin(), s.end());
        return at;
    };
    struct Offsets { size_t ch, ev, ct, data; };
    std::vector<Offsets> offsets;
    offsets.reserve(entries.size());
    for (Entry *e : entries) {
        offsets.push_back({keep(e->channel->name()), keep(e->event()), keep(e->content_type()),
                           keep(e->data())});
    }
    const char *base = batch.bytes.data();
    for (size_t i = 0; i < entries.size(); i++) {
        Entry *e = entries[i];
        MessageCopy m;
        m.id = e->id;
        m.channel = reinterpret_cast<ChannelKey>(e->channel);
        m.kind = e->kind;
        m.channel_id = {base + offsets[i].ch, e->channel->name().size()};
        m.event = {base + offsets[i].ev, e->event_len};
        m.content_type = {base + offsets[i].ct, e->ctype_len};
        m.data = {base + offsets[i].data, e->data_len};
        m.channel_dropped = e->channel->dropped_upto;
        m.channel_oldest = z.oldest_retained(e->channel);
        batch.items.push_back(m);
    }
}

// Orders entries of several channels by id, keeping at most limit of them and (but for
// the first) at most byte_limit bytes of data.
void order_entries(std::vector<Entry *> &entries, size_t limit, size_t byte_limit, Batch &batch) {
    std::sort(entries.begin(), entries.end(), [](Entry *a, Entry *b) { return a->id < b->id; });
    size_t keep = 0, bytes = 0;
    while (keep < entries.size() && keep < limit) {
        bytes += entries[keep]->data_len;
        if (keep > 0 && bytes > byte_limit) break;
        keep++;
    }
    if (keep < entries.size()) {
        entries.resize(keep);
        batch.more = true;
    }
}

// Sets the gap list: channels whose messages after the cursor are no longer all retained.
void find_gaps(Locked &z, Channel *const *chs, size_t n, MessageId cursor, Batch &batch) {
    for (size_t i = 0; i < n; i++) {
        if (chs[i]->trimmed_upto <= cursor) continue;
        GapInfo gap;
        gap.channel = reinterpret_cast<ChannelKey>(chs[i]);
        gap.trimmed_upto = chs[i]->trimmed_upto;
        gap.oldest = z.oldest_retained(chs[i]);
        gap.channel_id.assign(chs[i]->name());
        batch.gaps.push_back(std::move(gap));
    }
}

bool claim_subscription(Locked &z, Channel *const *chs, size_t n, uint32_t record) {
    WorkerRecord &rec = z.sh()->workers[record];
    if (ngx_queue_empty(&rec.subs)) {
        // Its first subscriber: the worker starts reading the log from here (as
        // delivery_attach() moves its cursor), so older entries need not wait for it.
        rec.read_upto = z.sh()->last_id;
    }
    WorkerSub *added[channels::kMaxChannels];
    size_t nadded = 0;
    for (size_t i = 0; i < n; i++) {
        if (z.worker_sub(chs[i], record) != nullptr) continue;
        WorkerSub *ws = z.add_worker_sub(chs[i], record);
        if (ws == nullptr) {
            while (nadded > 0) z.drop_worker_sub(added[--nadded], 0);
            return false;
        }
        added[nadded++] = ws;
    }
    for (size_t i = 0; i < n; i++) {
        z.worker_sub(chs[i], record)->count++;
        chs[i]->subscribers++;
    }
    z.sh()->workers[record].connections++;
    z.sh()->connections++;
    return true;
}

}  // namespace

// ---- zone set-up ----

ngx_int_t store_init_zone(ngx_shm_zone_t *shm_zone, void *old_data) {
    auto *zone = static_cast<ZoneConf *>(shm_zone->data);
    auto *old = static_cast<ZoneConf *>(old_data);
    zone->shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    if (old != nullptr || shm_zone->shm.exists) {
        zone->sh = old != nullptr ? old->sh : static_cast<Shared *>(zone->shpool->data);
        ZoneLock lock(zone->shpool);
        // The insert function lives in this module's code, which may move on reload.
        zone->sh->tree.insert = channels_rbtree_insert;
        zone->sh->history = zone->history;
        zone->sh->ttl_ms = zone->ttl;
        return NGX_OK;
    }

    void *mem = ngx_slab_alloc(zone->shpool, sizeof(Shared));
    if (mem == nullptr) return NGX_ERROR;
    auto *sh = new (mem) Shared{};
    ngx_rbtree_init(&sh->tree, &sh->sentinel, channels_rbtree_insert);
    ngx_queue_init(&sh->log);
    ngx_queue_init(&sh->trimmed);
    ngx_queue_init(&sh->channels);
    for (WorkerRecord &rec : sh->workers) {
        ngx_queue_init(&rec.subs);
    }
    sh->history = zone->history;
    sh->ttl_ms = zone->ttl;
    // A Redis zone mirrors the shared log from its start; others start at the clock.
    sh->last_id = zone->redis != nullptr ? MessageId{} : MessageId{now_ms(), 0};
    zone->sh = sh;
    zone->shpool->data = sh;
    zone->fresh = true;

    size_t len = sizeof(" in channel_zone \"\"") + shm_zone->shm.name.len;
    zone->shpool->log_ctx = static_cast<u_char *>(ngx_slab_alloc(zone->shpool, len));
    if (zone->shpool->log_ctx == nullptr) return NGX_ERROR;
    ngx_sprintf(zone->shpool->log_ctx, " in channel_zone \"%V\"%Z", &shm_zone->shm.name);
    zone->shpool->log_nomem = 0;   // eviction handles a full zone; 507 is logged by us
    return NGX_OK;
}

// ---- ids across restarts ----

void store_load_last_id(ZoneConf *zone, const ngx_str_t &path, ngx_log_t *log) {
    ngx_fd_t fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) return;   // first start: the clock alone decides
    char text[channels::kMaxIdText + 1];
    ssize_t n = read(fd, text, sizeof(text) - 1);
    ngx_close_file(fd);
    if (n <= 0) return;
    std::string_view value{text, size_t(n)};
    while (!value.empty() && (value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
    std::optional<MessageId> saved = channels::parse_id(value);
    if (!saved) {
        ngx_log_error(NGX_LOG_WARN, log, 0, "channels: ignoring unreadable \"%s\"", path.data);
        return;
    }
    ZoneLock lock(zone->shpool);
    zone->sh->last_id = std::max(zone->sh->last_id, *saved);
}

void store_save_last_id(ZoneConf *zone, const ngx_str_t &path, ngx_log_t *log) {
    char text[channels::kMaxIdText + 1];
    size_t len;
    {
        ZoneLock lock(zone->shpool);
        len = channels::format_id(zone->sh->last_id, text);
    }
    text[len++] = '\n';
    ngx_fd_t fd = ngx_open_file(path.data, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE, NGX_FILE_DEFAULT_ACCESS);
    if (fd == NGX_INVALID_FILE || write(fd, text, len) != ssize_t(len)) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno, "channels: cannot save the last id to \"%s\"",
                      path.data);
    }
    if (fd != NGX_INVALID_FILE) ngx_close_file(fd);
}

// ---- worker life ----

ngx_int_t store_worker_start(ZoneConf *zone, ngx_uint_t worker_number) {
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    z.purge_dead_records();
    for (uint32_t i = 0; i < kMaxWorkerRecords; i++) {
        WorkerRecord &rec = zone->sh->workers[i];
        if (rec.pid != 0) continue;
        rec.pid = ngx_pid;
        rec.number = uint32_t(worker_number);
        rec.connections = 0;
        rec.wakeups = 0;
        rec.entries_read = 0;
        return ngx_int_t(i);
    }
    return -1;
}

void store_worker_stop(ZoneConf *zone, ngx_int_t record) {
    if (record < 0) return;
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    z.purge_record(uint32_t(record));
    z.release_read();
}

void store_collect(ZoneConf *zone) {
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    z.expire(SIZE_MAX);
    z.purge_dead_records();
    z.release_read();
    Shared *sh = zone->sh;
    // Channels are in order of last activity: stop at the first one still within ttl.
    // Busy channels are touched (sent to the back) so the walk stays short.
    size_t budget = 10000;
    while (budget-- > 0 && !ngx_queue_empty(&sh->channels)) {
        Channel *ch = lru_channel(ngx_queue_head(&sh->channels));
        if (ch->exists && ch->last_active_ms + sh->ttl_ms > z.now()) break;
        if (z.collectable(ch)) {
            z.free_channel(ch);
        } else {
            z.touch(ch);
        }
    }
}

// ---- publish side ----

PublishResult store_publish(ZoneConf *zone, const PublishInput &in) {
    PublishResult res;
    size_t size = offsetof(Entry, bytes) + in.event.size() + in.content_type.size() + in.data.size();
    if (size > size_t(zone->shpool->end - zone->shpool->start) || in.data.size() > UINT32_MAX) {
        res.status = PublishStatus::too_large;
        return res;
    }
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    z.expire(64);
    Channel *ch = z.pin(in.channel);
    if (ch == nullptr) {
        res.status = PublishStatus::no_memory;
        return res;
    }
    Entry *e = z.append(ch, EntryKind::message, in);
    if (e == nullptr) {
        z.unpin(ch);
        res.status = PublishStatus::too_large;
        return res;
    }
    z.trim_history(ch);
    zone->sh->published++;
    res.id = e->id;
    res.subscribers = ch->subscribers;
    res.messages = ch->nmessages;
    res.wake_mask = z.wake_mask(ch);
    z.unpin(ch);
    return res;
}

ChannelInfo store_info(ZoneConf *zone, std::string_view channel) {
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    return z.info(z.find(channel));
}

namespace {

// Removes the channel's messages and, when it has subscribers, leaves a marker in the log
// that tells them. Returns the workers to wake.
uint64_t delete_channel(Locked &z, ZoneConf *zone, Channel *ch, const MessageId *given) {
    uint64_t wake_mask = 0;
    ch->pins++;
    // Out of the channel, but still in the log for workers that have not delivered them:
    // a message published just before the delete reaches subscribers before the marker.
    while (!ngx_queue_empty(&ch->messages)) z.trim_oldest(ch);
    if (ch->subscribers > 0) {
        PublishInput marker{ch->name(), {}, {}, {}};
        if (z.append(ch, EntryKind::deleted, marker, given) == nullptr) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "channels: zone \"%V\" too full to tell subscribers of a deleted channel",
                          &zone->name);
        }
        wake_mask = z.wake_mask(ch);
    }
    if (given != nullptr) z.sh()->last_id = std::max(z.sh()->last_id, *given);
    z.set_exists(ch, false);
    ch->pins--;
    return wake_mask;
}

}  // namespace

ChannelInfo store_delete(ZoneConf *zone, std::string_view channel, uint64_t *wake_mask) {
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    Channel *ch = z.find(channel);
    ChannelInfo info = z.info(ch);
    *wake_mask = info.exists ? delete_channel(z, zone, ch, nullptr) : 0;
    return info;
}

uint64_t store_ingest(ZoneConf *zone, EntryKind kind, MessageId id, const PublishInput &in) {
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    if (id <= zone->sh->last_id) return 0;   // another worker of this host was first
    if (kind == EntryKind::deleted) {
        Channel *ch = z.find(in.channel);
        if (ch == nullptr || !ch->exists) {
            zone->sh->last_id = id;
            return 0;
        }
        return delete_channel(z, zone, ch, &id);
    }
    z.expire(64);
    Channel *ch = z.pin(in.channel);
    Entry *e = ch != nullptr ? z.append(ch, EntryKind::message, in, &id) : nullptr;
    if (e == nullptr) {
        zone->sh->last_id = id;   // cannot be kept here; subscribers will see a gap
        if (ch != nullptr) {
            ch->trimmed_upto = std::max(ch->trimmed_upto, id);
            ch->dropped_upto = std::max(ch->dropped_upto, id);
            z.unpin(ch);
        }
        return 0;
    }
    z.trim_history(ch);
    zone->sh->published++;
    uint64_t mask = z.wake_mask(ch);
    z.unpin(ch);
    return mask;
}

void store_raise_floor(ZoneConf *zone, MessageId floor) {
    ZoneLock lock(zone->shpool);
    Shared *sh = zone->sh;
    if (floor <= sh->gc_floor) return;
    sh->gc_floor = floor;
    for (ngx_queue_t *q = ngx_queue_head(&sh->channels); q != ngx_queue_sentinel(&sh->channels);
         q = ngx_queue_next(q)) {
        Channel *ch = lru_channel(q);
        ch->trimmed_upto = std::max(ch->trimmed_upto, floor);
    }
}

MessageId store_last_id(ZoneConf *zone) {
    ZoneLock lock(zone->shpool);
    return zone->sh->last_id;
}

void store_mark_gap(ZoneConf *zone) {
    ZoneLock lock(zone->shpool);
    Shared *sh = zone->sh;
    sh->gc_floor = sh->last_id;
    for (ngx_queue_t *q = ngx_queue_head(&sh->channels); q != ngx_queue_sentinel(&sh->channels);
         q = ngx_queue_next(q)) {
        // Just past the last id: what was lost came after it, so live subscribers (whose
        // cursor is at most the last id) are told with the next message.
        lru_channel(q)->trimmed_upto = sh->last_id;
        lru_channel(q)->dropped_upto = MessageId{sh->last_id.ms, sh->last_id.seq + 1};
    }
}

// ---- subscriber side ----

SubscribeResult store_subscribe(ZoneConf *zone, ngx_int_t record, const SubscribeQuery &q) {
    SubscribeResult res;
    const channels::ChannelList &list = *q.list;
    Channel *chs[channels::kMaxChannels];
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    z.expire(64);
    size_t pinned = 0;
    for (; pinned < list.count; pinned++) {
        chs[pinned] = z.pin(list.ids[pinned]);
        if (chs[pinned] == nullptr) break;
    }
    if (pinned == list.count) {
        try {
            std::vector<Entry *> entries;
            for (size_t i = 0; i < list.count; i++) {
                if (q.has_cursor) {
                    z.collect_after(chs[i], q.cursor, entries);
                } else if (q.first_message != kFirstNewest) {
                    z.collect_last(chs[i], q.first_message, entries);
                }
            }
            order_entries(entries, q.limit, q.byte_limit, res.replay);
            if (q.has_cursor) find_gaps(z, chs, list.count, q.cursor, res.replay);
            copy_entries(z, entries, res.replay);
            res.replay.position = zone->sh->last_id;
            bool wanted = q.attach && !(q.attach_only_if_empty && !res.replay.items.empty());
            if (wanted && record >= 0) {
                res.attached = claim_subscription(z, chs, list.count, uint32_t(record));
                res.no_memory = !res.attached;
            }
        } catch (...) {
            res.no_memory = true;
            res.attached = false;
        }
    } else {
        res.no_memory = true;
    }
    for (size_t i = 0; i < pinned; i++) {
        res.keys[i] = reinterpret_cast<ChannelKey>(chs[i]);
        z.unpin(chs[i]);
    }
    return res;
}

void store_unsubscribe(ZoneConf *zone, ngx_int_t record, const ChannelKey *keys, size_t n,
                       bool count_connection) {
    if (record < 0) return;
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    for (size_t i = 0; i < n; i++) {
        auto *ch = reinterpret_cast<Channel *>(keys[i]);
        WorkerSub *ws = z.worker_sub(ch, uint32_t(record));
        if (ws == nullptr) continue;   // already released (e.g. the record was purged)
        z.drop_worker_sub(ws, 1);
        z.touch(ch);
    }
    if (count_connection) {
        WorkerRecord &rec = zone->sh->workers[record];
        if (rec.connections > 0) {
            rec.connections--;
            zone->sh->connections--;
        }
    }
    z.release_read();   // this worker may need nothing any more
}

Batch store_read(ZoneConf *zone, const ChannelKey *keys, size_t n, MessageId cursor, size_t limit,
                 size_t byte_limit) {
    Batch batch;
    Channel *chs[channels::kMaxChannels];
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    std::vector<Entry *> entries;
    for (size_t i = 0; i < n; i++) {
        chs[i] = reinterpret_cast<Channel *>(keys[i]);
        z.collect_after(chs[i], cursor, entries);
    }
    order_entries(entries, limit, byte_limit, batch);
    find_gaps(z, chs, n, cursor, batch);
    copy_entries(z, entries, batch);
    batch.position = zone->sh->last_id;
    return batch;
}

Batch store_read_log(ZoneConf *zone, ngx_int_t record, MessageId cursor, ChannelFilter wanted,
                     void *ctx) {
    Batch batch;
    ZoneLock lock(zone->shpool);
    Locked z(zone, now_ms());
    Shared *sh = zone->sh;
    std::vector<Entry *> entries;
    ngx_queue_t *q = ngx_queue_last(&sh->log);
    while (q != ngx_queue_sentinel(&sh->log) && log_entry(q)->id > cursor) q = ngx_queue_prev(q);
    for (q = ngx_queue_next(q); q != ngx_queue_sentinel(&sh->log); q = ngx_queue_next(q)) {
        Entry *e = log_entry(q);
        if (wanted(ctx, reinterpret_cast<ChannelKey>(e->channel))) entries.push_back(e);
    }
    copy_entries(z, entries, batch);
    batch.position = sh->last_id;
    if (record >= 0) sh->workers[record].read_upto = sh->last_id;
    z.release_read();
    return batch;
}

// ---- counters ----

void store_count_delivered(ZoneConf *zone, ngx_int_t record, uint64_t n, uint64_t entries) {
    zone->sh->delivered.fetch_add(n, std::memory_order_relaxed);
    if (record >= 0) {
        zone->sh->workers[record].entries_read.fetch_add(entries, std::memory_order_relaxed);
    }
}

void store_count_wakeup(ZoneConf *zone, ngx_int_t record) {
    if (record >= 0) zone->sh->workers[record].wakeups.fetch_add(1, std::memory_order_relaxed);
}

void store_count_dropped_slow(ZoneConf *zone) {
    zone->sh->dropped_slow.fetch_add(1, std::memory_order_relaxed);
}

ZoneStats store_stats(ZoneConf *zone) {
    ZoneStats st;
    ngx_slab_pool_t *pool = zone->shpool;
    st.workers.reserve(kMaxWorkerRecords);
    ZoneLock lock(pool);
    Shared *sh = zone->sh;
    st.size = zone->shm_zone->shm.size;
    st.used = st.size - std::min(st.size, size_t(pool->pfree) * ngx_pagesize);
    st.channels = sh->nchannels;
    st.messages = sh->nmessages;
    st.subscribers = sh->connections;
    st.published = sh->published;
    st.delivered = sh->delivered.load(std::memory_order_relaxed);
    st.evicted = sh->evicted;
    st.dropped_slow = sh->dropped_slow.load(std::memory_order_relaxed);
    st.last_id = sh->last_id;
    for (const WorkerRecord &rec : sh->workers) {
        if (rec.pid == 0) continue;
        st.workers.push_back({rec.pid, rec.connections, rec.wakeups.load(std::memory_order_relaxed),
                              rec.entries_read.load(std::memory_order_relaxed)});
    }
    return st;
}

ChannelListing store_list(ZoneConf *zone, std::string_view prefix, std::string_view after,
                          size_t limit) {
    ChannelListing out;
    {
        ZoneLock lock(zone->shpool);
        Locked z(zone, now_ms());
        Shared *sh = zone->sh;
        for (ngx_queue_t *q = ngx_queue_head(&sh->channels); q != ngx_queue_sentinel(&sh->channels);
             q = ngx_queue_next(q)) {
            Channel *ch = lru_channel(q);
            std::string_view name = ch->name();
            if (!ch->exists || name.substr(0, prefix.size()) != prefix) continue;
            if (!after.empty() && compare_ids(name, after) <= 0) continue;
            ChannelInfo info = z.info(ch);
            out.rows.push_back({std::string(name), info.messages, info.subscribers, info.newest});
        }
    }
    std::sort(out.rows.begin(), out.rows.end(),
              [](const ChannelListing::Row &a, const ChannelListing::Row &b) {
                  return compare_ids(a.id, b.id) < 0;
              });
    if (out.rows.size() > limit) {
        out.rows.resize(limit);
        out.more = true;
    }
    return out;
}

}  // namespace chn
