// The shared-memory store's zone life: set-up and reload, the rebuild after a torn update,
// ids across restarts, worker records, collection, statistics, listings and the
// consistency check (see ngx_http_channels_shm.h).

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <new>

#include "ngx_http_channels_shm.h"
#include "ngx_http_channels_zone_ops.h"

extern "C" {
extern ngx_module_t ngx_http_channels_module;
}

namespace channels {

using namespace shm;

uint64_t process_start_time(ngx_pid_t pid) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", int(pid));
    FILE *f = fopen(path, "re");
    if (f == nullptr) return 0;
    char text[1024];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    // Field 22 (starttime); the command name (field 2) may hold spaces and parentheses.
    const char *p = strrchr(text, ')');
    if (p == nullptr) return 0;
    int field = 2;
    while (*p != '\0' && field < 22) {
        if (*p++ == ' ') field++;
    }
    return strtoull(p, nullptr, 10);
}

namespace {

constexpr uint64_t kMarkAhead = 2000;    // ms: ids promised taken by the id file, ahead of the last
constexpr size_t kMaxRecordsSeen = 1024;
constexpr size_t kListChunk = 1024;      // channels examined per lock hold by a listing

// The last id of a zone of the same name in the cycle being replaced (a size change on
// reload creates a new zone): ids go on from there.
MessageId previous_zone_last_id(ngx_shm_zone_t *shm_zone) {
    MessageId last;
    auto *cycle = const_cast<ngx_cycle_t *>(ngx_cycle);
    if (cycle == nullptr || cycle->shared_memory.part.elts == nullptr) return last;
    for (ngx_list_part_t *part = &cycle->shared_memory.part; part != nullptr; part = part->next) {
        auto *zones = static_cast<ngx_shm_zone_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            ngx_shm_zone_t *old = &zones[i];
            if (old->tag != &ngx_http_channels_module || old->shm.addr == nullptr ||
                old->shm.addr == shm_zone->shm.addr || old->shm.name.len != shm_zone->shm.name.len ||
                ngx_strncmp(old->shm.name.data, shm_zone->shm.name.data, old->shm.name.len) != 0) {
                continue;
            }
            auto *pool = reinterpret_cast<ngx_slab_pool_t *>(old->shm.addr);
            auto *sh = static_cast<Shared *>(pool->data);
            if (sh == nullptr || sh->layout != kLayoutVersion) continue;
            ngx_shmtx_lock(&pool->mutex);
            last = std::max(last, sh->last_id);
            ngx_shmtx_unlock(&pool->mutex);
        }
    }
    return last;
}

ssize_t write_id(ngx_fd_t fd, MessageId id) {
    char text[kMaxIdText + 16];
    size_t len = format_id(id, text);
    while (len < kMaxIdText) text[len++] = ' ';   // fixed width: a rewrite covers the old text
    text[len++] = '\n';
    return pwrite(fd, text, len, 0);
}

}  // namespace

ShmStore::ShmStore(ngx_shm_zone_t *shm_zone, ngx_str_t name, uint64_t history, uint64_t ttl_ms)
    : shm_zone_(shm_zone), name_(name), history_(history), ttl_ms_(ttl_ms) {}

// ---- zone set-up ----

ngx_int_t ShmStore::create_root(uint64_t first_ms) {
    void *mem = ngx_slab_alloc_locked(pool_, sizeof(Shared));
    if (mem == nullptr) return NGX_ERROR;
    auto *sh = new (mem) Shared{};
    sh->layout = kLayoutVersion;
    ngx_rbtree_init(&sh->tree, &sh->sentinel, nullptr);
    ngx_queue_init(&sh->log);
    ngx_queue_init(&sh->trimmed);
    ngx_queue_init(&sh->records);
    sh->history = history_;
    sh->ttl_ms = ttl_ms_;
    uint64_t usable = uint64_t(pool_->end - pool_->start);
    sh->idle_cap = usable / 8;
    sh->message_budget = usable - sh->idle_cap;
    sh->last_id = MessageId{first_ms, 0};
    pool_->data = sh;

    size_t len = sizeof(" in channel_zone \"\"") + name_.len;
    pool_->log_ctx = static_cast<u_char *>(ngx_slab_alloc_locked(pool_, len));
    if (pool_->log_ctx == nullptr) return NGX_ERROR;
    // The root and the log context come out of the messages' share, not the idle channels'.
    sh->message_budget -= std::min(sh->message_budget, uint64_t(slab_size(sizeof(Shared)) + slab_size(len)));
    ngx_sprintf(pool_->log_ctx, " in channel_zone \"%V\"%Z", &name_);
    pool_->log_nomem = 0;   // eviction handles a full zone; what fails is logged by us
    return NGX_OK;
}

