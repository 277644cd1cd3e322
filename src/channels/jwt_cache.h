// A per-worker cache of verified tokens (README "Authorization (JWT)" / issue 15): a long-poll loop or a
// reconnecting stream re-presents the same token, and an RSA or ECDSA verification costs
// far more than the request itself. Keyed by the SHA-256 of the token and the key set
// that verified it; bounded in entries and bytes (least recently used goes first);
// entries leave at their token's exp. A key set is named by a number that is never
// reused (an address could be, after a reload). Pure logic: the clock is a parameter.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>

#include "channels/jwt.h"

namespace channels {

class TokenCache {
public:
    using Digest = std::array<unsigned char, 32>;

    TokenCache(size_t max_entries, size_t max_bytes) : max_entries_(max_entries), max_bytes_(max_bytes) {}

    // The claims of a token verified earlier by the same key set, or nullptr (also once
    // its exp has passed: the entry is dropped then). Valid until the next insert/clear.
    const Claims *find(const Digest &digest, uint64_t keyset, uint64_t now_ms);

    // Remembers a verified token's claims (moved from `claims`). Returns the kept claims,
    // valid until the next insert/clear; or nullptr, `claims` untouched, when they are not
    // kept (the token has expired, or its claims alone are over the byte bound).
    const Claims *insert(const Digest &digest, uint64_t keyset, Claims &&claims, uint64_t now_ms);

    void clear();
    size_t size() const { return map_.size(); }
    size_t bytes() const { return bytes_; }

private:
    struct Key {
        Digest      digest;
        uint64_t    keyset;
        bool operator==(const Key &o) const { return keyset == o.keyset && digest == o.digest; }
    };
    struct KeyHash {
        size_t operator()(const Key &k) const;
    };
    struct Entry {
        Key    key;
        Claims claims;
        size_t bytes;
    };
    using List = std::list<Entry>;

    void erase(List::iterator it);

    size_t max_entries_, max_bytes_, bytes_ = 0;
    List lru_;   // most recently used first
    std::unordered_map<Key, List::iterator, KeyHash> map_;
};

}  // namespace channels
