// base64url (RFC 4648 §5) without padding, decoded strictly.
#include "channels/base64url.h"

#include <cstdint>

namespace channels {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// 6-bit value of each byte, or 64 for bytes outside the alphabet. Built at compile time.
struct DecodeTable {
    uint8_t value[256] = {};

    constexpr DecodeTable()
    {
        for (auto &v : value) v = 64;
        for (int i = 0; i < 64; i++) value[static_cast<unsigned char>(kAlphabet[i])] = uint8_t(i);
    }
};

constexpr DecodeTable kDecode;

}  // namespace

bool base64url_decode(std::string_view in, std::string &out)
{
    size_t rest = in.size() % 4;
    if (rest == 1) return false;
    size_t at = out.size();
    out.resize(at + in.size() / 4 * 3 + (rest ? rest - 1 : 0));
    char *w = &out[0] + at;
    const auto *p = reinterpret_cast<const unsigned char *>(in.data());
    size_t full = in.size() / 4;
    for (size_t i = 0; i < full; i++, p += 4) {
        uint32_t a = kDecode.value[p[0]], b = kDecode.value[p[1]];
        uint32_t c = kDecode.value[p[2]], d = kDecode.value[p[3]];
        if ((a | b | c | d) & 64) return false;
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        *w++ = char(v >> 16);
        *w++ = char(v >> 8);
        *w++ = char(v);
    }
    if (rest == 0) return true;
    uint32_t a = kDecode.value[p[0]], b = kDecode.value[p[1]];
    uint32_t c = rest == 3 ? kDecode.value[p[2]] : 0;
    if ((a | b | c) & 64) return false;
    uint32_t v = a << 18 | b << 12 | c << 6;
    // Bits past the last whole byte must be zero: "AB" and "AC" may not both mean 0x00.
    if (rest == 2 ? (v & 0xFFFF) != 0 : (v & 0xFF) != 0) return false;
    *w++ = char(v >> 16);
    if (rest == 3) *w++ = char(v >> 8);
    return true;
}

void append_base64url(std::string &out, std::string_view bytes)
{
    size_t full = bytes.size() / 3, rest = bytes.size() % 3;
    size_t at = out.size();
    out.resize(at + full * 4 + (rest ? rest + 1 : 0));
    char *w = &out[0] + at;
    const auto *p = reinterpret_cast<const unsigned char *>(bytes.data());
    for (size_t i = 0; i < full; i++, p += 3) {
        uint32_t v = uint32_t{p[0]} << 16 | uint32_t{p[1]} << 8 | p[2];
        *w++ = kAlphabet[v >> 18];
        *w++ = kAlphabet[(v >> 12) & 63];
        *w++ = kAlphabet[(v >> 6) & 63];
        *w++ = kAlphabet[v & 63];
    }
    if (rest == 0) return;
    uint32_t v = uint32_t{p[0]} << 16 | (rest == 2 ? uint32_t{p[1]} << 8 : 0);
    *w++ = kAlphabet[v >> 18];
    *w++ = kAlphabet[(v >> 12) & 63];
    if (rest == 2) *w++ = kAlphabet[(v >> 6) & 63];
}

}  // namespace channels
