// Message ids: parse_id against a string-comparison reference, format_id round trip,
// and next_id staying strictly increasing and parseable.
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "channels/ids.h"
#include "fuzz_check.h"

using channels::MessageId;

namespace {

constexpr uint64_t kMaxMs = (uint64_t{1} << 63) - 1;

// Digits without leading zeros ("0" stays), or "" when s is not all digits.
std::string canonical_digits(std::string_view s)
{
    if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos) return "";
    size_t nz = s.find_first_not_of('0');
    return std::string(nz == std::string_view::npos ? "0" : s.substr(nz));
}

// a <= b for canonical decimal strings.
bool not_above(const std::string &a, std::string_view b)
{
    return a.size() != b.size() ? a.size() < b.size() : a <= b;
}

std::string fmt(MessageId id)
{
    char buf[channels::kMaxIdText];
    return std::string(buf, channels::format_id(id, buf));
}

void check_next(MessageId last, uint64_t now)
{
    MessageId n = channels::next_id(last, now);
    bool top = last.ms == kMaxMs && last.seq == std::numeric_limits<uint32_t>::max();
    FUZZ_CHECK(top ? n == last : n > last);
    FUZZ_CHECK(channels::parse_id(fmt(n)) == n);
    if (now > last.ms && now <= kMaxMs) FUZZ_CHECK(n == (MessageId{now, 0}));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string_view text(reinterpret_cast<const char *>(data), size);
    std::optional<MessageId> got = channels::parse_id(text);

    size_t dash = text.find('-');
    std::string ms, seq;
    if (dash != std::string_view::npos) {
        ms = canonical_digits(text.substr(0, dash));
        seq = canonical_digits(text.substr(dash + 1));
    }
    bool want = !ms.empty() && !seq.empty() && not_above(ms, "9223372036854775807") &&
                not_above(seq, "4294967295");
    FUZZ_CHECK(got.has_value() == want);
    if (!got) return 0;
    FUZZ_CHECK(fmt(*got) == ms + "-" + seq);
    FUZZ_CHECK(channels::parse_id(fmt(*got)) == got);

    uint64_t now = 0;
    for (size_t i = 0; i < size && i < 8; i++) now = now << 8 | data[i];
    for (uint64_t t : {uint64_t{0}, got->ms, got->ms + 1, got->ms - 1, now, ~uint64_t{0}}) {
        check_next(*got, t);
    }
    check_next({got->ms, std::numeric_limits<uint32_t>::max()}, got->ms);
    return 0;
}
