// The shared-memory store's data path: publish, delete, ingest, subscribe, read
// (see ngx_http_channels_shm.h; the zone's layout is in ngx_http_channels_zone.h).

#include <algorithm>

#include "ngx_http_channels_fault.h"
#include "ngx_http_channels_shm.h"
#include "ngx_http_channels_zone_ops.h"

namespace channels {

using namespace shm;

// ---- Batch ----

bool Batch::reserve(size_t n, size_t nbytes) noexcept {
    try {
        items.reserve(n);
        gaps.reserve(kMaxChannels);
        bytes.reserve(nbytes);
        return true;
    } catch (...) {
        return false;
    }
}

void Batch::clear() noexcept {
    items.clear();
    gaps.clear();
    bytes.clear();
    position = {};
    all_lost = {};
    more = false;
    need_bytes = 0;
}

std::string_view Batch::keep(std::string_view s) {
    size_t at = bytes.size();
    bytes.insert(bytes.end(), s.begin(), s.end());   // within the reserved capacity
    return {bytes.data() + at, s.size()};
}

namespace {

// Room a page of messages needs beyond their data: channel ids of gap notices and items.
constexpr size_t kPageSlack = kMaxChannels * 256;
// How far ahead of a reader its channel's entries are prefetched.
constexpr uint32_t kPrefetchAhead = 8;

void add_gap(Zone &z, Channel *ch, uint16_t index, Batch &out) {
    for (const GapInfo &g : out.gaps) {
        if (g.channel_index == index) return;
    }
    if (out.gaps.size() == out.gaps.capacity() || !out.fits(ch->name().size())) return;
    out.gaps.push_back({index, out.keep(ch->name()), z.oldest_retained(ch), {}});
}

// The next entry a reader may get at pos in ch: expired ones are skipped (lost: a gap),
// and so is a position the ring has moved past (trimmed or evicted unread).
Entry *entry_at(Zone &z, Channel *ch, ReadPosition &pos, uint16_t index, bool report_gaps, Batch &out) {
    if (seq_before(pos.seq, ch->head_seq)) {
        if (report_gaps) add_gap(z, ch, index, out);
        pos.seq = ch->head_seq;
    }
    while (pos.seq != ch->next_seq) {
        Entry *e = ch->slot(pos.seq);
        if (!z.expired(e)) return e;
        if (report_gaps && e->kind == EntryKind::message) add_gap(z, ch, index, out);
        pos.seq++;
    }
    return nullptr;
}

// Merges the channels' entries after their positions into one page in id order: at most
// `limit` entries and `byte_limit` bytes of data (but one message). Work: the page times the
// channel count, whatever the history. A deletion marker newer than `news_after` (the
// reader's cursor, else its attachment) is part of the page, in order, and ends the reader's
// position in that channel. A reader without a cursor (report_gaps false) is not told about
// expired entries it skips.
void merge_page(Zone &z, Channel *const *chs, ReadPosition *pos, size_t n, MessageId news_after,
                size_t limit, size_t byte_limit, bool report_gaps, Batch &out) {
    size_t data_bytes = 0;
    for (;;) {
        int best = -1;
        Entry *best_entry = nullptr;
        for (size_t i = 0; i < n; i++) {
            if (chs[i] == nullptr || !pos[i].active) continue;
            Entry *e = entry_at(z, chs[i], pos[i], uint16_t(i), report_gaps, out);
            if (e != nullptr && (best_entry == nullptr || e->id < best_entry->id)) {
                best = int(i);
                best_entry = e;
            }
        }
        if (best_entry == nullptr) return;   // caught up
        Entry *e = best_entry;
        ReadPosition &p = pos[best];
        if (e->kind == EntryKind::deleted && e->id <= news_after) {
            p.seq++;   // deleted before the reader's cursor or subscription: history, not news
            continue;
        }
        bool full = out.items.size() >= limit ||
                    (!out.items.empty() && data_bytes + e->data_len > byte_limit);
        if (full || !z.copy(e, uint16_t(best), out)) {
            if (out.items.empty() && !full) {
                out.need_bytes = kPageSlack + e->channel->name().size() + e->text_size();
            }
            out.more = true;
            return;
        }
        data_bytes += e->data_len;
        // A replay walks entries the cache has not seen (each its own slab allocation): the
        // one a few places ahead is fetched while this one is copied, so that the copy under
        // the lock does not wait on memory for each entry in turn. (Written here, not as a
        // function: GCC takes a function that only prefetches for one without effects and
        // drops its calls.)
        if (chs[best]->next_seq - p.seq > kPrefetchAhead) {
            const auto *ahead = reinterpret_cast<const char *>(chs[best]->slot(p.seq + kPrefetchAhead));
            __builtin_prefetch(ahead);
            __builtin_prefetch(ahead + 64);
            __builtin_prefetch(ahead + 128);
        }
        p.seq++;
        if (e->kind == EntryKind::deleted) p.active = false;
    }
}

ReadPosition first_position(Zone &z, Channel *ch, LocalChannel *lc, const SubscribeQuery &q) {
    ReadPosition p;
    p.channel = lc;
    p.generation = uint16_t(z.sh()->generation);
    p.positioned = true;
    if (q.has_cursor) {
        p.seq = z.seq_after(ch, q.cursor);
    } else if (q.first.mode == FirstMessage::Mode::oldest) {
        p.seq = ch->head_seq;
    } else if (q.first.mode == FirstMessage::Mode::last) {
        p.seq = z.seq_last(ch, q.first.last);
    } else {
        p.seq = ch->next_seq;
    }
    return p;
}

// Removes the channel's messages and leaves a marker in the log and its ring: it tells the
// subscribers, after any message published before it, and any client that resumes from
// before it later (the marker lives as long as a message would). Returns the wake bits.
uint64_t delete_channel(Zone &z, Channel *ch, const MessageId *given, bool *marker_failed) {
    z.pin(ch);
    z.clear(ch);
    uint64_t wake = ch->wake_bits;
    PublishInput marker{ch->name(), {}, {}, {}};
    bool told = z.append(ch, EntryKind::deleted, marker, given) != nullptr;
    *marker_failed = !told && (ch->subscribers > 0 || wake != 0);
    if (given != nullptr) z.sh()->last_id = std::max(z.sh()->last_id, *given);
    z.set_exists(ch, false);
    z.unpin(ch);
    return wake;
}

// A message of the shared log this zone cannot keep: ids go on past it, and the workers
// holding its channel tell their subscribers (channel-gap). Returns whom to wake for that.
uint64_t lose(Zone &z, std::string_view channel, MessageId id) {
    z.sh()->last_id = std::max(z.sh()->last_id, id);
    Channel *ch = z.find(channel);
    if (ch == nullptr) return 0;
    ch->trimmed_upto = PackedId::of(std::max(ch->trimmed_upto.get(), id));
    z.note_loss_all(ch, id);
    return ch->wake_bits;
}

}  // namespace

void ShmStore::notify(uint64_t wake_bits) {
    if (listener_ != nullptr && wake_bits != 0) listener_->on_appended(wake_bits);
}

// ---- publish side ----

ngx_int_t ShmStore::start(PublishCall *call) {
    if (call->remove) {
        delete_locally(call);
    } else {
        publish_locally(call);
    }
    call->done(call);
    return NGX_OK;
}

void ShmStore::publish_locally(PublishCall *call) {
    const PublishInput &in = call->in;
    size_t size = offsetof(Entry, bytes) + in.event.size() + in.content_type.size() + in.data.size();
    uint64_t wake = 0;
    {
        ZoneLock lock(*this);
        Zone z(*this, lock.sh(), now_ms());
        z.expire(64);
        Channel *ch = nullptr;
        if (in.data.size() <= UINT32_MAX && slab_size(size) <= lock.sh()->message_budget) {
            ch = z.find(in.channel);
            if (ch == nullptr) ch = z.create_for_publish(in.channel);
        }
        Entry *e = nullptr;
        if (ch != nullptr) {
            z.pin(ch);
            e = z.append(ch, EntryKind::message, in);
        }
        if (e == nullptr) {
            if (ch != nullptr) z.unpin(ch);
            call->status = PublishCall::Status::too_large;
            return;
        }
        z.set_exists(ch, true);
        z.trim_history(ch);
        z.keep_headroom(e);
        lock.sh()->published++;
        call->status = PublishCall::Status::ok;
        call->id = e->id;
        call->subscribers = ch->subscribers;
        call->messages = ch->nmessages;
        wake = ch->wake_bits;
        z.unpin(ch);
    }
    notify(wake);
}

void ShmStore::delete_locally(PublishCall *call) {
    uint64_t wake = 0;
    bool marker_failed = false;
    {
        ZoneLock lock(*this);
        Zone z(*this, lock.sh(), now_ms());
        z.expire(64);
        Channel *ch = z.find(call->in.channel);
        call->info = z.info(ch);
        if (!call->info.exists) {
            call->status = PublishCall::Status::not_found;
            return;
        }
        wake = delete_channel(z, ch, nullptr, &marker_failed);
        call->status = PublishCall::Status::ok;
    }
    if (marker_failed) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "channels: zone \"%V\" too full to tell subscribers of a deleted channel", &name_);
    }
    notify(wake);
}

