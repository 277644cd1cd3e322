// Verified-token cache: an LRU list with a hash index.
#include "channels/jwt_cache.h"

#include <cstring>

namespace channels {

size_t TokenCache::KeyHash::operator()(const Key &k) const
{
    size_t h;   // the digest is already uniformly distributed
    std::memcpy(&h, k.digest.data(), sizeof h);
    return h ^ size_t(k.keyset);
}

const Claims *TokenCache::find(const Digest &digest, uint64_t keyset, uint64_t now_ms)
{
    auto it = map_.find(Key{digest, keyset});
    if (it == map_.end()) return nullptr;
    List::iterator e = it->second;
    if (e->claims.has_exp && now_ms >= e->claims.exp_ms) {
        erase(e);
        return nullptr;
    }
    lru_.splice(lru_.begin(), lru_, e);
    return &e->claims;
}

const Claims *TokenCache::insert(const Digest &digest, uint64_t keyset, Claims &&claims, uint64_t now_ms)
{
    if ((claims.has_exp && now_ms >= claims.exp_ms) || max_entries_ == 0) return nullptr;
    Key key{digest, keyset};
    auto found = map_.find(key);
    if (found != map_.end()) erase(found->second);
    size_t bytes = claims.footprint() + sizeof(Entry) + 64;   // + list and index nodes
    if (bytes > max_bytes_) return nullptr;
    while (!lru_.empty() && (map_.size() >= max_entries_ || bytes_ + bytes > max_bytes_)) {
        erase(std::prev(lru_.end()));
    }
    lru_.push_front(Entry{key, std::move(claims), bytes});
    map_.emplace(key, lru_.begin());
    bytes_ += bytes;
    return &lru_.front().claims;
}

void TokenCache::erase(List::iterator it)
{
    bytes_ -= it->bytes;
    map_.erase(it->key);
    lru_.erase(it);
}

void TokenCache::clear()
{
    map_.clear();
    lru_.clear();
    bytes_ = 0;
}

}  // namespace channels