ngx_int_t ShmStore::init(bool existing) noexcept {
    pool_ = reinterpret_cast<ngx_slab_pool_t *>(shm_zone_->shm.addr);
    if (existing) {
        auto *sh = static_cast<Shared *>(pool_->data);
        if (sh == nullptr || sh->layout != kLayoutVersion) {
            ngx_log_error(NGX_LOG_EMERG, ngx_cycle->log, 0,
                          "channel_zone \"%V\" was laid out by another version of the module: restart nginx", &name_);
            return NGX_ERROR;
        }
        ngx_shmtx_lock(&pool_->mutex);
        sh->history = history_;
        sh->ttl_ms = ttl_ms_;
        ngx_shmtx_unlock(&pool_->mutex);
        return NGX_OK;
    }
    // A Redis zone mirrors the shared log from its start; others go on from the clock and
    // from any previous zone of this name (the id file is read later, in init_module).
    uint64_t first = 0;
    MessageId previous;
    if (!redis_ids) {
        previous = previous_zone_last_id(shm_zone_);
        first = std::max(now_ms(), previous.ms + 1);
        seed_from_file_ = previous == MessageId{};   // a new zone of a reload goes on from the old one
    }
    if (create_root(first) != NGX_OK) return NGX_ERROR;
    if (previous != MessageId{}) {
        // The old zone's messages are not carried over: cursors from it get channel-gap.
        auto *sh = static_cast<Shared *>(pool_->data);
        sh->gap_floor = sh->gc_floor = sh->last_id;
    }
    return NGX_OK;
}

// A worker died holding the lock in the middle of an update: queues, the tree or the slab
// allocator's own lists may be half-changed. Nothing of it can be trusted, so the zone is
// rebuilt empty, keeping what needs no structure (ids and counters). Workers find a new
// generation and put their subscriptions back; everyone gets channel-gap for what was lost.
Shared *ShmStore::rebuild_locked(Shared *torn) {
    MessageId last = torn->last_id;
    uint32_t generation = torn->generation, epoch = torn->count_epoch, version = torn->records_version;
    uint64_t published = torn->published, evicted = torn->evicted, rebuilds = torn->rebuilds;
    uint64_t persisted = torn->persisted_ms;
    uint64_t delivered = torn->delivered.load(), dropped = torn->dropped_slow.load();
    ngx_pid_t updater = torn->updater;
    ngx_slab_init(pool_);
    if (create_root(std::max(last.ms, now_ms())) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0, "channels: cannot rebuild zone \"%V\"", &name_);
    }
    auto *sh = static_cast<Shared *>(pool_->data);
    sh->last_id = std::max(sh->last_id, last);
    sh->generation = generation + 1;
    sh->count_epoch = epoch + 1;
    sh->records_version = version + 1;
    sh->gap_floor = sh->gc_floor = sh->last_id;
    sh->dropped_floor = MessageId{sh->last_id.ms, sh->last_id.seq + 1};
    sh->persisted_ms = persisted;
    sh->published = published;
    sh->evicted = evicted;
    sh->rebuilds = rebuilds + 1;
    sh->delivered = delivered;
    sh->dropped_slow = dropped;
    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "channels: zone \"%V\" was left half-updated by process %P, which died; rebuilt it "
                  "(retained messages dropped, resuming clients get channel-gap)",
                  &name_, updater);
    return sh;
}

// ---- ids across restarts ----

