// The zone's life: set-up and reload, ids across restarts, worker records, collection,
// statistics and listings (see ngx_http_channels_store.h).

#include "ngx_http_channels_zone.h"

namespace chn {
namespace shm {

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

}  // namespace shm

using namespace shm;

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