// A small event-stream parser written from the WHATWG HTML standard's "Interpreting an
// event stream" section, used by the unit tests and the fuzz targets to check that what
// we frame is what a browser's EventSource would dispatch. Works on bytes (the browser
// decodes UTF-8 first; our framing never splits or alters multi-byte sequences).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sse_test {

struct Event {
    std::string type;           // "message" when no event: field was given
    std::string data;
    std::string last_event_id;  // the source's last event ID when it was dispatched
};

struct Stream {
    std::vector<Event> events;
    std::string last_event_id;       // the source's last event ID at the end
    std::optional<uint64_t> retry;   // last valid retry: value
    size_t comments = 0;             // lines starting with ':'
    std::vector<std::string> comment_texts;
    std::string unterminated;        // bytes after the last line break (discarded)
    bool pending_fields = false;     // fields seen since the last blank line (discarded at end)
};

class Parser {
public:
    Stream parse(std::string_view s)
    {
        if (s.substr(0, 3) == "\xEF\xBB\xBF") s.remove_prefix(3);  // one leading BOM
        size_t pos = 0;
        for (;;) {
            size_t br = s.find_first_of("\r\n", pos);
            if (br == std::string_view::npos) break;
            line(s.substr(pos, br - pos));
            pos = br + 1;
            if (s[br] == '\r' && pos < s.size() && s[pos] == '\n') pos++;
        }
        out_.unterminated = std::string(s.substr(pos));
        out_.pending_fields = pending_;
        return out_;
    }

private:
    void line(std::string_view l)
    {
        if (l.empty()) return dispatch();
        if (l[0] == ':') {
            out_.comments++;
            out_.comment_texts.emplace_back(l.substr(1));
            return;
        }
        size_t colon = l.find(':');
        std::string_view name = l.substr(0, colon), value;
        if (colon != std::string_view::npos) {
            value = l.substr(colon + 1);
            if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
        }
        field(name, value);
    }

    void field(std::string_view name, std::string_view value)
    {
        pending_ = true;
        if (name == "event") {
            type_ = std::string(value);
        } else if (name == "data") {
            data_.append(value);
            data_.push_back('\n');
        } else if (name == "id") {
            if (value.find('\0') == std::string_view::npos) id_buf_ = std::string(value);
        } else if (name == "retry") {
            set_retry(value);
        }
    }

    void set_retry(std::string_view v)
    {
        if (v.empty() || v.find_first_not_of("0123456789") != std::string_view::npos) return;
        uint64_t n = 0;
        for (char c : v) n = n * 10 + static_cast<uint64_t>(c - '0');
        out_.retry = n;
    }

    void dispatch()
    {
        pending_ = false;
        out_.last_event_id = id_buf_;
        if (data_.empty()) {
            type_.clear();
            return;
        }
        if (data_.back() == '\n') data_.pop_back();
        out_.events.push_back(Event{type_.empty() ? "message" : type_, data_, id_buf_});
        data_.clear();
        type_.clear();
    }

    Stream out_;
    std::string data_, type_, id_buf_;
    bool pending_ = false;
};

inline Stream parse(std::string_view s) { return Parser().parse(s); }

// What a client receives for data: CRLF and lone CR become LF.
inline std::string normalize_breaks(std::string_view s)
{
    std::string r;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\r') {
            r.push_back('\n');
            if (i + 1 < s.size() && s[i + 1] == '\n') i++;
        } else {
            r.push_back(s[i]);
        }
    }
    return r;
}

}  // namespace sse_test
