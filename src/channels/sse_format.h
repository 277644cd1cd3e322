// Server-Sent Events framing (SPEC §4, WHATWG "event stream" format). Pure logic.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace channels {

// Appends one event: "id: <id>\n", "event: <event>\n" when event is not empty, one
// "data: <line>\n" per line of data (lines split on CRLF, CR and LF, as the WHATWG parser
// splits them; empty data gives a single "data: \n"), then the blank line "\n".
// id and event must not contain CR or LF (callers validate). An empty id writes no "id:"
// line at all (an empty "id:" would reset the client's Last-Event-ID), as for channel-gap.
void append_sse_event(std::string &out, std::string_view id, std::string_view event,
                      std::string_view data);

// Exact number of bytes append_sse_event would append.
size_t sse_event_size(std::string_view id, std::string_view event, std::string_view data);

// ":<text>\n\n" keep-alive comment (text may be empty; must not contain CR or LF).
void append_sse_comment(std::string &out, std::string_view text);

// "retry: <ms>\n\n"
void append_sse_retry(std::string &out, uint64_t ms);

}  // namespace channels
