// A worker's session with one zone: its worker record in the zone and the registry of the
// channels it holds subscribers of (worker memory). The store keeps the zone's counts and
// wake bits in step with the registry under the zone lock; the delivery layer links its
// subscribers to the registry's channels.
//
// The registry is keyed by channel id, so a subscriber's channels are found (or prepared)
// before the zone is locked and nothing is allocated while it is held. It also lets a worker
// put its subscriptions back into a zone that was rebuilt (ids, not zone pointers, survive).
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <string_view>

#include "ngx_http_channels_store.h"

namespace channels {

// 40 bytes and the id: with a 16-byte id, one 64-byte heap chunk.
struct LocalChannel {
    LocalChannel *next;             // registry bucket chain
    ChannelKey    key;              // the zone's channel while count > 0
    ngx_queue_t   links;            // delivery: its local subscribers' links
    uint32_t      count : 31;       // local subscribers holding it (kept by the store, under the lock)
    uint32_t      registered : 1;
    uint32_t      hash : 24;        // of the id (the registry's buckets)
    uint32_t      len : 8;          // id length - 1
    char          id[1];

    std::string_view name() const { return {id, size_t(len) + 1}; }
};

class ZoneSession {
public:
    ZoneSession() = default;
    ~ZoneSession();
    ZoneSession(const ZoneSession &) = delete;
    ZoneSession &operator=(const ZoneSession &) = delete;

    LocalChannel *find(std::string_view id) const;
    // The registered channel, or a new unregistered one (nullptr: out of memory). Also makes
    // room so that committing it later cannot fail.
    LocalChannel *prepare(std::string_view id);
    // After the store attached it (count > 0): registers a prepared channel.
    void commit(LocalChannel *lc);
    // Frees what a failed or unattached subscribe prepared (unregistered, count 0).
    void discard(LocalChannel *lc);
    // After the store dropped its last local subscriber: unregisters and frees it.
    void forget(LocalChannel *lc);

    template <typename Fn>
    void for_each(Fn &&fn) const {
        for (size_t i = 0; i < nbuckets_; i++) {
            for (LocalChannel *lc = buckets_[i]; lc != nullptr; lc = lc->next) fn(lc);
        }
    }
    size_t size() const { return size_; }

    // The store's bookkeeping of this worker in the zone.
    void    *record = nullptr;        // its WorkerRecord, valid for `generation`
    uint32_t generation = 0;
    uint32_t counted_epoch = 0;
    uint32_t bit = 0;                 // its record's wake bit
    uint32_t wake_nonce = 0;          // of its wake-up socket's name, for its record
    uint32_t held = 0;                // registry channels with count > 0 (kept by the store)
    uint64_t connections = 0;         // subscriber connections of this worker (kept by the store)
    ngx_log_t *log = nullptr;

private:
    bool grow();

    LocalChannel **buckets_ = nullptr;
    size_t nbuckets_ = 0;
    size_t size_ = 0;
};

}  // namespace channels