ngx_int_t ShmStore::open_id_file(ngx_cycle_t *cycle) {
    if (redis_ids) return NGX_OK;   // Redis zones take Redis' ids
    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(ngx_get_conf(cycle->conf_ctx, ngx_core_module));
    size_t dir = ccf->pid.len;
    while (dir > 0 && ccf->pid.data[dir - 1] != '/') dir--;
    size_t len = dir + sizeof("channels-.id") - 1 + name_.len;
    auto *path = static_cast<u_char *>(ngx_pnalloc(cycle->pool, len + 1));
    if (path == nullptr) return NGX_ERROR;
    ngx_sprintf(path, "%*schannels-%V.id%Z", dir, ccf->pid.data, &name_);
    // Opened by the master (workers may not create files there) and inherited by the
    // workers, which keep it ahead of the ids they hand out.
    ngx_fd_t fd = ngx_open_file(path, NGX_FILE_RDWR, NGX_FILE_CREATE_OR_OPEN, NGX_FILE_DEFAULT_ACCESS);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, ngx_errno, "channels: cannot open \"%s\"", path);
        return NGX_OK;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == nullptr) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }
    cln->handler = [](void *data) noexcept { ngx_close_file(static_cast<ngx_fd_t>(reinterpret_cast<intptr_t>(data))); };
    cln->data = reinterpret_cast<void *>(intptr_t(fd));
    id_fd_ = fd;
    char text[kMaxIdText + 16];
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
    std::string_view value{text, n > 0 ? size_t(n) : 0};
    while (!value.empty() && (value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
    std::optional<MessageId> saved = parse_id(value);
    if (!saved && !value.empty()) ngx_log_error(NGX_LOG_WARN, cycle->log, 0, "channels: ignoring unreadable \"%s\"", path);
    if (saved && seed_from_file_) {   // a fresh start: ids go on above the last run's
        seed_from_file_ = false;
        ZoneLock lock(*this);
        Shared *sh = lock.sh();
        if (sh->last_id < *saved) sh->last_id = *saved;
        // The last run's messages are gone: cursors from it get channel-gap.
        sh->gap_floor = sh->gc_floor = sh->last_id;
    }
    persist_mark();   // from the first publish on, the file is ahead of every id
    return NGX_OK;
}

void ShmStore::save_id_file() {
    if (id_fd_ == NGX_INVALID_FILE) return;
    MessageId last;
    {
        ZoneLock lock(*this);
        last = lock.sh()->last_id;
        last = std::max(last, MessageId{lock.sh()->persisted_ms, 0});
    }
    if (write_id(id_fd_, last) < 0) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, ngx_errno, "channels: cannot save the last id of zone \"%V\"",
                      &name_);
    }
}

// Keeps the id file ahead of every id handed out (a worker's housekeeping): after a crash
// of the whole server, or with the clock set back, ids still go on above every id a client
// may hold.
void ShmStore::persist_mark() {
    if (id_fd_ == NGX_INVALID_FILE) return;
    uint64_t mark;
    {
        ZoneLock lock(*this);
        Shared *sh = lock.sh();
        if (sh->last_id.ms + kMarkAhead / 2 < sh->persisted_ms) return;
        mark = std::max(sh->last_id.ms, now_ms()) + kMarkAhead;
    }
    // Written, not synced: what a crashed nginx wrote is in the page cache for the next one.
    if (write_id(id_fd_, MessageId{mark, 0}) < 0) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, ngx_errno, "channels: cannot save the ids of zone \"%V\"", &name_);
        return;
    }
    ZoneLock lock(*this);
    lock.sh()->persisted_ms = std::max(lock.sh()->persisted_ms, mark);
}

// ---- worker life ----

ngx_int_t ShmStore::start_worker(ngx_cycle_t *cycle, ZoneSession *s, StoreListener *listener) {
    listener_ = listener;
    start_time_ = process_start_time(ngx_pid);
    s->log = cycle->log;
    {
        ZoneLock lock(*this);
        Zone z(*this, lock.sh(), now_ms());
        z.sync(*s);
    }
    if (s->record == nullptr) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "channels: zone \"%V\" has no room for a worker record",
                      &name_);
    }
    drop_dead_records(s);   // e.g. a crashed worker this one replaces, whatever its pid
    return NGX_OK;
}

void ShmStore::stop_worker(ZoneSession *s) {
    ZoneLock lock(*this);
    Zone z(*this, lock.sh(), now_ms());
    z.sync(*s);
    s->for_each([&](LocalChannel *lc) {
        while (lc->count > 0 && lc->key != 0) z.detach(*s, reinterpret_cast<Channel *>(lc->key), lc);
    });
    if (s->record != nullptr) z.drop_record(z.record_of(*s));
    s->record = nullptr;
    z.release_read();
}

