// Message ids: text form, strict parsing, and the monotonic "next id" rule.
#include "channels/ids.h"

#include <cstring>
#include <limits>

namespace channels {

namespace {

constexpr uint64_t kMsLimit = uint64_t{1} << 63;  // ms must stay below this
constexpr uint64_t kSeqLimit = uint64_t{1} << 32;  // seq must stay below this

size_t decimal_digits(uint64_t v)
{
    size_t n = 1;
    while (v >= 10000) {
        v /= 10000;
        n += 4;
    }
    return n + (v >= 10) + (v >= 100) + (v >= 1000);
}

// Two digits at a time, from the end (ids are formatted for every event sent).
constexpr char kDigitPairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

// Writes v in decimal at out, returns the digit count.
size_t write_decimal(uint64_t v, char *out)
{
    size_t n = decimal_digits(v);
    char *p = out + n;
    while (v >= 100) {
        const char *pair = kDigitPairs + 2 * (v % 100);
        v /= 100;
        *--p = pair[1];
        *--p = pair[0];
    }
    if (v >= 10) {
        *--p = kDigitPairs[2 * v + 1];
        *--p = kDigitPairs[2 * v];
    } else {
        *--p = static_cast<char>('0' + v);
    }
    return n;
}

// Parses a non-empty run of ASCII digits whose value is below limit.
// Leading zeros are accepted: the value, not the spelling, is what is compared.
std::optional<uint64_t> parse_decimal(std::string_view s, uint64_t limit)
{
    if (s.empty()) {
        return std::nullopt;
    }
    uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        uint64_t d = static_cast<uint64_t>(c - '0');
        // v * 10 + d < limit, checked without overflowing (limit <= 2^63).
        if (v > (limit - 1 - d) / 10) {
            return std::nullopt;
        }
        v = v * 10 + d;
    }
    return v;
}

}  // namespace

size_t format_id(MessageId id, char *out)
{
    size_t n = write_decimal(id.ms, out);
    out[n++] = '-';
    return n + write_decimal(id.seq, out + n);
}

size_t id_text_size(MessageId id)
{
    return decimal_digits(id.ms) + 1 + decimal_digits(id.seq);
}

void IdFormatter::set_ms(uint64_t ms)
{
    if (has_ms_ && ms == ms_) {
        return;
    }
    has_ms_ = true;
    ms_ = ms;
    ms_len_ = write_decimal(ms, ms_text_);
}

size_t IdFormatter::format(MessageId id, char *out)
{
    set_ms(id.ms);
    std::memcpy(out, ms_text_, ms_len_);
    size_t n = ms_len_;
    out[n++] = '-';
    return n + write_decimal(id.seq, out + n);
}

size_t IdFormatter::size(MessageId id)
{
    set_ms(id.ms);
    return ms_len_ + 1 + decimal_digits(id.seq);
}

std::optional<MessageId> parse_id(std::string_view text)
{
    size_t dash = text.find('-');
    if (dash == std::string_view::npos) {
        return std::nullopt;
    }
    // A second dash lands in the seq part and fails the digit check there.
    auto ms = parse_decimal(text.substr(0, dash), kMsLimit);
    auto seq = parse_decimal(text.substr(dash + 1), kSeqLimit);
    if (!ms || !seq) {
        return std::nullopt;
    }
    return MessageId{*ms, static_cast<uint32_t>(*seq)};
}

MessageId next_id(MessageId last, uint64_t now_ms)
{
    // Clamped so generated ids stay parseable even with an absurd clock value.
    uint64_t now = now_ms < kMsLimit ? now_ms : kMsLimit - 1;
    if (now > last.ms) {
        return MessageId{now, 0};
    }
    if (last.seq < std::numeric_limits<uint32_t>::max()) {
        return MessageId{last.ms, last.seq + 1};
    }
    // Counter exhausted within one ms: borrow the next ms. At the very top of the
    // range there is nothing larger that still parses; saturate (unreachable in practice).
    if (last.ms + 1 >= kMsLimit) {
        return last;
    }
    return MessageId{last.ms + 1, 0};
}

}  // namespace channels
