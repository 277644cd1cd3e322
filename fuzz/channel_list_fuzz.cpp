// Channel argument values: percent_decode then ChannelList::append, checked against a
// reference written straight from SPEC §1. Lines of the input are separate arguments.
#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "channels/channel_list.h"
#include "fuzz_check.h"

using channels::ChannelList;
using channels::ListError;

namespace {

int hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string reference_decode(std::string_view in)
{
    std::string out;
    for (size_t i = 0; i < in.size(); i++) {
        if (in[i] == '%' && i + 2 < in.size() && hex(in[i + 1]) >= 0 && hex(in[i + 2]) >= 0) {
            out.push_back(static_cast<char>(hex(in[i + 1]) * 16 + hex(in[i + 2])));
            i += 2;
        } else {
            out.push_back(in[i]);
        }
    }
    return out;
}

bool id_byte(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           std::string_view("_.:@~-").find(c) != std::string_view::npos;
}

// SPEC §1 spelled out: returns the error and fills want with the distinct ids.
ListError reference_list(const std::vector<std::string> &values, std::vector<std::string> &want)
{
    for (const auto &v : values) {
        if (v.empty()) continue;
        size_t start = 0;
        for (;;) {
            size_t comma = v.find(',', start);
            std::string item = v.substr(start, comma == std::string::npos ? comma : comma - start);
            if (item.empty()) return ListError::empty_item;
            if (item.size() > 255) return ListError::too_long;
            if (!std::all_of(item.begin(), item.end(), id_byte)) return ListError::bad_char;
            if (std::find(want.begin(), want.end(), item) == want.end()) {
                if (want.size() == 64) return ListError::too_many;
                want.push_back(item);
            }
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
    }
    return want.empty() ? ListError::no_channel : ListError::none;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string_view input(reinterpret_cast<const char *>(data), size);
    std::vector<std::unique_ptr<char[]>> buffers;  // exact-size: ASan sees any overrun
    std::vector<std::string> decoded;
    ChannelList list;
    ListError err = ListError::none;
    for (size_t start = 0; start <= input.size();) {
        size_t nl = std::min(input.find('\n', start), input.size());
        std::string_view raw = input.substr(start, nl - start);
        buffers.emplace_back(new char[raw.size()]);
        char *buf = buffers.back().get();
        size_t n = channels::percent_decode(raw, buf);
        FUZZ_CHECK(n <= raw.size());
        FUZZ_CHECK(std::string_view(buf, n) == reference_decode(raw));
        std::string in_place(raw);
        in_place.resize(channels::percent_decode(in_place, in_place.data()));
        FUZZ_CHECK(in_place == std::string_view(buf, n));
        decoded.emplace_back(buf, n);
        if (err == ListError::none) err = list.append({buf, n});
        start = nl + 1;
    }
    if (err == ListError::none) err = list.finish();

    std::vector<std::string> want;
    FUZZ_CHECK(err == reference_list(decoded, want));
    std::string_view why = channels::describe(err);
    FUZZ_CHECK(!why.empty() && why.find_first_of("\r\n") == std::string_view::npos);
    if (err != ListError::none) return 0;
    FUZZ_CHECK(list.count == want.size());
    for (size_t i = 0; i < list.count; i++) {
        FUZZ_CHECK(list.ids[i] == want[i]);
        FUZZ_CHECK(channels::is_valid_channel_id(list.ids[i]));
    }
    return 0;
}
