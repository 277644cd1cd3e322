// Independent reference code for the JSON/UTF-8/base64 tests and fuzz targets: a strict
// JSON string-literal decoder (RFC 8259 §7), a code-point-based UTF-8 validator (a
// different method from the byte-range table in json.cpp, so they check each other),
// a UTF-8 encoder for generators, and a strict base64 decoder (RFC 4648 §4).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace json_test {

inline void encode_utf8(uint32_t cp, std::string &out)
{
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

// Decodes one code point at s[i], advancing i; nullopt when ill-formed. Decodes the
// value first, then rejects overlongs, surrogates and values above U+10FFFF.
inline std::optional<uint32_t> decode_utf8(std::string_view s, size_t &i)
{
    auto b = static_cast<unsigned char>(s[i]);
    size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return std::nullopt;
    uint32_t cp = len == 1 ? b : b & (0x7F >> len);
    for (size_t k = 1; k < len; k++) {
        auto c = static_cast<unsigned char>(s[i + k]);
        if ((c & 0xC0) != 0x80) return std::nullopt;
        cp = cp << 6 | (c & 0x3F);
    }
    static const uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return std::nullopt;
    }
    i += len;
    return cp;
}

inline bool reference_valid_utf8(std::string_view s)
{
    for (size_t i = 0; i < s.size();) {
        if (!decode_utf8(s, i)) return false;
    }
    return true;
}

inline int hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

inline std::optional<uint32_t> read_u4(std::string_view s, size_t &i)
{
    if (i + 4 > s.size()) return std::nullopt;
    uint32_t v = 0;
    for (size_t k = 0; k < 4; k++) {
        int h = hex(s[i + k]);
        if (h < 0) return std::nullopt;
        v = v << 4 | static_cast<uint32_t>(h);
    }
    i += 4;
    return v;
}

// \uXXXX (after the "\u"), combining a surrogate pair; lone surrogates are refused
// because they cannot come back as UTF-8.
inline bool read_unicode_escape(std::string_view s, size_t &i, std::string &out)
{
    auto hi = read_u4(s, i);
    if (!hi || (*hi >= 0xDC00 && *hi <= 0xDFFF)) return false;
    if (*hi < 0xD800 || *hi > 0xDBFF) {
        encode_utf8(*hi, out);
        return true;
    }
    if (s.substr(i, 2) != "\\u") return false;
    i += 2;
    auto lo = read_u4(s, i);
    if (!lo || *lo < 0xDC00 || *lo > 0xDFFF) return false;
    encode_utf8(0x10000 + ((*hi - 0xD800) << 10) + (*lo - 0xDC00), out);
    return true;
}

inline bool read_escape(std::string_view s, size_t &i, std::string &out)
{
    if (i >= s.size()) return false;
    char e = s[i++];
    switch (e) {
    case '"': case '\\': case '/': out.push_back(e); return true;
    case 'b': out.push_back('\b'); return true;
    case 'f': out.push_back('\f'); return true;
    case 'n': out.push_back('\n'); return true;
    case 'r': out.push_back('\r'); return true;
    case 't': out.push_back('\t'); return true;
    case 'u': return read_unicode_escape(s, i, out);
    default: return false;
    }
}

// The whole of text must be one JSON string literal in valid UTF-8; returns its value.
inline std::optional<std::string> decode_json_string(std::string_view text)
{
    if (!reference_valid_utf8(text) || text.size() < 2 || text[0] != '"') return std::nullopt;
    std::string out;
    size_t i = 1;
    while (i < text.size()) {
        char c = text[i++];
        if (c == '"') return i == text.size() ? std::optional<std::string>(out) : std::nullopt;
        if (static_cast<unsigned char>(c) < 0x20) return std::nullopt;
        if (c != '\\') {
            out.push_back(c);
        } else if (!read_escape(text, i, out)) {
            return std::nullopt;
        }
    }
    return std::nullopt;  // no closing quote
}

inline int base64_value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// Strict: whole quads, '=' only as padding at the end, unused bits zero.
inline std::optional<std::string> decode_base64(std::string_view s)
{
    if (s.size() % 4 != 0) return std::nullopt;
    std::string out;
    for (size_t q = 0; q < s.size(); q += 4) {
        bool last = q + 4 == s.size();
        size_t pad = last ? (s[q + 3] == '=') + (s[q + 2] == '=' && s[q + 3] == '=') : 0;
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            int d = k >= 4 - pad ? 0 : base64_value(s[q + k]);
            if (d < 0) return std::nullopt;
            v = v << 6 | static_cast<uint32_t>(d);
        }
        if ((pad == 1 && (v & 0xFF)) || (pad == 2 && (v & 0xFFFF))) return std::nullopt;
        out.push_back(static_cast<char>(v >> 16));
        if (pad < 2) out.push_back(static_cast<char>(v >> 8));
        if (pad < 1) out.push_back(static_cast<char>(v));
    }
    return out;
}

}  // namespace json_test
