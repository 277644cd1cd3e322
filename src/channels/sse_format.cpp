// Server-Sent Events framing (see sse_format.h).
#include "channels/sse_format.h"

namespace channels {

size_t sse_event_size(std::string_view id, std::string_view event, std::string_view data)
{
    using namespace sse_detail;
    // Every line costs "data: " + "\n"; the breaks themselves are not copied.
    bool cr = has_cr(data);
    size_t lines = 1, break_bytes = 0;
    for (size_t br = find_break(data, 0, cr); br != std::string_view::npos;) {
        size_t next = skip_break(data, br);
        lines++;
        break_bytes += next - br;
        br = find_break(data, next, cr);
    }
    auto field = [](std::string_view name, std::string_view value) {
        return value.empty() ? 0 : name.size() + value.size() + 1;
    };
    return field("id: ", id) + field("event: ", event) + lines * 7 + (data.size() - break_bytes) + 1;
}

void append_sse_event(std::string &out, std::string_view id, std::string_view event, std::string_view data)
{
    out.reserve(out.size() + sse_event_size(id, event, data));
    StringSink sink(out);
    put_sse_event(sink, id, event, data);
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
    StringSink sink(out);
    sink.put(std::string_view("retry: "));
    put_uint(sink, ms);
    sink.put(std::string_view("\n\n"));
}

}  // namespace channels