// Records of workers that are gone (crashed: a clean exit drops its own). Liveness is
// checked outside the lock: a process that exists with the recorded start time.
void ShmStore::drop_dead_records(const ZoneSession *self) {
    struct Seen {
        ngx_pid_t pid;
        uint64_t start_time;
    } seen[kMaxRecordsSeen];
    size_t n = 0;
    {
        ZoneLock lock(*this);
        Zone z(*this, lock.sh(), now_ms());
        z.for_each_record([&](WorkerRecord *r) {
            // Another record with this process's pid belongs to a dead process whose pid
            // was handed out again: it is checked like any other.
            if (n < kMaxRecordsSeen && r != self->record) seen[n++] = {r->pid, r->start_time};
        });
    }
    size_t dead = 0;
    for (size_t i = 0; i < n; i++) {
        bool exists = seen[i].pid != ngx_pid && (kill(seen[i].pid, 0) == 0 || errno == EPERM);
        uint64_t started = exists ? process_start_time(seen[i].pid) : 0;
        if (exists && (seen[i].start_time == 0 || started == 0 || started == seen[i].start_time)) continue;
        seen[dead++] = seen[i];
    }
    if (dead == 0) return;
    uint64_t wake = 0;
    {
        ZoneLock lock(*this);
        Zone z(*this, lock.sh(), now_ms());
        bool reset = false;
        z.for_each_record([&](WorkerRecord *r) {
            for (size_t i = 0; i < dead; i++) {
                if (r == self->record || r->pid != seen[i].pid || r->start_time != seen[i].start_time) continue;
                ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                              "channels: zone \"%V\": releasing subscribers of exited worker %P", &name_, r->pid);
                reset |= r->active || r->connections > 0;
                z.drop_record(r);
                break;
            }
        });
        if (reset) {
            z.reset_counts();
            wake = z.record_bits();   // each live worker puts its counts back when it wakes
        }
        z.release_read();
    }
    notify(wake);
}

bool ShmStore::collect(ZoneSession *session) {
    drop_dead_records(session);
    persist_mark();
    return sweep();
}

// One lock hold of bounded work (about half a millisecond): a large expiry or release takes
// many rounds, and the worker serves its other events between them.
bool ShmStore::sweep() {
    constexpr size_t kChunk = 1024;
    ZoneLock lock(*this);
    Zone z(*this, lock.sh(), now_ms());
    size_t expired = z.expire(kChunk);
    size_t released = z.release_read(kReleaseBudget);
    return expired == kChunk || released == kReleaseBudget;
}

// ---- statistics, listings, checks ----

ZoneStats ShmStore::stats() {
    ZoneStats st;
    st.workers.reserve(kMaxRecordsSeen);
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    st.size = shm_zone_->shm.size;
    st.used = st.size - std::min(st.size, size_t(pool_->pfree) * ngx_pagesize);
    st.channels = sh->nchannels - sh->ndeleted;
    st.messages = sh->nmessages;
    st.subscribers = sh->connections;
    st.published = sh->published;
    st.delivered = sh->delivered.load(std::memory_order_relaxed);
    st.evicted = sh->evicted;
    st.dropped_slow = sh->dropped_slow.load(std::memory_order_relaxed);
    st.idle_bytes = sh->idle_bytes;
    st.idle_cap = sh->idle_cap;
    st.rebuilds = sh->rebuilds;
    st.last_id = sh->last_id;
    for (ngx_queue_t *q = ngx_queue_head(&sh->records); q != ngx_queue_sentinel(&sh->records); q = ngx_queue_next(q)) {
        const WorkerRecord *r = ngx_queue_data(q, WorkerRecord, in_zone);
        if (st.workers.size() == st.workers.capacity()) break;
        st.workers.push_back({r->pid, r->connections, r->wakeups.load(std::memory_order_relaxed),
                              r->entries_read.load(std::memory_order_relaxed)});
    }
    return st;
}

namespace {

// The first channel whose id is greater than `after` (or not less, when inclusive).
Channel *lower_bound(Shared *sh, std::string_view after, bool inclusive) {
    ngx_rbtree_key_t key = id_key(after);
    ngx_rbtree_node_t *node = sh->tree.root, *sentinel = sh->tree.sentinel, *best = nullptr;
    while (node != sentinel) {
        int rc = node->key != key ? (node->key > key ? 1 : -1)
                                  : compare_ids(reinterpret_cast<Channel *>(node)->name(), after);
        if (rc > 0 || (rc == 0 && inclusive)) {
            best = node;
            node = node->left;
        } else {
            node = node->right;
        }
    }
    return reinterpret_cast<Channel *>(best);
}

}  // namespace

