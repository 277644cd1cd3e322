// UTF-8 validation (RFC 3629); JSON strings, base64 and numbers appended to a std::string
// (through the writer's own escaping: json_writer.h).
#include "channels/json.h"

#include <cstring>

#include "channels/json_writer.h"

namespace channels {

namespace {

bool is_tail(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the well-formed sequence starting at p (p < end, *p >= 0x80), or 0.
// Follows RFC 3629's UTF8-2/3/4 rules: the second byte's range depends on the lead.
size_t utf8_sequence(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t avail = static_cast<size_t>(end - p);
    if (c >= 0xC2 && c <= 0xDF) {
        return avail >= 2 && is_tail(p[1]) ? 2 : 0;
    }
    unsigned char lo = 0x80, hi = 0xBF;
    size_t len;
    if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;       // overlong below U+0800
        else if (c == 0xED) hi = 0x9F;  // surrogates U+D800..U+DFFF
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;       // overlong below U+10000
        else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
        return 0;  // stray continuation byte, C0/C1 overlong lead, or F5..FF
    }
    if (avail < len || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++) {
        if (!is_tail(p[i])) return 0;
    }
    return len;
}

// Skips 8 ASCII bytes at a time: most payloads are mostly ASCII.
const unsigned char *skip_ascii(const unsigned char *p, const unsigned char *end)
{
    while (end - p >= 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);
        if (w & 0x8080808080808080ull) break;
        p += 8;
    }
    while (p < end && *p < 0x80) p++;
    return p;
}

}  // namespace

bool is_valid_utf8(std::string_view s)
{
    const auto *p = reinterpret_cast<const unsigned char *>(s.data());
    const auto *end = p + s.size();
    for (;;) {
        p = skip_ascii(p, end);
        if (p == end) return true;
        size_t n = utf8_sequence(p, end);
        if (n == 0) return false;
        p += n;
    }
}

void append_json_string(std::string &out, std::string_view s)
{
    out.reserve(out.size() + s.size() + 2);
    StringSink sink(out);
    put_json_string(sink, s);
}

void append_base64(std::string &out, std::string_view bytes)
{
    out.reserve(out.size() + (bytes.size() + 2) / 3 * 4);
    StringSink sink(out);
    put_base64(sink, bytes);
}

void append_uint(std::string &out, uint64_t value)
{
    StringSink sink(out);
    put_uint(sink, value);
}

}  // namespace channels
