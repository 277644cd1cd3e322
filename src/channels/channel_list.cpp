// Channel ids, event types, percent-decoding and channel lists (README "Directives", "Publishing").
#include "channels/channel_list.h"

#include <cstring>

namespace channels {

namespace {

// Byte classes looked up per byte; built at compile time (no global constructor).
struct IdAlphabet {
    bool ok[256] = {};

    constexpr IdAlphabet()
    {
        for (int c = '0'; c <= '9'; c++) ok[c] = true;
        for (int c = 'A'; c <= 'Z'; c++) ok[c] = true;
        for (int c = 'a'; c <= 'z'; c++) ok[c] = true;
        for (char c : {'_', '.', ':', '@', '~', '-'}) ok[static_cast<unsigned char>(c)] = true;
    }
};

constexpr IdAlphabet kIdAlphabet;

bool all_id_bytes(std::string_view s)
{
    for (char c : s) {
        if (!kIdAlphabet.ok[static_cast<unsigned char>(c)]) {
            return false;
        }
    }
    return true;
}

// Value of a hex digit, or -1.
int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

ListError check_item(std::string_view item)
{
    if (item.empty()) return ListError::empty_item;
    if (item.size() > kMaxChannelIdLen) return ListError::too_long;
    if (!all_id_bytes(item)) return ListError::bad_char;
    return ListError::none;
}

// Linear search is fine: at most 64 short ids, compared by length first.
ListError add_distinct(ChannelList &list, std::string_view id)
{
    for (size_t i = 0; i < list.count; i++) {
        if (list.ids[i] == id) return ListError::none;
    }
    if (list.count == kMaxChannels) return ListError::too_many;
    list.ids[list.count++] = id;
    return ListError::none;
}

}  // namespace

bool is_valid_channel_id(std::string_view id)
{
    return check_item(id) == ListError::none;
}

bool is_valid_event_type(std::string_view event)
{
    return !event.empty() && event.size() <= kMaxEventTypeLen &&
           event.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// Works in place too (out == in.data()): the write position never passes the read one,
// and each escape is read before its output byte is written.
size_t percent_decode(std::string_view in, char *out)
{
    const char *p = in.data();
    const char *end = p + in.size();
    size_t n = 0;
    while (p < end) {
        const void *pct = std::memchr(p, '%', static_cast<size_t>(end - p));
        size_t run = pct ? static_cast<size_t>(static_cast<const char *>(pct) - p)
                         : static_cast<size_t>(end - p);
        if (run != 0 && out + n != p) {
            std::memmove(out + n, p, run);
        }
        n += run;
        p += run;
        if (p == end) break;
        int hi = end - p > 2 ? hex_value(p[1]) : -1;
        int lo = hi >= 0 ? hex_value(p[2]) : -1;
        if (lo < 0) {
            out[n++] = '%';  // invalid escape: the '%' is kept, the rest copied as text
            p++;
            continue;
        }
        out[n++] = static_cast<char>(hi * 16 + lo);
        p += 3;
    }
    return n;
}

std::string_view describe(ListError err)
{
    switch (err) {
    case ListError::none: return "valid channel list";
    case ListError::empty_item: return "invalid channel list: empty channel id";
    case ListError::too_long: return "invalid channel id: longer than 255 bytes";
    case ListError::bad_char:
        return "invalid channel id: character outside A-Z a-z 0-9 _ . : @ ~ -";
    case ListError::too_many: return "too many channels: at most 64 per subscriber";
    case ListError::no_channel: return "no channel id given";
    }
    return "invalid channel list";
}

ListError ChannelList::append_one(std::string_view decoded_value)
{
    if (decoded_value.empty()) {
        return ListError::none;
    }
    ListError err = check_item(decoded_value);
    return err != ListError::none ? err : add_distinct(*this, decoded_value);
}

ListError ChannelList::append(std::string_view decoded_value)
{
    if (decoded_value.empty()) {
        return ListError::none;  // an argument evaluating to empty is skipped
    }
    for (;;) {
        size_t comma = decoded_value.find(',');
        std::string_view item = decoded_value.substr(0, comma);
        ListError err = check_item(item);
        if (err != ListError::none) return err;
        err = add_distinct(*this, item);
        if (err != ListError::none) return err;
        if (comma == std::string_view::npos) return ListError::none;
        decoded_value.remove_prefix(comma + 1);
    }
}

}  // namespace channels