ChannelInfo ShmStore::info(std::string_view channel) {
    ZoneLock lock(*this);
    Zone z(*this, lock.sh(), now_ms());
    z.expire(64);
    return z.info(z.find(channel));
}

uint64_t ShmStore::ingest(EntryKind kind, MessageId id, const PublishInput &in) {
    bool marker_failed = false;
    uint64_t wake = 0;
    {
        ZoneLock lock(*this);
        Shared *sh = lock.sh();
        Zone z(*this, sh, now_ms());
        if (id <= sh->last_id) return 0;   // another worker of this host was first
        if (kind == EntryKind::deleted) {
            Channel *ch = z.find(in.channel);
            if (ch == nullptr || !z.info(ch).exists) {
                sh->last_id = id;
                return 0;
            }
            wake = delete_channel(z, ch, &id, &marker_failed);
        } else {
            z.expire(64);
            Channel *ch = z.find(in.channel);
            if (ch == nullptr) ch = z.create_for_publish(in.channel);
            if (ch != nullptr) z.pin(ch);
            Entry *e = ch != nullptr ? z.append(ch, EntryKind::message, in, &id) : nullptr;
            if (e == nullptr) {
                if (ch != nullptr) z.unpin(ch);
                return lose(z, in.channel, id);   // cannot be kept here: its subscribers are told (gap)
            }
            z.set_exists(ch, true);
            z.trim_history(ch);
            z.keep_headroom(e);
            sh->published++;
            wake = ch->wake_bits;
            z.unpin(ch);
        }
    }
    if (marker_failed) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "channels: zone \"%V\" too full to tell subscribers of a deleted channel", &name_);
    }
    return wake;
}

