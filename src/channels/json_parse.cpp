// Strict JSON (RFC 8259) into a flat node array: recursive descent, bounded depth.
#include "channels/json_parse.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "channels/json.h"

namespace channels {

std::string_view JsonDoc::Ref::string() const
{
    const Node &n = node();
    return {doc_->strings_.data() + n.str_at, n.str_len};
}

JsonDoc::Ref JsonDoc::Ref::get(std::string_view key) const
{
    Ref found;
    each_member([&](std::string_view k, Ref value) {
        if (found.absent() && k == key) found = value;
    });
    return found;
}

class JsonParser {
public:
    JsonParser(JsonDoc &doc, std::string_view text, JsonLimits limits)
        : doc_(doc), p_(text.data()), begin_(text.data()), end_(text.data() + text.size()),
          limits_(limits) {}

    bool run()
    {
        skip_space();
        if (!value(0)) return false;
        skip_space();
        if (p_ != end_) return fail("unexpected text after the value");
        return true;
    }

private:
    bool fail(const char *what)
    {
        if (doc_.error_.empty()) {
            doc_.error_ = what;
            doc_.error_ += " at byte ";
            append_uint(doc_.error_, uint64_t(p_ - begin_));
        }
        return false;
    }

    void skip_space()
    {
        while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) p_++;
    }

    bool literal(std::string_view word)
    {
        if (size_t(end_ - p_) < word.size() || std::memcmp(p_, word.data(), word.size()) != 0) {
            return fail("invalid literal");
        }
        p_ += word.size();
        return true;
    }

    // Appends a node and returns its index (or -1 past the node limit).
    long push(JsonType type)
    {
        if (doc_.nodes_.size() >= limits_.max_nodes) return -1;
        doc_.nodes_.emplace_back();
        doc_.nodes_.back().type = type;
        return long(doc_.nodes_.size() - 1);
    }

