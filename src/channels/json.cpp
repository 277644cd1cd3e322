// JSON string escaping, UTF-8 validation (RFC 3629) and base64 (RFC 4648).
#include "channels/json.h"

#include <cstring>

namespace channels {

namespace {

// For each byte: 0 when it is copied as is, else the letter after the backslash
// ('u' meaning \u00XX). Built at compile time (no global constructor).
struct JsonEscapes {
    char esc[256] = {};

    constexpr JsonEscapes()
    {
        for (int c = 0; c < 0x20; c++) esc[c] = 'u';
        const char pairs[][2] = {{'\b', 'b'}, {'\f', 'f'}, {'\n', 'n'}, {'\r', 'r'},
                                 {'\t', 't'}, {'"', '"'},  {'\\', '\\'}};
        for (const auto &pr : pairs) esc[static_cast<unsigned char>(pr[0])] = pr[1];
    }
};

constexpr JsonEscapes kJsonEscapes;
constexpr char kHex[] = "0123456789abcdef";
constexpr char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void append_escape(std::string &out, unsigned char c, char e)
{
    if (e != 'u') {
        const char two[2] = {'\\', e};
        out.append(two, 2);
        return;
    }
    const char six[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
    out.append(six, 6);
}

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
    out.push_back('"');
    size_t run = 0;  // start of the pending run of bytes copied as they are
    for (size_t i = 0; i < s.size(); i++) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        char e = kJsonEscapes.esc[c];
        if (e == 0) continue;
        out.append(s.data() + run, i - run);
        append_escape(out, c, e);
        run = i + 1;
    }
    out.append(s.data() + run, s.size() - run);
    out.push_back('"');
}

void append_base64(std::string &out, std::string_view bytes)
{
    size_t full = bytes.size() / 3, rest = bytes.size() % 3;
    size_t at = out.size();
    out.resize(at + (full + (rest != 0)) * 4);
    char *w = &out[at];
    const auto *p = reinterpret_cast<const unsigned char *>(bytes.data());
    for (size_t i = 0; i < full; i++, p += 3, w += 4) {
        uint32_t v = uint32_t{p[0]} << 16 | uint32_t{p[1]} << 8 | p[2];
        w[0] = kBase64[v >> 18];
        w[1] = kBase64[(v >> 12) & 63];
        w[2] = kBase64[(v >> 6) & 63];
        w[3] = kBase64[v & 63];
    }
    if (rest == 0) return;
    uint32_t v = uint32_t{p[0]} << 16 | (rest == 2 ? uint32_t{p[1]} << 8 : 0);
    w[0] = kBase64[v >> 18];
    w[1] = kBase64[(v >> 12) & 63];
    w[2] = rest == 2 ? kBase64[(v >> 6) & 63] : '=';
    w[3] = '=';
}

void append_uint(std::string &out, uint64_t value)
{
    char tmp[20];
    char *p = tmp + sizeof tmp;
    do {
        *--p = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0);
    out.append(p, static_cast<size_t>(tmp + sizeof tmp - p));
}

}  // namespace channels