uint64_t ShmStore::ingest_lost(std::string_view channel, MessageId id) {
    ZoneLock lock(*this);
    Zone z(*this, lock.sh(), now_ms());
    if (id <= lock.sh()->last_id) return 0;   // another worker of this host was first
    return lose(z, channel, id);
}

MessageId ShmStore::last_id() {
    ZoneLock lock(*this);
    return lock.sh()->last_id;
}

void ShmStore::mark_gap() {
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    sh->gap_floor = std::max(sh->gap_floor, sh->last_id);
    sh->gc_floor = std::max(sh->gc_floor, sh->last_id);
    // Just past the last id: what was lost came after it, so live subscribers (whose cursor
    // is at most the last id) are told with their next message.
    sh->dropped_floor = std::max(sh->dropped_floor, MessageId{sh->last_id.ms, sh->last_id.seq + 1});
    Zone z(*this, sh, now_ms());
    z.for_each_record([&](WorkerRecord *r) { r->lost_upto = std::max(r->lost_upto, sh->dropped_floor); });
}

void ShmStore::raise_floor(MessageId floor) {
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    sh->gap_floor = std::max(sh->gap_floor, floor);
    sh->gc_floor = std::max(sh->gc_floor, floor);
}

// ---- subscriber side ----

SubscribeResult ShmStore::subscribe(ZoneSession &s, const SubscribeQuery &q, ReadPosition *pos, Batch &page) {
    SubscribeResult res;
    const ChannelList &list = *q.list;
    size_t n = list.count;
    Channel *chs[kMaxChannels];
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    Zone z(*this, sh, now_ms());
    z.sync(s);
    if (z.record_of(s) == nullptr) {
        res.status = SubscribeStatus::no_memory;
        return res;
    }
    z.expire(64);
    size_t i = 0;
    for (; i < n; i++) {
        LocalChannel *lc = q.locals[i];
        Channel *ch = lc->count > 0 && lc->key != 0 ? reinterpret_cast<Channel *>(lc->key) : z.find(list.ids[i]);
        if (q.existing_only && (ch == nullptr || !ch->has(kExists))) {
            res.status = SubscribeStatus::not_found;
            break;
        }
        if (ch == nullptr) {
            Zone::Refusal why = Zone::Refusal::none;
            ch = z.create_for_subscriber(list.ids[i], &why);
            if (ch == nullptr) {
                res.status = why == Zone::Refusal::over_cap ? SubscribeStatus::over_cap : SubscribeStatus::no_memory;
                break;
            }
        }
        z.pin(ch);
        chs[i] = ch;
    }
    if (i < n) {
        res.failed_index = i;
        while (i > 0) z.unpin(chs[--i]);   // channels created for it go again
        return res;
    }
    fault::kill_point();   // tests: a worker dying with channels created, not yet attached
    MessageId at = sh->last_id;
    for (i = 0; i < n; i++) {
        pos[i] = first_position(z, chs[i], q.locals[i], q);
        if (q.has_cursor && z.trimmed_upto(chs[i]) > q.cursor) add_gap(z, chs[i], uint16_t(i), page);
    }
    merge_page(z, chs, pos, n, q.has_cursor ? std::min(q.cursor, at) : at, q.limit, q.byte_limit, q.has_cursor,
               page);
    page.position = at;
    bool answer_now = !page.items.empty() || page.need_bytes > 0;
    if (q.attach && !(q.attach_only_if_empty && answer_now)) {
        for (i = 0; i < n; i++) z.attach(s, chs[i], q.locals[i]);
        z.record_of(s)->connections++;
        sh->connections++;
        s.connections++;
        res.attached = true;
    }
    for (i = 0; i < n; i++) z.unpin(chs[i]);
    res.attached_at = at;
    return res;
}

