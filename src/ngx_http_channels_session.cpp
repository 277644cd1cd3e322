// The worker's registry of the channels it holds (see ngx_http_channels_session.h).

#include "ngx_http_channels_session.h"

namespace channels {
namespace {

uint32_t hash_of(std::string_view id) {
    return ngx_crc32_short(reinterpret_cast<u_char *>(const_cast<char *>(id.data())), id.size()) & 0xffffff;
}

constexpr size_t kFirstBuckets = 16;
// Channels per bucket before the array doubles: two (a lookup walks two nodes on average)
// keep the array at 4 to 8 bytes per channel, a tenth of what a channel costs here.
constexpr size_t kMaxLoad = 2;

}  // namespace

ZoneSession::~ZoneSession() {
    for (size_t i = 0; i < nbuckets_; i++) {
        for (LocalChannel *lc = buckets_[i]; lc != nullptr;) {
            LocalChannel *next = lc->next;
            ngx_free(lc);
            lc = next;
        }
    }
    ngx_free(buckets_);
}

LocalChannel *ZoneSession::find(std::string_view id) const {
    if (nbuckets_ == 0) return nullptr;
    uint32_t hash = hash_of(id);
    for (LocalChannel *lc = buckets_[hash & (nbuckets_ - 1)]; lc != nullptr; lc = lc->next) {
        if (lc->hash == hash && lc->name() == id) return lc;
    }
    return nullptr;
}

// Doubles the bucket array (load factor at most kMaxLoad), so commit() never allocates.
bool ZoneSession::grow() {
    size_t n = nbuckets_ == 0 ? kFirstBuckets : nbuckets_ * 2;
    auto **bigger = static_cast<LocalChannel **>(ngx_calloc(n * sizeof(LocalChannel *), log));
    if (bigger == nullptr) return false;
    for (size_t i = 0; i < nbuckets_; i++) {
        for (LocalChannel *lc = buckets_[i]; lc != nullptr;) {
            LocalChannel *next = lc->next;
            lc->next = bigger[lc->hash & (n - 1)];
            bigger[lc->hash & (n - 1)] = lc;
            lc = next;
        }
    }
    ngx_free(buckets_);
    buckets_ = bigger;
    nbuckets_ = n;
    return true;
}

LocalChannel *ZoneSession::prepare(std::string_view id) {
    if (LocalChannel *lc = find(id)) return lc;
    if (size_ + 1 > nbuckets_ * kMaxLoad && !grow()) return nullptr;
    auto *lc = static_cast<LocalChannel *>(ngx_alloc(offsetof(LocalChannel, id) + id.size(), log));
    if (lc == nullptr) return nullptr;
    lc->next = nullptr;
    lc->key = 0;
    lc->count = 0;
    lc->hash = hash_of(id);
    lc->registered = 0;
    ngx_queue_init(&lc->links);
    lc->len = uint8_t(id.size() - 1);
    ngx_memcpy(lc->id, id.data(), id.size());
    size_++;   // counted at once: room for every prepared channel is kept
    return lc;
}

void ZoneSession::commit(LocalChannel *lc) {
    if (lc->registered) return;
    lc->registered = 1;
    LocalChannel **bucket = &buckets_[lc->hash & (nbuckets_ - 1)];
    lc->next = *bucket;
    *bucket = lc;
}

void ZoneSession::discard(LocalChannel *lc) {
    if (lc->registered) return;
    size_--;
    ngx_free(lc);
}

void ZoneSession::forget(LocalChannel *lc) {
    if (!lc->registered) {
        discard(lc);
        return;
    }
    for (LocalChannel **p = &buckets_[lc->hash & (nbuckets_ - 1)]; *p != nullptr; p = &(*p)->next) {
        if (*p == lc) {
            *p = lc->next;
            break;
        }
    }
    size_--;
    ngx_free(lc);
}

}  // namespace channels
