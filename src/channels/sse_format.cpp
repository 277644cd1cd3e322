// Server-Sent Events framing. The WHATWG parser strips exactly one space after "field:",
// so "data: " + line reproduces any line exactly, even one starting with a space.
#include "channels/sse_format.h"

#include "channels/json.h"

namespace channels {

namespace {

constexpr std::string_view kIdField = "id: ";
constexpr std::string_view kEventField = "event: ";
constexpr std::string_view kDataField = "data: ";

// Position of the next CR or LF at or after from, or npos.
size_t find_break(std::string_view s, size_t from)
{
    for (size_t i = from; i < s.size(); i++) {
        if (s[i] == '\n' || s[i] == '\r') return i;
    }
    return std::string_view::npos;
}

// Position just after the line break at br (CRLF counts as one break).
size_t skip_break(std::string_view s, size_t br)
{
    return s[br] == '\r' && br + 1 < s.size() && s[br + 1] == '\n' ? br + 2 : br + 1;
}

size_t field_size(std::string_view name, std::string_view value)
{
    return value.empty() ? 0 : name.size() + value.size() + 1;
}

void append_field(std::string &out, std::string_view name, std::string_view value)
{
    if (value.empty()) return;
    out.append(name);
    out.append(value);
    out.push_back('\n');
}

}  // namespace

size_t sse_event_size(std::string_view id, std::string_view event, std::string_view data)
{
    // Every line costs "data: " + "\n"; the breaks themselves are not copied.
    size_t lines = 1, break_bytes = 0;
    for (size_t br = find_break(data, 0); br != std::string_view::npos;) {
        size_t next = skip_break(data, br);
        lines++;
        break_bytes += next - br;
        br = find_break(data, next);
    }
    return field_size(kIdField, id) + field_size(kEventField, event) +
           lines * (kDataField.size() + 1) + (data.size() - break_bytes) + 1;
}

void append_sse_event(std::string &out, std::string_view id, std::string_view event,
                      std::string_view data)
{
    out.reserve(out.size() + sse_event_size(id, event, data));
    append_field(out, kIdField, id);
    append_field(out, kEventField, event);
    size_t pos = 0;
    for (;;) {
        size_t br = find_break(data, pos);
        size_t end = br == std::string_view::npos ? data.size() : br;
        out.append(kDataField);
        out.append(data.data() + pos, end - pos);
        out.push_back('\n');
        if (br == std::string_view::npos) break;
        pos = skip_break(data, br);
    }
    out.push_back('\n');
}

void append_sse_comment(std::string &out, std::string_view text)
{
    out.reserve(out.size() + text.size() + 3);
    out.push_back(':');
    out.append(text);
    out.append("\n\n", 2);
}

void append_sse_retry(std::string &out, uint64_t ms)
{
    out.append("retry: ", 7);
    append_uint(out, ms);
    out.append("\n\n", 2);
}

}  // namespace channels
