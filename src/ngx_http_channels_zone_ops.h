// Operations on the zone that run with it locked. Internal to the shared-memory store.
//
// ZoneLock takes shpool->mutex and marks the zone as being updated; releasing clears the
// mark. A lock that finds the mark still set was inherited from a worker that died in the
// middle of an update (nginx's master force-unlocks the mutex of a dead process): the zone
// is then rebuilt empty before anything else reads it (ngx_http_channels_shm_zone.cpp).
#pragma once

#include "ngx_http_channels_session.h"
#include "ngx_http_channels_zone.h"

namespace channels {

class ShmStore;

namespace shm {

class ZoneLock {
public:
    explicit ZoneLock(ShmStore &store);
    ~ZoneLock();
    ZoneLock(const ZoneLock &) = delete;
    ZoneLock &operator=(const ZoneLock &) = delete;

    Shared *sh() const { return sh_; }

private:
    ShmStore &store_;
    ngx_slab_pool_t *pool_;
    Shared *sh_;
    bool rebuilt_ = false;
};

// Entries freed for lagging workers in one release (about 50 us of lock time).
inline constexpr size_t kReleaseBudget = 512;
// Evictions one publish may make to keep pages free for idle channels.
inline constexpr int kHeadroomEvictions = 16;

// Slab bytes an allocation of `size` really takes (power-of-two slots up to half a page,
// whole pages above): what the idle cap counts.
size_t slab_size(size_t size);

// Ids compare as byte strings, shorter first on a common prefix.
int compare_ids(std::string_view a, std::string_view b);
// The tree key of an id: its first bytes, big-endian (ids hold no NUL, so a shorter id's
// zero padding sorts first). Keys order as ids do: the tree is in id order, and listings
// page through it.
ngx_rbtree_key_t id_key(std::string_view id);

// seq a comes before seq b (sequence numbers wrap around).
inline bool seq_before(uint32_t a, uint32_t b) { return int32_t(a - b) < 0; }

class Zone {
public:
    Zone(ShmStore &store, Shared *sh, uint64_t now);

    Shared *sh() const { return sh_; }
    uint64_t now() const { return now_; }

    // ---- channels ----
    Channel *find(std::string_view id) const;
    // A channel for a publish: may evict messages to make room.
    Channel *create_for_publish(std::string_view id);
    // A channel for a subscriber: never evicts, and refused past the idle cap.
    enum class Refusal { none, over_cap, no_memory };
    Channel *create_for_subscriber(std::string_view id, Refusal *why);
    // Frees the channel when nothing holds it any more (no message, subscriber, log entry).
    void free_if_unused(Channel *ch);
    // Published (or deleted: the channel stays as long as its marker, kDeleted).
    void set_exists(Channel *ch, bool exists);
    void pin(Channel *ch) { ch->flags |= kPinned; }
    void unpin(Channel *ch);
    // Newest message id removed from the channel, or from any channel (a zone-wide loss).
    MessageId trimmed_upto(const Channel *ch) const;
    ChannelInfo info(Channel *ch) const;

    // ---- entries ----
    // Appends a message or marker with the zone's next id, or with a given one newer than
    // the zone's last (Redis). nullptr: it cannot fit even in an empty zone.
    Entry *append(Channel *ch, EntryKind kind, const PublishInput &in, const MessageId *given = nullptr);
    void trim_history(Channel *ch);
    // Takes every retained entry out of the channel (DELETE).
    void clear(Channel *ch);
    // Removes expired entries from the head of the log, at most `budget` of them.
    size_t expire(size_t budget);
    // After a publish: evicts (entries older than the new one) until the room idle channels
    // may still claim is free.
    void keep_headroom(const Entry *newest);
    // Frees trimmed entries every worker that needed them has read, at most `budget` (one
    // lock hold stays short; the collector takes the rest). Returns how many.
    size_t release_read(size_t budget = kReleaseBudget);
    bool expired(const Entry *e) const { return e->id.ms + sh_->ttl_ms <= now_; }

    // ---- reading ----
    // The first ring position with an id after `cursor` (binary search).
    uint32_t seq_after(Channel *ch, MessageId cursor) const;
    // The ring position N messages before the end.
    uint32_t seq_last(Channel *ch, uint32_t n) const;
    MessageId oldest_retained(Channel *ch) const;
    // Copies an entry into a batch if it fits; false if not.
    bool copy(const Entry *e, uint16_t channel_index, Batch &out) const;

    // ---- workers ----
    WorkerRecord *claim_record(ngx_pid_t pid, uint64_t start_time, uint32_t wake_nonce);
    // Brings the session in step with the zone (after a rebuild or a worker's death).
    void sync(ZoneSession &s);
    WorkerRecord *record_of(ZoneSession &s) const { return static_cast<WorkerRecord *>(s.record); }
    // One more local subscriber of ch in this worker (lc: its registry entry).
    void attach(ZoneSession &s, Channel *ch, LocalChannel *lc);
    void detach(ZoneSession &s, Channel *ch, LocalChannel *lc);
    void drop_record(WorkerRecord *rec);
    // After dropping records of dead workers: counts restart, live workers add theirs back.
    void reset_counts();
    bool bit_shared(const WorkerRecord *rec) const;
    // Every worker's subscriber counts are in the zone (none is still to add them back).
    bool counts_settled() const;
    void move_bookmark(WorkerRecord *rec, Entry *to);
    // A message of ch up to `upto` is gone before the worker read it: tell its subscribers.
    void note_loss(WorkerRecord *rec, Channel *ch, MessageId upto);
    // Every worker holding subscribers of ch that has not read `upto` loses it.
    void note_loss_all(Channel *ch, MessageId upto);
    // Hands the worker's loss notices to a delivery batch (and forgets them).
    void take_losses(WorkerRecord *rec, Batch &out);

    // ---- allocation ----
    void *alloc_evicting(size_t size);
    bool evict_one();

    // Walks every channel (rare: a dead worker, a check); fn may free the channel it gets.
    template <typename Fn>
    void for_each_channel(Fn &&fn) {
        ngx_rbtree_node_t *sentinel = sh_->tree.sentinel;
        if (sh_->tree.root == sentinel) return;
        ngx_rbtree_node_t *node = ngx_rbtree_min(sh_->tree.root, sentinel);
        while (node != nullptr) {
            ngx_rbtree_node_t *next = ngx_rbtree_next(&sh_->tree, node);
            fn(reinterpret_cast<Channel *>(node));
            node = next;
        }
    }
    // fn may drop the record it gets.
    template <typename Fn>
    void for_each_record(Fn &&fn) const {
        ngx_queue_t *q = ngx_queue_head(&sh_->records);
        while (q != ngx_queue_sentinel(&sh_->records)) {
            ngx_queue_t *next = ngx_queue_next(q);
            fn(ngx_queue_data(q, WorkerRecord, in_zone));
            q = next;
        }
    }
    // Record bits that hold subscribers of the channel, or whose worker may wake for it.
    uint64_t record_bits() const;

private:
    Channel *init_channel(void *mem, std::string_view id);
    void push(Channel *ch, Entry *e);
    bool grow_ring(Channel *ch);
    Entry *pop_head(Channel *ch);
    void trim_head(Channel *ch);
    void remove_entry(Entry *e);
    bool unread(const Entry *e) const;
    void set_idle(Channel *ch, bool idle);
    void set_deleted(Channel *ch, bool deleted);
    void free_channel(Channel *ch);
    MessageId next_id();

    ShmStore        &store_;
    Shared          *sh_;
    ngx_slab_pool_t *pool_;
    uint64_t         now_;
};

}  // namespace shm
}  // namespace channels
