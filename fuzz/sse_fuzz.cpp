// SSE framing round trip: framed bytes parsed by the WHATWG-style test parser give back
// the data with CRLF and CR turned into LF, the event type and the id; the size
// function matches. Input: byte 0 = event type length, then the type, then the data.
#include <string>
#include <string_view>

#include "channels/channel_list.h"
#include "channels/ids.h"
#include "channels/sse_format.h"
#include "fuzz_check.h"
#include "sse_parse_for_tests.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string_view in(reinterpret_cast<const char *>(data), size);
    sse_test::parse(in);  // the test parser itself must cope with anything

    size_t type_len = size ? data[0] % 16 : 0;
    std::string_view rest = in.substr(size ? 1 : 0);
    std::string_view type = rest.substr(0, type_len);
    if (!channels::is_valid_event_type(type)) type = {};
    std::string_view payload = rest.substr(type.size());

    char idbuf[channels::kMaxIdText];
    std::string_view id(idbuf, channels::format_id({size * 1000003, static_cast<uint32_t>(size)}, idbuf));
    if (size % 5 == 0) id = {};  // no id line at all

    std::string out = "x";  // appended after existing bytes
    channels::append_sse_event(out, id, type, payload);
    FUZZ_CHECK(out.size() - 1 == channels::sse_event_size(id, type, payload));
    FUZZ_CHECK(out.find('\r') == std::string::npos);
    channels::append_sse_comment(out, type);
    channels::append_sse_retry(out, size);

    sse_test::Stream st = sse_test::parse(std::string_view(out).substr(1));
    FUZZ_CHECK(st.events.size() == 1);
    FUZZ_CHECK(st.events[0].data == sse_test::normalize_breaks(payload));
    FUZZ_CHECK(st.events[0].type == (type.empty() ? "message" : type));
    FUZZ_CHECK(st.events[0].last_event_id == id);
    FUZZ_CHECK(st.comments == 1 && st.comment_texts[0] == type);
    FUZZ_CHECK(st.retry == size);
    FUZZ_CHECK(st.unterminated.empty() && !st.pending_fields);
    return 0;
}
