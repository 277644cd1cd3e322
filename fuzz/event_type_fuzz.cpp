// Event types and single channel ids: the validators against SPEC §1/§3 spelled out,
// and a valid event type surviving SSE framing as the type the client sees.
#include <string>
#include <string_view>

#include "channels/channel_list.h"
#include "channels/sse_format.h"
#include "fuzz_check.h"
#include "sse_parse_for_tests.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string_view s(reinterpret_cast<const char *>(data), size);

    bool event_ok = size >= 1 && size <= 64 && s.find('\r') == std::string_view::npos &&
                    s.find('\n') == std::string_view::npos && s.find('\0') == std::string_view::npos;
    FUZZ_CHECK(channels::is_valid_event_type(s) == event_ok);

    bool id_ok = size >= 1 && size <= 255;
    for (char c : s) {
        bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        id_ok = id_ok && (alnum || std::string_view("_.:@~-").find(c) != std::string_view::npos);
    }
    FUZZ_CHECK(channels::is_valid_channel_id(s) == id_ok);

    if (!event_ok) return 0;
    std::string out;
    channels::append_sse_event(out, "1-0", s, "x");
    sse_test::Stream st = sse_test::parse(out);
    FUZZ_CHECK(st.events.size() == 1);
    FUZZ_CHECK(st.events[0].type == s);
    FUZZ_CHECK(st.events[0].data == "x");
    return 0;
}
