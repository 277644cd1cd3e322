// Server-Sent Events framing (see sse_format.h).
#include "channels/sse_format.h"

namespace channels {

size_t sse_event_size(std::string_view id, std::string_view event, std::string_view data)
{
    SizeSink sink;
    put_sse_event(sink, id, event, data);
    return sink.size();
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