    bool value(size_t depth)
    {
        if (p_ == end_) return fail("unexpected end of text");
        switch (*p_) {
        case '{': return container(JsonType::object, depth);
        case '[': return container(JsonType::array, depth);
        case '"': return string_node();
        case 't': case 'f': case 'n': {
            JsonType type = *p_ == 'n' ? JsonType::null : JsonType::boolean;
            bool truth = *p_ == 't';
            if (!literal(truth ? "true" : *p_ == 'f' ? "false" : "null")) return false;
            long i = push(type);
            if (i < 0) return fail("too many values");
            doc_.nodes_[size_t(i)].boolean = truth;
            doc_.nodes_[size_t(i)].end = uint32_t(i + 1);
            return true;
        }
        default:
            if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) return number();
            return fail("unexpected character");
        }
    }

    bool container(JsonType type, size_t depth)
    {
        if (depth >= limits_.max_depth) return fail("nested too deeply");
        long self = push(type);
        if (self < 0) return fail("too many values");
        p_++;   // '{' or '['
        char close = type == JsonType::object ? '}' : ']';
        uint32_t count = 0;
        skip_space();
        if (p_ < end_ && *p_ == close) {
            p_++;
        } else {
            for (;;) {
                skip_space();
                if (type == JsonType::object) {
                    if (p_ == end_ || *p_ != '"') return fail("expected a key");
                    if (!string_node()) return false;
                    skip_space();
                    if (p_ == end_ || *p_ != ':') return fail("expected ':'");
                    p_++;
                    skip_space();
                }
                if (!value(depth + 1)) return false;
                count++;
                skip_space();
                if (p_ == end_) return fail("unexpected end of text");
                if (*p_ == ',') {
                    p_++;
                    continue;
                }
                if (*p_ != close) return fail("expected ',' or a closing bracket");
                p_++;
                break;
            }
        }
        JsonDoc::Node &n = doc_.nodes_[size_t(self)];
        n.count = count;
        n.end = uint32_t(doc_.nodes_.size());
        if (type == JsonType::object && has_duplicate_key(uint32_t(self))) {
            return fail("duplicate key");
        }
        return true;
    }

    bool has_duplicate_key(uint32_t object) const
    {
        const auto &nodes = doc_.nodes_;
        std::vector<std::string_view> keys;
        keys.reserve(nodes[object].count);
        uint32_t k = object + 1;
        for (uint32_t n = 0; n < nodes[object].count; n++) {
            keys.emplace_back(doc_.strings_.data() + nodes[k].str_at, nodes[k].str_len);
            k = nodes[k + 1].end;
        }
        std::sort(keys.begin(), keys.end());
        return std::adjacent_find(keys.begin(), keys.end()) != keys.end();
    }

    static int hex(char c)
    {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }

    // Reads the 4 hex digits after "\u"; -1 when malformed.
    long hex4()
    {
        if (end_ - p_ < 4) return -1;
        long v = 0;
        for (int i = 0; i < 4; i++) {
            int d = hex(p_[i]);
            if (d < 0) return -1;
            v = v * 16 + d;
        }
        p_ += 4;
        return v;
    }

    void put_utf8(uint32_t cp)
    {
        std::string &s = doc_.strings_;
        if (cp < 0x80) {
            s += char(cp);
        } else if (cp < 0x800) {
            s += char(0xC0 | cp >> 6);
            s += char(0x80 | (cp & 63));
        } else if (cp < 0x10000) {
            s += char(0xE0 | cp >> 12);
            s += char(0x80 | ((cp >> 6) & 63));
            s += char(0x80 | (cp & 63));
        } else {
            s += char(0xF0 | cp >> 18);
            s += char(0x80 | ((cp >> 12) & 63));
            s += char(0x80 | ((cp >> 6) & 63));
            s += char(0x80 | (cp & 63));
        }
    }

    bool escape()
    {
        if (p_ == end_) return fail("unexpected end of text");
        static constexpr char kEscaped[] = "\"\\/bfnrt";
        static constexpr char kDecoded[] = "\"\\/\b\f\n\r\t";
        char c = *p_++;
        const char *simple = c == 0 ? nullptr : std::strchr(kEscaped, c);
        if (simple != nullptr) {
            doc_.strings_ += kDecoded[simple - kEscaped];
            return true;
        }
        if (c != 'u') return fail("invalid escape");
        long cp = hex4();
        if (cp < 0) return fail("invalid \\u escape");
        if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone low surrogate");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return fail("lone high surrogate");
            p_ += 2;
            long low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) return fail("lone high surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        put_utf8(uint32_t(cp));
        return true;
    }

    bool string_node()
    {
        long self = push(JsonType::string);
        if (self < 0) return fail("too many values");
        p_++;   // '"'
        size_t at = doc_.strings_.size();
        for (;;) {
            const char *run = p_;
            while (p_ < end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) p_++;
            doc_.strings_.append(run, size_t(p_ - run));
            if (p_ == end_) return fail("unterminated string");
            if (*p_ == '"') break;
            if (*p_ != '\\') return fail("control character in a string");
            p_++;
            if (!escape()) return false;
        }
        p_++;
        JsonDoc::Node &n = doc_.nodes_[size_t(self)];
        n.str_at = uint32_t(at);
        n.str_len = uint32_t(doc_.strings_.size() - at);
        n.end = uint32_t(self + 1);
        return true;
    }

    bool digits()
    {
        const char *start = p_;
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9') p_++;
        return p_ != start;
    }

    bool number()
    {
        const char *start = p_;
        bool negative = *p_ == '-';
        if (negative) p_++;
        if (p_ == end_) return fail("invalid number");
        if (*p_ == '0') {
            p_++;
        } else if (!digits()) {
            return fail("invalid number");
        }
        size_t int_digits = size_t(p_ - start) - (negative ? 1 : 0);
        bool integer = true;
        if (p_ < end_ && *p_ == '.') {
            p_++;
            if (!digits()) return fail("invalid number");
            integer = false;
        }
        if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
            p_++;
            if (p_ < end_ && (*p_ == '+' || *p_ == '-')) p_++;
            if (!digits()) return fail("invalid number");
            integer = false;
        }
        double v = 0;
        auto res = std::from_chars(start, p_, v);
        if (res.ec != std::errc() || res.ptr != p_) return fail("number out of range");
        long self = push(JsonType::number);
        if (self < 0) return fail("too many values");
        JsonDoc::Node &n = doc_.nodes_[size_t(self)];
        n.number = v;
        n.end = uint32_t(self + 1);
        if (integer && int_digits <= 18) {
            int64_t iv = 0;
            for (const char *d = start + (negative ? 1 : 0); d < p_; d++) iv = iv * 10 + (*d - '0');
            n.integer = true;
            n.int_value = negative ? -iv : iv;
        }
        return true;
    }

    JsonDoc &doc_;
    const char *p_, *begin_, *end_;
    JsonLimits limits_;
};

bool JsonDoc::parse(std::string_view text, JsonLimits limits)
{
    nodes_.clear();
    strings_.clear();
    error_.clear();
    bool ok;
    if (text.size() >= UINT32_MAX / 2) {
        error_ = "text too long";
        ok = false;
    } else if (!is_valid_utf8(text)) {
        error_ = "not UTF-8";
        ok = false;
    } else {
        ok = JsonParser(*this, text, limits).run();
    }
    if (!ok) nodes_.clear();
    return ok;
}

}  // namespace channels
