// Server-Sent Events framing (README "SSE", WHATWG "event stream" format). Pure logic.
//
// Events are written into a Sink (json_writer.h): a SizeSink counts, a BufferSink writes
// into memory sized that way, a StringSink appends to a std::string.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "channels/json_writer.h"

namespace channels {

namespace sse_detail {

// Position of the next line break at or after from, or npos. Most payloads hold no CR:
// then only LF is looked for, with memchr (vectorized).
inline size_t find_break(std::string_view s, size_t from, bool has_cr) {
    if (!has_cr) {
        const void *lf = from < s.size() ? std::memchr(s.data() + from, '\n', s.size() - from) : nullptr;
        return lf == nullptr ? std::string_view::npos : size_t(static_cast<const char *>(lf) - s.data());
    }
    for (size_t i = from; i < s.size(); i++) {
        if (s[i] == '\n' || s[i] == '\r') return i;
    }
    return std::string_view::npos;
}

inline bool has_cr(std::string_view s) { return !s.empty() && std::memchr(s.data(), '\r', s.size()) != nullptr; }

// Position just after the line break at br (CRLF counts as one break).
inline size_t skip_break(std::string_view s, size_t br) {
    return s[br] == '\r' && br + 1 < s.size() && s[br + 1] == '\n' ? br + 2 : br + 1;
}

template <typename Sink>
void put_field(Sink &sink, std::string_view name, std::string_view value) {
    if (value.empty()) return;
    sink.put(name);
    sink.put(value);
    sink.put('\n');
}

}  // namespace sse_detail

// One event: "id: <id>\n", "event: <event>\n" when event is not empty, one
// "data: <line>\n" per line of data (lines split on CRLF, CR and LF, as the WHATWG parser
// splits them; empty data gives a single "data: \n"), then the blank line "\n".
// id and event must not contain CR or LF (callers validate). An empty id writes no "id:"
// line at all (an empty "id:" would reset the client's Last-Event-ID), as for channel-gap.
// The parser strips exactly one space after "field:", so "data: " + line reproduces any
// line exactly, even one starting with a space.
template <typename Sink>
void put_sse_event(Sink &sink, std::string_view id, std::string_view event, std::string_view data) {
    using namespace sse_detail;
    put_field(sink, "id: ", id);
    put_field(sink, "event: ", event);
    bool cr = has_cr(data);
    size_t pos = 0;
    for (;;) {
        size_t br = find_break(data, pos, cr);
        size_t end = br == std::string_view::npos ? data.size() : br;
        sink.put(std::string_view("data: "));
        sink.put(data.substr(pos, end - pos));
        sink.put('\n');
        if (br == std::string_view::npos) break;
        pos = skip_break(data, br);
    }
    sink.put('\n');
}

// The bytes put_sse_event writes for an id of id_len bytes when data holds no line break; a
// lower bound otherwise (a break of one or two bytes becomes "\ndata: ", seven).
inline size_t sse_event_size_unbroken(size_t id_len, std::string_view event, size_t data_len) {
    return (id_len == 0 ? 0 : 4 + id_len + 1) + (event.empty() ? 0 : 7 + event.size() + 1) + 7 + data_len + 1;
}

void append_sse_event(std::string &out, std::string_view id, std::string_view event, std::string_view data);

// Exact number of bytes put_sse_event writes.
size_t sse_event_size(std::string_view id, std::string_view event, std::string_view data);

// Counting an event needs no writing.
inline void put_sse_event(SizeSink &sink, std::string_view id, std::string_view event, std::string_view data) {
    sink.add(sse_event_size(id, event, data));
}

// ":<text>\n\n" keep-alive comment (text may be empty; must not contain CR or LF).
void append_sse_comment(std::string &out, std::string_view text);

// "retry: <ms>\n\n"
void append_sse_retry(std::string &out, uint64_t ms);

}  // namespace channels
