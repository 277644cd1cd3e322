// The shared-memory store: publishing, subscribing, reading (see
// ngx_http_channels_store.h; the zone's layout is in ngx_http_channels_zone.h).

#include "ngx_http_channels_zone.h"

namespace chn {

using namespace shm;

namespace {

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

}  // namespace chn
