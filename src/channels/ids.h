// Message ids: "<publish ms>-<counter>", strictly increasing within a zone (README "Publishing").
// Pure logic, no nginx: unit-tested in t/unit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace channels {

struct MessageId {
    uint64_t ms = 0;
    uint32_t seq = 0;

    constexpr bool operator==(MessageId o) const { return ms == o.ms && seq == o.seq; }
    constexpr bool operator!=(MessageId o) const { return !(*this == o); }
    constexpr bool operator<(MessageId o) const {
        return ms < o.ms || (ms == o.ms && seq < o.seq);
    }
    constexpr bool operator<=(MessageId o) const { return !(o < *this); }
    constexpr bool operator>(MessageId o) const { return o < *this; }
    constexpr bool operator>=(MessageId o) const { return !(*this < o); }
};

// A MessageId in 12 bytes (MessageId pads to 16), for structs kept by the thousand.
struct PackedId {
    uint32_t ms_lo, ms_hi, seq;

    static PackedId of(MessageId id) { return {uint32_t(id.ms), uint32_t(id.ms >> 32), id.seq}; }
    MessageId get() const { return {uint64_t(ms_hi) << 32 | ms_lo, seq}; }
};

// Longest text form: 20 digits, '-', 10 digits.
inline constexpr size_t kMaxIdText = 31;

// Writes the text form (no terminating NUL) into out, which holds kMaxIdText bytes.
// Returns the number of bytes written.
size_t format_id(MessageId id, char *out);

// The length format_id() writes, without writing.
size_t id_text_size(MessageId id);

// format_id() and id_text_size() for ids in a row, as a replay page has them: consecutive
// ids mostly share their ms part, whose digits are kept from the previous id.
class IdFormatter {
public:
    size_t format(MessageId id, char *out);   // as format_id()
    size_t size(MessageId id);                // as id_text_size()

private:
    void set_ms(uint64_t ms);

    bool has_ms_ = false;
    uint64_t ms_ = 0;
    size_t ms_len_ = 0;
    char ms_text_[20] = {};
};

// Parses "<digits>-<digits>" exactly (no sign, no spaces, ms < 2^63, seq < 2^32).
// Anything else is nullopt: a malformed cursor is treated as absent, never an error.
// Leading zeros are accepted ("007-01" is {7, 1}); format_id never writes them.
std::optional<MessageId> parse_id(std::string_view text);

// The id for the next message: the clock when it moved past the last id, else last + 1
// in the counter (so ids never go backwards when the clock is set back). When the counter
// would overflow, the ms part is advanced instead.
MessageId next_id(MessageId last, uint64_t now_ms);

}  // namespace channels