void ShmStore::unsubscribe(ZoneSession &s, LocalChannel *const *lcs, size_t n, bool count_connection) {
    ZoneLock lock(*this);
    Zone z(*this, lock.sh(), now_ms());
    z.sync(s);
    for (size_t i = 0; i < n; i++) {
        if (lcs[i]->key != 0) z.detach(s, reinterpret_cast<Channel *>(lcs[i]->key), lcs[i]);
    }
    WorkerRecord *rec = z.record_of(s);
    if (count_connection && rec != nullptr && rec->connections > 0) {
        rec->connections--;
        lock.sh()->connections--;
        s.connections--;
    }
    z.release_read();   // this worker may need nothing any more
}

void ShmStore::read_page(ZoneSession &s, ReadPosition *pos, size_t n, MessageId cursor, MessageId news_after,
                         size_t limit, size_t byte_limit, Batch &out) {
    Channel *chs[kMaxChannels];
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    Zone z(*this, sh, now_ms());
    z.sync(s);
    z.expire(64);
    for (size_t i = 0; i < n; i++) {
        chs[i] = nullptr;
        if (!pos[i].active) continue;
        auto *ch = reinterpret_cast<Channel *>(pos[i].channel->key);
        if (ch == nullptr) continue;   // lost in a rebuild that could not restore it
        if (pos[i].generation != uint16_t(sh->generation)) {
            // The zone was rebuilt: find the place again by id; what was lost is a gap.
            pos[i].seq = z.seq_after(ch, cursor);
            pos[i].generation = uint16_t(sh->generation);
            if (z.trimmed_upto(ch) > cursor) add_gap(z, ch, uint16_t(i), out);
        }
        chs[i] = ch;
    }
    merge_page(z, chs, pos, n, news_after, limit, byte_limit, true, out);
    out.position = sh->last_id;
}

void ShmStore::read_log(ZoneSession &s, Batch &out, bool woken) {
    ZoneLock lock(*this);
    Shared *sh = lock.sh();
    Zone z(*this, sh, now_ms());
    z.sync(s);
    WorkerRecord *rec = z.record_of(s);
    if (rec != nullptr && woken) rec->wakeups.fetch_add(1, std::memory_order_relaxed);
    if (rec == nullptr || !rec->active) {
        if (rec != nullptr) rec->read_upto = sh->last_id;
        out.position = sh->last_id;
        return;
    }
    Entry *e = rec->bookmark;   // nullptr: it has read everything (Zone::append sets it)
    z.take_losses(rec, out);   // before the entries that come after them
    uint64_t bit = uint64_t(1) << rec->bit;
    size_t examined = 0;
    while (e != nullptr && examined < kLogPageEntries) {
        if ((e->channel->wake_bits & bit) && !z.copy(e, 0, out)) {
            if (out.items.empty()) out.need_bytes = kPageSlack + e->channel->name().size() + e->text_size();
            break;
        }
        rec->read_upto = e->id;
        examined++;
        ngx_queue_t *next = ngx_queue_next(&e->in_log);
        e = next == ngx_queue_sentinel(&sh->log) ? nullptr : ngx_queue_data(next, Entry, in_log);
    }
    out.more = e != nullptr;
    z.move_bookmark(rec, e);
    if (e == nullptr) rec->read_upto = sh->last_id;
    out.position = rec->read_upto;
    rec->entries_read.fetch_add(out.items.size(), std::memory_order_relaxed);
    z.release_read();
}

size_t ShmStore::wake_targets(uint64_t bits, WakeTarget *targets, size_t max) {
    size_t n = 0;
    ZoneLock lock(*this);
    Zone z(*this, lock.sh(), 0);
    z.for_each_record([&](WorkerRecord *r) {
        if (n < max && r->pid != ngx_pid && (bits >> r->bit & 1)) targets[n++] = {r->pid, r->wake_nonce};
    });
    return n;
}

// ---- counters ----

// Lock-free counters of the root (which a rebuild keeps at its address).
void ShmStore::count_delivered(uint64_t n) {
    static_cast<Shared *>(pool_->data)->delivered.fetch_add(n, std::memory_order_relaxed);
}

void ShmStore::count_dropped_slow() {
    static_cast<Shared *>(pool_->data)->dropped_slow.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace channels
