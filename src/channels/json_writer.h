// A small JSON writer: objects, arrays, strings (escaped), numbers, ids, base64, booleans
// and null, with commas placed for the caller. Pure logic, no nginx.
//
// It writes into a Sink: SizeSink only counts, BufferSink writes into memory the caller
// sized with a SizeSink pass, StringSink appends to a std::string. Writing an answer twice
// (count, then write) builds it in one exact allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "channels/ids.h"

namespace channels {

class SizeSink {
public:
    void put(std::string_view s) { n_ += s.size(); }
    void put(char) { n_++; }
    void add(size_t n) { n_ += n; }
    size_t size() const { return n_; }

private:
    size_t n_ = 0;
};

class BufferSink {
public:
    explicit BufferSink(char *out) : p_(out) {}
    void put(std::string_view s) {
        if (!s.empty()) std::memcpy(p_, s.data(), s.size());
        p_ += s.size();
    }
    void put(char c) { *p_++ = c; }
    char *end() const { return p_; }

private:
    char *p_;
};

// Counts what would be written, where a writer may count some parts as a guess (a lower
// bound) rather than exactly: see frame_build_guessed().
class GuessSink : public SizeSink {};

// Writes into exactly `size` bytes: filled() when the writes took them all and no more (a
// write that does not fit is dropped and marks the sink overflowed).
class BoundedSink {
public:
    BoundedSink(char *out, size_t size) : p_(out), end_(out + size) {}
    void put(std::string_view s) {
        if (size_t(end_ - p_) < s.size()) {
            over_ = true;
            return;
        }
        if (!s.empty()) std::memcpy(p_, s.data(), s.size());
        p_ += s.size();
    }
    void put(char c) {
        if (p_ == end_) {
            over_ = true;
            return;
        }
        *p_++ = c;
    }
    bool filled() const { return !over_ && p_ == end_; }

private:
    char *p_, *end_;
    bool over_ = false;
};

class StringSink {
public:
    explicit StringSink(std::string &out) : out_(out) {}
    void put(std::string_view s) { out_.append(s.data(), s.size()); }
    void put(char c) { out_.push_back(c); }

private:
    std::string &out_;
};

namespace json_detail {

// For each byte: 0 when it is copied as is, else the letter after the backslash ('u'
// meaning \u00XX). Built at compile time (no global constructor).
struct Escapes {
    char esc[256] = {};
    constexpr Escapes() {
        for (int c = 0; c < 0x20; c++) esc[c] = 'u';
        const char pairs[][2] = {{'\b', 'b'}, {'\f', 'f'}, {'\n', 'n'}, {'\r', 'r'},
                                 {'\t', 't'}, {'"', '"'},  {'\\', '\\'}};
        for (const auto &pr : pairs) esc[static_cast<unsigned char>(pr[0])] = pr[1];
    }
};
inline constexpr Escapes kEscapes;
inline constexpr char kHex[] = "0123456789abcdef";
inline constexpr char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace json_detail

// s as a quoted JSON string: '"' and '\\' escaped, control characters below 0x20 as
// \n \r \t \b \f or \u00XX, every other byte copied (valid UTF-8 passes through; callers
// base64 anything that is not valid UTF-8).
template <typename Sink>
void put_json_string(Sink &sink, std::string_view s) {
    sink.put('"');
    size_t run = 0;   // start of the pending run of bytes copied as they are
    for (size_t i = 0; i < s.size(); i++) {
        auto c = static_cast<unsigned char>(s[i]);
        char e = json_detail::kEscapes.esc[c];
        if (e == 0) continue;
        sink.put(s.substr(run, i - run));
        if (e == 'u') {
            const char six[6] = {'\\', 'u', '0', '0', json_detail::kHex[c >> 4], json_detail::kHex[c & 15]};
            sink.put(std::string_view(six, 6));
        } else {
            const char two[2] = {'\\', e};
            sink.put(std::string_view(two, 2));
        }
        run = i + 1;
    }
    sink.put(s.substr(run));
    sink.put('"');
}

// Standard base64 (RFC 4648, '=' padding), unquoted.
template <typename Sink>
void put_base64(Sink &sink, std::string_view bytes) {
    using json_detail::kBase64;
    const auto *p = reinterpret_cast<const unsigned char *>(bytes.data());
    size_t full = bytes.size() / 3, rest = bytes.size() % 3;
    char quad[4];
    for (size_t i = 0; i < full; i++, p += 3) {
        uint32_t v = uint32_t{p[0]} << 16 | uint32_t{p[1]} << 8 | p[2];
        quad[0] = kBase64[v >> 18];
        quad[1] = kBase64[(v >> 12) & 63];
        quad[2] = kBase64[(v >> 6) & 63];
        quad[3] = kBase64[v & 63];
        sink.put(std::string_view(quad, 4));
    }
    if (rest == 0) return;
    uint32_t v = uint32_t{p[0]} << 16 | (rest == 2 ? uint32_t{p[1]} << 8 : 0);
    quad[0] = kBase64[v >> 18];
    quad[1] = kBase64[(v >> 12) & 63];
    quad[2] = rest == 2 ? kBase64[(v >> 6) & 63] : '=';
    quad[3] = '=';
    sink.put(std::string_view(quad, 4));
}

template <typename Sink>
void put_uint(Sink &sink, uint64_t value) {
    char tmp[20];
    char *p = tmp + sizeof tmp;
    do {
        *--p = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0);
    sink.put(std::string_view(p, static_cast<size_t>(tmp + sizeof tmp - p)));
}

template <typename Sink>
class JsonWriter {
public:
    explicit JsonWriter(Sink &sink) : sink_(sink) {}

