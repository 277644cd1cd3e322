// Channel ids and channel lists (README "Directives"). Pure logic, no nginx.
#pragma once

#include <array>
#include <cstddef>
#include <string_view>

namespace channels {

inline constexpr size_t kMaxChannelIdLen = 255;
inline constexpr size_t kMaxChannels = 64;

// 1..255 bytes from A-Z a-z 0-9 _ . : @ ~ -
bool is_valid_channel_id(std::string_view id);

// Event types: 1..64 bytes without CR, LF or NUL (README "Publishing").
inline constexpr size_t kMaxEventTypeLen = 64;
bool is_valid_event_type(std::string_view event);

// Decodes %XX escapes once (both hex cases). An invalid escape ("%zz", a '%' near the end)
// is copied literally. '+' is left as is. out must hold in.size() bytes; returns the
// decoded length. out may be in.data() (decoding in place).
size_t percent_decode(std::string_view in, char *out);

enum class ListError {
    none,
    empty_item,    // "a,,b", ",a", "a,"
    too_long,      // an id over 255 bytes
    bad_char,      // a byte outside the id alphabet
    too_many,      // more than 64 distinct ids
    no_channel,    // nothing at all (every argument empty)
};

// One-line reason for a 400 answer, e.g. "channel id has a character outside A-Z a-z 0-9 _ . : @ ~ -".
std::string_view describe(ListError err);

// Distinct channel ids of one subscriber, in first-seen order. The views point into
// buffers owned by the caller (the decoded argument values).
struct ChannelList {
    std::array<std::string_view, kMaxChannels> ids{};
    size_t count = 0;

    // Splits one decoded argument value on commas, validates and appends its ids,
    // merging duplicates. An empty value is skipped (not an error). Returns the first
    // error found; the list is then unspecified.
    ListError append(std::string_view decoded_value);

    // Appends a value that is one channel id whatever it holds (composed of text and
    // variables: a comma in it is a bad byte, never a second channel). Empty: skipped.
    ListError append_one(std::string_view decoded_value);

    // Call after all arguments were appended: no_channel when the list is empty.
    ListError finish() const { return count == 0 ? ListError::no_channel : ListError::none; }
};

}  // namespace channels