// The tree is in id order: a page starts at the first id after `after` (or at the prefix)
// and walks at most kListChunk channels per lock hold, nothing allocated under it.
ChannelListing ShmStore::list(std::string_view prefix, std::string_view after, size_t limit) {
    struct Candidate {
        size_t at, len;
        uint32_t messages, subscribers;
        MessageId newest;
    };
    ChannelListing out;
    std::vector<Candidate> found;
    std::vector<char> names;
    found.reserve(limit + 1);
    names.reserve((limit + 1) * 256);
    char from[256];
    size_t from_len = 0;
    bool inclusive = compare_ids(prefix, after) > 0;
    std::string_view start = inclusive ? prefix : after;
    from_len = std::min(start.size(), sizeof(from));
    if (from_len > 0) ngx_memcpy(from, start.data(), from_len);
    for (bool done = false; !done;) {
        ZoneLock lock(*this);
        Zone z(*this, lock.sh(), now_ms());
        Channel *ch = lower_bound(lock.sh(), {from, from_len}, inclusive);
        for (size_t n = 0; n < kListChunk; n++) {
            if (ch == nullptr || ch->name().substr(0, prefix.size()) != prefix || found.size() > limit) {
                done = true;
                break;
            }
            ChannelInfo info = z.info(ch);
            std::string_view id = ch->name();
            if (info.exists) {
                found.push_back({names.size(), id.size(), info.messages, info.subscribers, info.newest});
                names.insert(names.end(), id.begin(), id.end());
            }
            from_len = id.size();
            ngx_memcpy(from, id.data(), id.size());
            inclusive = false;
            ch = reinterpret_cast<Channel *>(ngx_rbtree_next(&lock.sh()->tree, &ch->node));
        }
    }
    out.more = found.size() > limit;
    if (out.more) found.pop_back();
    for (const Candidate &c : found) {
        out.rows.push_back({std::string(names.data() + c.at, c.len), c.messages, c.subscribers, c.newest});
    }
    return out;
}

// Walks everything under the lock and reports what does not add up. For tests and
// administrators (it holds the lock for a walk of the whole zone).
ZoneCheck ShmStore::check() {
    ZoneCheck out;
    auto problem = [&out](const char *what, std::string_view where = {}) {
        if (out.problems.size() < 64) out.problems.push_back(std::string(what) + (where.empty() ? "" : ": ") + std::string(where));
    };
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    Zone z(*this, sh, now_ms());
    uint64_t channels = 0, messages = 0, idle = 0;
    MessageId prev;
    size_t in_log = 0;
    for (ngx_queue_t *q = ngx_queue_head(&sh->log); q != ngx_queue_sentinel(&sh->log); q = ngx_queue_next(q)) {
        Entry *e = ngx_queue_data(q, Entry, in_log);
        if (in_log++ > 0 && !(prev < e->id)) problem("log not in id order");
        prev = e->id;
        if (e->id > sh->last_id) problem("log entry newer than the last id");
        if (z.find(e->channel->name()) != e->channel) problem("log entry of a channel not in the tree");
    }
    size_t deleted = 0;
    z.for_each_channel([&](Channel *ch) {
        channels++;
        if (ch->has(kDeleted)) deleted++;
        if (ch->has(kDeleted) && ch->has(kExists)) problem("channel both deleted and published", ch->name());
        uint32_t nmsg = 0;
        MessageId last;
        for (uint32_t seq = ch->head_seq; seq != ch->next_seq; seq++) {
            Entry *e = ch->slot(seq);
            if (e->channel != ch || e->seq != seq || e->state != EntryState::retained) {
                problem("ring entry out of place", ch->name());
                return;
            }
            if (seq != ch->head_seq && !(last < e->id)) problem("ring not in id order", ch->name());
            last = e->id;
            if (e->kind == EntryKind::message) nmsg++;
        }
        if (nmsg != ch->nmessages) problem("channel message count wrong", ch->name());
        if ((ch->ring_len() > 0) != (ch->ring != nullptr)) problem("channel ring allocation wrong", ch->name());
        if (ch->has(kIdle) != (ch->ring_len() == 0)) problem("channel idle flag wrong", ch->name());
        if (ch->has(kIdle)) idle += slab_size(offsetof(Channel, id) + ch->name().size());
        messages += nmsg;
    });
    size_t trimmed = 0;
    for (ngx_queue_t *q = ngx_queue_head(&sh->trimmed); q != ngx_queue_sentinel(&sh->trimmed); q = ngx_queue_next(q)) {
        if ((ngx_queue_data(q, Entry, in_trimmed))->state != EntryState::trimmed) problem("trimmed list holds a retained entry");
        if (++trimmed > in_log) {
            problem("trimmed list longer than the log");
            break;
        }
    }
    if (channels != sh->nchannels) problem("channel count wrong");
    if (deleted != sh->ndeleted) problem("deleted channel count wrong");
    if (messages != sh->nmessages) problem("message count wrong");
    if (idle != sh->idle_bytes) problem("idle bytes wrong");
    z.for_each_record([&](WorkerRecord *r) {
        if (r->bookmark != nullptr && r->bookmark->id <= r->read_upto) problem("record bookmark behind its position");
    });
    return out;
}

}  // namespace channels