    JsonWriter &open_object() { return open('{'); }
    JsonWriter &close_object() { return close('}'); }
    JsonWriter &open_array() { return open('['); }
    JsonWriter &close_array() { return close(']'); }

    // A member name; the next call writes its value.
    JsonWriter &key(std::string_view name) {
        separate();
        put_json_string(sink_, name);
        sink_.put(':');
        after_key_ = true;
        return *this;
    }
    JsonWriter &string(std::string_view s) {
        separate();
        put_json_string(sink_, s);
        return *this;
    }
    JsonWriter &number(uint64_t v) {
        separate();
        put_uint(sink_, v);
        return *this;
    }
    JsonWriter &boolean(bool v) {
        separate();
        sink_.put(v ? std::string_view("true") : std::string_view("false"));
        return *this;
    }
    JsonWriter &null() {
        separate();
        sink_.put(std::string_view("null"));
        return *this;
    }
    // A message id as a string, or null for the zero id (nothing there).
    JsonWriter &id(MessageId v) {
        if (v == MessageId{}) return null();
        separate();
        char text[kMaxIdText];
        sink_.put('"');
        sink_.put(std::string_view(text, format_id(v, text)));
        sink_.put('"');
        return *this;
    }
    JsonWriter &base64(std::string_view bytes) {
        separate();
        sink_.put('"');
        put_base64(sink_, bytes);
        sink_.put('"');
        return *this;
    }
    // Bytes outside the JSON value (a final newline).
    JsonWriter &raw(std::string_view s) {
        sink_.put(s);
        return *this;
    }

private:
    static constexpr int kMaxDepth = 16;

    JsonWriter &open(char c) {
        separate();
        sink_.put(c);
        if (depth_ < kMaxDepth - 1) first_[++depth_] = true;
        return *this;
    }
    JsonWriter &close(char c) {
        sink_.put(c);
        if (depth_ > 0) depth_--;
        return *this;
    }
    // A comma before every member or element but the first.
    void separate() {
        if (after_key_) {
            after_key_ = false;
            return;
        }
        if (!first_[depth_]) sink_.put(',');
        first_[depth_] = false;
    }

    Sink &sink_;
    bool first_[kMaxDepth] = {true};
    int depth_ = 0;
    bool after_key_ = false;
};

}  // namespace channels
