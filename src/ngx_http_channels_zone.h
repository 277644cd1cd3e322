// The zone's layout in shared memory and the operations that run with it locked.
// Internal to the store (ngx_http_channels_store.cpp, ngx_http_channels_store_zone.cpp):
// everything else goes through ngx_http_channels_store.h.
#pragma once

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <new>
#include <vector>

#include "ngx_http_channels_store.h"

namespace chn {
namespace shm {

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

}  // namespace shm

// The zone's root, at shpool->data.
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
    shm::WorkerRecord workers[kMaxWorkerRecords];
};

static_assert(std::is_standard_layout_v<Shared>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<shm::Entry>, "shared memory holds standard-layout data only");
static_assert(std::is_standard_layout_v<shm::Channel>, "shared memory holds standard-layout data only");

namespace shm {

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

inline Entry *log_entry(ngx_queue_t *q) { return container(q, &Entry::in_log); }
inline Entry *channel_entry(ngx_queue_t *q) { return container(q, &Entry::in_channel); }
inline Channel *lru_channel(ngx_queue_t *q) { return container(q, &Channel::lru); }
inline WorkerSub *channel_worker(ngx_queue_t *q) { return container(q, &WorkerSub::in_channel); }
inline WorkerSub *record_sub(ngx_queue_t *q) { return container(q, &WorkerSub::in_record); }

inline uint32_t hash_id(std::string_view id) {
    return ngx_crc32_short(reinterpret_cast<u_char *>(const_cast<char *>(id.data())), id.size());
}

inline int compare_ids(std::string_view a, std::string_view b) {
    int rc = std::memcmp(a.data(), b.data(), std::min(a.size(), b.size()));
    if (rc != 0) return rc;
    return a.size() < b.size() ? -1 : (a.size() > b.size() ? 1 : 0);
}

// Orders channels in the rbtree (crc32 key, then bytes); defined in store_zone.cpp.
extern "C" void channels_rbtree_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
                                       ngx_rbtree_node_t *sentinel);

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

}  // namespace shm
}  // namespace chn
