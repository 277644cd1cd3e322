// Shared pieces of the load generator: clocks, a latency histogram, the
// payload every published message carries, and small HTTP/SSE helpers.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

namespace lg {

// One clock for every process of a run: CLOCK_MONOTONIC is system-wide, so a
// timestamp written by the publisher can be subtracted in a subscriber child.
inline int64_t now_us() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

[[noreturn]] inline void die(const char *what) {
    std::fprintf(stderr, "loadgen: %s: %s\n", what, std::strerror(errno));
    std::exit(2);
}

// Log-linear histogram of microsecond values: exact below 1024 us, then 128
// sub-buckets per power of two (< 1% error). Mergeable by bucket index.
struct Hist {
    static constexpr int kLinear = 1024;
    static constexpr int kSub = 128;
    static constexpr int kMaxMsb = 46;
    std::vector<uint64_t> b = std::vector<uint64_t>(kLinear + (kMaxMsb - 9) * kSub, 0);
    uint64_t n = 0;

    static size_t index(int64_t v) {
        if (v < 0) v = 0;
        if (v < kLinear) return size_t(v);
        int msb = 63 - __builtin_clzll(uint64_t(v));
        if (msb > kMaxMsb) { msb = kMaxMsb; v = (int64_t(1) << (kMaxMsb + 1)) - 1; }
        return kLinear + size_t(msb - 10) * kSub + size_t((v >> (msb - 7)) & (kSub - 1));
    }
    static int64_t value(size_t i) {
        if (i < size_t(kLinear)) return int64_t(i);
        size_t k = i - kLinear;
        int msb = int(k / kSub) + 10;
        int64_t m = int64_t(k % kSub) | kSub;
        return (m << (msb - 7)) + ((int64_t(1) << (msb - 7)) >> 1);
    }
    void add(int64_t v) { b[index(v)]++; n++; }
    void add_bucket(size_t i, uint64_t c) {
        if (i < b.size()) { b[i] += c; n += c; }
    }
    // p in [0,1]; -1 when empty.
    int64_t pct(double p) const {
        if (n == 0) return -1;
        uint64_t want = uint64_t(p * double(n));
        if (want >= n) want = n - 1;
        uint64_t acc = 0;
        for (size_t i = 0; i < b.size(); i++) {
            acc += b[i];
            if (acc > want) return value(i);
        }
        return value(b.size() - 1);
    }
};

// Payload: "M<src>.<seq>.<ts_us>." then, when the message is addressed to one of
// many channels, "c<channel index>.", padded with 'x' to the requested size.
// src = publisher connection, seq = run-wide sequence number, ts = now_us()
// just before the request is written.
struct Msg {
    uint32_t src = 0;
    uint64_t seq = 0;
    int64_t ts = 0;
    int64_t chan = -1;  // channel index, -1 when not given
};

inline std::string make_payload(const Msg &m, size_t size) {
    char head[100];
    int n = std::snprintf(head, sizeof head, "M%u.%llu.%lld.", m.src,
                          (unsigned long long)m.seq, (long long)m.ts);
    if (m.chan >= 0)
        n += std::snprintf(head + n, sizeof head - size_t(n), "c%lld.", (long long)m.chan);
    std::string s(head, size_t(n));
    if (s.size() < size) s.append(size - s.size(), 'x');
    return s;
}

// Name of channel `index` of a run: BASE-INDEX, the index zero-padded so that the
// whole id is `width` bytes when width is given (e.g. 16-byte ids).
inline std::string chan_name(const std::string &base, uint64_t index, int width) {
    std::string num = std::to_string(index);
    std::string s = base + "-";
    if (width > 0 && s.size() + num.size() < size_t(width)) s.append(size_t(width) - s.size() - num.size(), '0');
    return s + num;
}

inline bool parse_u64(const char *&p, const char *end, uint64_t &out) {
    const char *start = p;
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + uint64_t(*p++ - '0');
    out = v;
    return p != start;
}

// Parses a payload starting at p. Returns false on anything else.
inline bool parse_payload(const char *p, const char *end, Msg &m) {
    if (p >= end || *p != 'M') return false;
    p++;
    uint64_t a, b, c;
    if (!parse_u64(p, end, a) || p >= end || *p++ != '.') return false;
    if (!parse_u64(p, end, b) || p >= end || *p++ != '.') return false;
    if (!parse_u64(p, end, c) || p >= end || *p != '.') return false;
    m.src = uint32_t(a);
    m.seq = b;
    m.ts = int64_t(c);
    m.chan = -1;
    uint64_t ch;
    if (end - p > 2 && p[1] == 'c') {
        p += 2;
        if (parse_u64(p, end, ch) && p < end && *p == '.') m.chan = int64_t(ch);
    }
    return true;
}

// An event id as two numbers: ours "1732290000123-0", nchan "1795394983:0"
// (or "1795394983:[0]"), the ceiling "17-0". Anything else: false, e.g. nchan's
// multiplexed ids ("1795394983:0,[1],-": one tag per channel, not one order).
inline bool parse_event_id(std::string_view s, uint64_t &hi, uint64_t &lo) {
    if (s.find(',') != std::string_view::npos) return false;
    const char *p = s.data(), *end = p + s.size();
    if (!parse_u64(p, end, hi)) return false;
    while (p < end && (*p < '0' || *p > '9')) p++;
    if (!parse_u64(p, end, lo)) lo = 0;
    return true;
}

inline bool ieq_prefix(std::string_view line, std::string_view name) {
    if (line.size() < name.size()) return false;
    for (size_t i = 0; i < name.size(); i++) {
        char a = line[i], b = name[i];
        if (a >= 'A' && a <= 'Z') a = char(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = char(b - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

inline std::string_view trim(std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t' || v.back() == '\r')) v.remove_suffix(1);
    return v;
}

// The parts of an HTTP response head the load generator cares about.
struct RespHead {
    int status = 0;
    bool chunked = false;
    bool close = false;
    int64_t content_length = -1;
    std::string last_event_id, last_modified, etag;
};

// head = bytes before the blank line (status line + header lines).
inline bool parse_resp_head(std::string_view head, RespHead &h) {
    h = RespHead{};
    size_t eol = head.find("\r\n");
    std::string_view status_line = head.substr(0, eol);
    if (status_line.size() < 12 || status_line.substr(0, 5) != "HTTP/") return false;
    size_t sp = status_line.find(' ');
    if (sp == std::string_view::npos) return false;
    h.status = std::atoi(std::string(status_line.substr(sp + 1, 3)).c_str());
    if (status_line.substr(0, 8) == "HTTP/1.0") h.close = true;
    size_t pos = eol == std::string_view::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
        size_t e = head.find("\r\n", pos);
        if (e == std::string_view::npos) e = head.size();
        std::string_view line = head.substr(pos, e - pos);
        pos = e + 2;
        size_t colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        std::string_view name = line.substr(0, colon), val = trim(line.substr(colon + 1));
        auto is = [&](std::string_view n) { return name.size() == n.size() && ieq_prefix(name, n); };
        if (is("transfer-encoding")) h.chunked = ieq_prefix(val, "chunked");
        else if (is("content-length")) h.content_length = std::atoll(std::string(val).c_str());
        else if (is("connection")) { if (ieq_prefix(val, "close")) h.close = true; }
        else if (is("last-event-id")) h.last_event_id = std::string(val);
        else if (is("last-modified")) h.last_modified = std::string(val);
        else if (is("etag")) h.etag = std::string(val);
    }
    return h.status > 0;
}

// Incremental HTTP/1.1 body framing: Content-Length, chunked, or until close.
// feed() hands decoded body bytes to `sink` and reports when the body is done.
struct BodyDecoder {
    enum class St : uint8_t { Size, Data, DataCrlf, Trailer, Length, UntilClose, Done };
    St st = St::Done;
    uint64_t left = 0;
    std::string line;  // partial chunk-size / trailer line

    void start(const RespHead &h, bool no_body) {
        line.clear();
        if (no_body) st = St::Done;
        else if (h.chunked) st = St::Size;
        else if (h.content_length >= 0) { left = uint64_t(h.content_length); st = left ? St::Length : St::Done; }
        else st = St::UntilClose;
    }
    bool done() const { return st == St::Done; }

    // Returns bytes consumed (stops right after the body ends); -1 on a framing error.
    template <class Sink>
    ssize_t feed(const char *p, size_t n, Sink &&sink) {
        size_t i = 0;
        while (i < n && st != St::Done) {
            switch (st) {
            case St::Length: {
                size_t k = size_t(std::min<uint64_t>(left, n - i));
                sink(p + i, k);
                i += k;
                left -= k;
                if (left == 0) st = St::Done;
                break;
            }
            case St::UntilClose:
                sink(p + i, n - i);
                i = n;
                break;
            case St::Data: {
                size_t k = size_t(std::min<uint64_t>(left, n - i));
                sink(p + i, k);
                i += k;
                left -= k;
                if (left == 0) st = St::DataCrlf;
                break;
            }
            case St::DataCrlf:
                if (p[i] == '\n') st = St::Size;
                else if (p[i] != '\r') return -1;
                i++;
                break;
            case St::Size:
            case St::Trailer: {
                char c = p[i++];
                if (c != '\n') {
                    if (line.size() > 256) return -1;
                    line.push_back(c);
                    break;
                }
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (st == St::Trailer) {
                    if (line.empty()) st = St::Done;
                    line.clear();
                    break;
                }
                char *endp = nullptr;
                unsigned long long sz = std::strtoull(line.c_str(), &endp, 16);
                if (endp == line.c_str()) return -1;
                line.clear();
                if (sz == 0) st = St::Trailer;
                else { left = sz; st = St::Data; }
                break;
            }
            case St::Done:
                break;
            }
        }
        return ssize_t(i);
    }
};

// Splits a pipe's byte stream into lines.
struct LineBuf {
    std::string buf;
    template <class F>
    void feed(const char *p, size_t n, F &&on_line) {
        buf.append(p, n);
        size_t start = 0;
        for (;;) {
            size_t e = buf.find('\n', start);
            if (e == std::string::npos) break;
            on_line(std::string_view(buf.data() + start, e - start));
            start = e + 1;
        }
        buf.erase(0, start);
    }
};

// Writes all of s to a blocking fd.
inline void write_all(int fd, const std::string &s) {
    size_t off = 0;
    while (off < s.size()) {
        ssize_t w = ::write(fd, s.data() + off, s.size() - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        off += size_t(w);
    }
}

sockaddr_in make_addr(const char *ip, uint16_t port);

// ----- process roles ----------------------------------------------------------

enum class SubKind : uint8_t { Sse, LongPoll };
enum class Server : uint8_t { Ours, Nchan, Ceiling };

struct SubConfig {
    SubKind kind = SubKind::Sse;
    Server server = Server::Ours;
    std::string host = "127.0.0.1";
    uint16_t port = 0;
    std::string path;         // request path, e.g. /sub/b
    // Many channels per connection: connection g (counted over all children, from
    // first_conn) names channels g*chan_per_sub .. +chan_per_sub-1, comma-separated
    // after `path` (e.g. /msub?ch=). Each message then goes to one channel, so to one
    // connection: children report every first delivery ("D"), not "all have it".
    int chan_per_sub = 0;
    uint64_t first_conn = 0;
    std::string chan_base;
    int id_width = 0;
    std::string cursor;       // Last-Event-ID of the first request ("" = none)
    std::string save_body;    // connection 0 of child 0 writes its decoded body here
    std::string src_ip;       // local address to connect from ("" = any)
    int count = 0;            // connections of this child
    int child = 0;
    int window = 200;         // connections being set up at once
    int64_t setup_timeout_us = 20000000;
    uint64_t phase_split = 0; // seq < split: burst phase histogram
    int ctl_fd = -1;          // EOF here = finish and report
    int out_fd = -1;          // lines to the parent
};

// Child main loops; both return the exit status.
int run_subscriber_child(const SubConfig &cfg);
int run_ceiling_server(int listen_fd, int ctl_fd, int out_fd);

// `loadgen attack ...`: hostile clients (slow replayers, a channel flood); lg_attack.cpp.
int attack_main(int argc, char **argv);

}  // namespace lg
