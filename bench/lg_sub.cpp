// Subscriber child: holds `count` SSE streams or long-poll loops on one epoll,
// checks every message it receives (lost / duplicated / out of order) and
// reports to the parent over a pipe:
//   R <ready> <failed>        once, when every connection is set up (or timed out)
//   D <seq>                   every live connection of this child has <seq>
//   S <name> <value>, X <status> <count>, Q <seq> <count> <max_latency_us>,
//   H <phase> <bucket> <count>, T <count> <event type>, E      the final report, after the parent closes ctl_fd
#include "lg_common.h"

#include <fcntl.h>
#include <map>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <arpa/inet.h>

namespace lg {

sockaddr_in make_addr(const char *ip, uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        std::fprintf(stderr, "loadgen: bad address %s\n", ip);
        std::exit(2);
    }
    return a;
}

namespace {

constexpr uint64_t kCtlKey = ~uint64_t(0);
constexpr uint64_t kMaxSeq = 50000000;
constexpr size_t kMaxHead = 16384;

struct SeqStat {
    uint32_t count = 0;
    int64_t max_lat = -1;
    bool reported = false;
};

struct Conn {
    enum class St : uint8_t { Idle, Connecting, Sending, Head, Body, Dead };
    int fd = -1;
    St st = St::Idle;
    bool ready = false;
    bool failed = false;
    uint16_t errors = 0;
    std::string out;
    size_t out_off = 0;
    std::string head;
    RespHead rh;
    BodyDecoder body;
    std::string line;   // SSE: partial line; long-poll: response body
    std::string data;   // SSE: data of the event being assembled
    std::string ev;     // SSE: event type
    std::string id;     // SSE: id line of the event being assembled
    bool has_data = false, has_id = false;
    bool have_last_id = false;
    uint64_t last_hi = 0, last_lo = 0;
    std::vector<uint64_t> seen;      // bitmap by seq
    std::vector<uint64_t> last_seq;  // per publisher connection: last seq + 1
    std::string cur1, cur2;          // long-poll cursor (ours: id; nchan: Last-Modified, Etag)
    bool sent_cursor = false;        // the configured first cursor went out
};

class SubChild {
public:
    explicit SubChild(const SubConfig &c) : cfg_(c), conns_(size_t(c.count)) {}
    int run();

private:
    void start_connect(size_t i);
    void on_event(size_t i, uint32_t ev);
    void try_send(size_t i);
    void on_readable(size_t i);
    void process(size_t i, const char *p, size_t n);
    void on_head(size_t i);
    void on_lp_response(size_t i);
    void sse_feed(size_t i, const char *p, size_t n);
    void sse_line(Conn &c, std::string_view line);
    void sse_dispatch(Conn &c);
    void deliver(Conn &c, const Msg &m, int64_t now);
    void build_request(Conn &c);
    void kill(size_t i, bool disconnect);
    void reconnect(size_t i);
    void check_reported();
    void setup_progress();
    void flush();
    void final_report();
    void set_events(Conn &c, size_t i, uint32_t ev);

    SubConfig cfg_;
    std::vector<Conn> conns_;
    int ep_ = -1;
    size_t next_ = 0;         // next connection to start
    int inflight_ = 0;        // connections being set up
    int ready_ = 0, failed_ = 0, live_ = 0;
    bool setup_reported_ = false;
    int64_t setup_deadline_ = 0;
    std::string outbuf_;
    std::vector<SeqStat> seqs_;
    Hist hist_[2];
    std::map<int, uint64_t> status_;
    std::map<std::string, uint64_t> event_types_;  // SSE events other than messages
    uint64_t connect_errors_ = 0, disconnects_ = 0, reconnects_ = 0, http_errors_ = 0;
    uint64_t dup_ = 0, ooo_ = 0, id_regress_ = 0, delivered_ = 0, other_events_ = 0;
    uint64_t bad_payload_ = 0, bad_frame_ = 0, responses_ = 0;
    uint64_t misrouted_ = 0, body_bytes_ = 0;
    FILE *save_ = nullptr;
    int64_t now_ = 0;
    sockaddr_in dst_{};
    sockaddr_in src_{};
};

void SubChild::set_events(Conn &c, size_t i, uint32_t ev) {
    epoll_event e{};
    e.events = ev;
    e.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &e);
}

void SubChild::start_connect(size_t i) {
    Conn &c = conns_[i];
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
        connect_errors_++;
        kill(i, false);
        return;
    }
    if (!cfg_.src_ip.empty()) {
        int one = 1;
        setsockopt(c.fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c.fd, reinterpret_cast<sockaddr *>(&src_), sizeof src_) < 0) {
            connect_errors_++;
            kill(i, false);
            return;
        }
    }
    int r = connect(c.fd, reinterpret_cast<sockaddr *>(&dst_), sizeof dst_);
    if (r < 0 && errno != EINPROGRESS) {
        connect_errors_++;
        kill(i, false);
        return;
    }
    c.st = Conn::St::Connecting;
    epoll_event e{};
    e.events = EPOLLOUT;
    e.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &e);
}

void SubChild::build_request(Conn &c) {
    c.out.clear();
    c.out_off = 0;
    c.out += "GET ";
    c.out += cfg_.path;
    if (cfg_.chan_per_sub > 0) {
        uint64_t g = cfg_.first_conn + uint64_t(&c - conns_.data());
        for (int k = 0; k < cfg_.chan_per_sub; k++) {
            if (k) c.out += ',';
            c.out += chan_name(cfg_.chan_base, g * uint64_t(cfg_.chan_per_sub) + uint64_t(k), cfg_.id_width);
        }
    }
    c.out += " HTTP/1.1\r\nHost: ";
    c.out += cfg_.host;
    c.out += "\r\n";
    if (cfg_.kind == SubKind::Sse) {
        c.out += "Accept: text/event-stream\r\nCache-Control: no-cache\r\n";
        // The first request resumes from the configured cursor; a reconnect starts over.
        if (!cfg_.cursor.empty() && !c.sent_cursor) c.out += "Last-Event-ID: " + cfg_.cursor + "\r\n";
        c.sent_cursor = true;
    } else if (cfg_.server == Server::Nchan) {
        if (!c.cur1.empty()) c.out += "If-Modified-Since: " + c.cur1 + "\r\n";
        if (!c.cur2.empty()) c.out += "If-None-Match: " + c.cur2 + "\r\n";
    } else if (!c.cur1.empty()) {
        c.out += "Last-Event-ID: " + c.cur1 + "\r\n";
    }
    c.out += "\r\n";
}

void SubChild::try_send(size_t i) {
    Conn &c = conns_[i];
    while (c.out_off < c.out.size()) {
        ssize_t w = ::write(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off);
        if (w < 0) {
            if (errno == EAGAIN) {
                set_events(c, i, EPOLLOUT);
                return;
            }
            if (errno == EINTR) continue;
            kill(i, true);
            return;
        }
        c.out_off += size_t(w);
    }
    c.st = Conn::St::Head;
    c.head.clear();
    set_events(c, i, EPOLLIN);
    if (cfg_.kind == SubKind::LongPoll && !c.ready) {
        // A long-poll request is "set up" once it has been sent; the parent
        // then waits for the server's subscriber count.
        c.ready = true;
        ready_++;
        live_++;
        inflight_--;
    }
}

void SubChild::on_event(size_t i, uint32_t ev) {
    Conn &c = conns_[i];
    if (c.st == Conn::St::Dead || c.fd < 0) return;
    if (c.st == Conn::St::Connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            connect_errors_++;
            if (c.ready) reconnect(i);
            else kill(i, false);
            return;
        }
        int one = 1;
        setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        build_request(c);
        c.st = Conn::St::Sending;
        try_send(i);
        return;
    }
    if (c.st == Conn::St::Sending) {
        if (ev & EPOLLOUT) try_send(i);
        else if (ev & (EPOLLERR | EPOLLHUP)) kill(i, true);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(i);
}

void SubChild::on_readable(size_t i) {
    static char buf[1 << 18];
    Conn &c = conns_[i];
    ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        n = 0;
    }
    if (n == 0) {
        if (cfg_.kind == SubKind::LongPoll && c.ready &&
            (c.st == Conn::St::Head && c.head.empty())) {
            // The server closed an idle keep-alive connection: poll again.
            reconnect(i);
            return;
        }
        if (c.st == Conn::St::Body && c.body.st == BodyDecoder::St::UntilClose &&
            cfg_.kind == SubKind::LongPoll) {
            c.body.st = BodyDecoder::St::Done;
            c.rh.close = true;
            on_lp_response(i);
            return;
        }
        kill(i, true);
        return;
    }
    now_ = now_us();
    process(i, buf, size_t(n));
}

void SubChild::process(size_t i, const char *p, size_t n) {
    Conn &c = conns_[i];
    std::string rest;
    while (n > 0 && c.st != Conn::St::Dead) {
        if (c.st == Conn::St::Head) {
            size_t old = c.head.size();
            c.head.append(p, n);
            size_t from = old >= 3 ? old - 3 : 0;
            size_t pos = c.head.find("\r\n\r\n", from);
            if (pos == std::string::npos) {
                if (c.head.size() > kMaxHead) { bad_frame_++; kill(i, true); }
                return;
            }
            if (!parse_resp_head(std::string_view(c.head.data(), pos), c.rh)) {
                bad_frame_++;
                kill(i, true);
                return;
            }
            rest.assign(c.head, pos + 4, std::string::npos);
            c.head.clear();
            p = rest.data();
            n = rest.size();
            on_head(i);
            continue;
        }
        if (c.st != Conn::St::Body) return;  // e.g. a long-poll request being re-sent
        ssize_t k;
        if (cfg_.kind == SubKind::Sse)
            k = c.body.feed(p, n, [&](const char *d, size_t m) {
                body_bytes_ += m;
                if (save_ && i == 0) std::fwrite(d, 1, m, save_);
                sse_feed(i, d, m);
            });
        else
            k = c.body.feed(p, n, [&](const char *d, size_t m) { c.line.append(d, m); });
        if (k < 0) {
            bad_frame_++;
            kill(i, true);
            return;
        }
        p += k;
        n -= size_t(k);
        if (c.body.done()) {
            if (cfg_.kind == SubKind::Sse) {
                kill(i, true);  // the server ended the stream
                return;
            }
            on_lp_response(i);
            if (n > 0) bad_frame_++;  // bytes after a response we did not ask for
            return;
        }
    }
}

void SubChild::on_head(size_t i) {
    Conn &c = conns_[i];
    status_[c.rh.status]++;
    if (cfg_.kind == SubKind::Sse) {
        if (c.rh.status != 200) {
            http_errors_++;
            kill(i, false);
            return;
        }
        if (!c.ready) {
            c.ready = true;
            ready_++;
            live_++;
            inflight_--;
        }
        c.body.start(c.rh, false);
        c.st = Conn::St::Body;
        return;
    }
    int s = c.rh.status;
    c.line.clear();
    c.body.start(c.rh, s == 204 || s == 304 || (s >= 100 && s < 200));
    c.st = Conn::St::Body;
    if (c.body.done()) on_lp_response(i);
}

void SubChild::on_lp_response(size_t i) {
    Conn &c = conns_[i];
    responses_++;
    int s = c.rh.status;
    if (s == 200) {
        const char *b = c.line.data(), *e = b + c.line.size();
        Msg m;
        if (b < e && *b == 'M') {
            // nchan: the body is the message itself.
            if (parse_payload(b, e, m)) deliver(c, m, now_);
            else bad_payload_++;
        } else {
            // ours: {"messages":[{"id":…,"data":"M…"},…],"last_event_id":…}
            static constexpr std::string_view key = "\"data\":\"";
            std::string_view body(b, size_t(e - b));
            size_t pos = 0;
            bool any = false;
            while ((pos = body.find(key, pos)) != std::string_view::npos) {
                pos += key.size();
                any = true;
                if (parse_payload(b + pos, e, m)) deliver(c, m, now_);
                else bad_payload_++;
            }
            if (!any) other_events_++;
        }
    } else if (s != 204 && s != 304 && s != 408) {
        http_errors_++;
        if (++c.errors > 50) {
            kill(i, true);
            return;
        }
    }
    if (cfg_.server == Server::Nchan) {
        if (!c.rh.last_modified.empty()) c.cur1 = c.rh.last_modified;
        if (!c.rh.etag.empty()) c.cur2 = c.rh.etag;
    } else if (!c.rh.last_event_id.empty()) {
        c.cur1 = c.rh.last_event_id;
    }
    c.line.clear();
    if (c.rh.close) {
        reconnect(i);
        return;
    }
    build_request(c);
    c.st = Conn::St::Sending;
    try_send(i);
}

void SubChild::sse_feed(size_t i, const char *p, size_t n) {
    Conn &c = conns_[i];
    while (n > 0) {
        const char *q = static_cast<const char *>(std::memchr(p, '\n', n));
        if (!q) {
            c.line.append(p, n);
            return;
        }
        std::string_view line;
        if (c.line.empty()) {
            line = std::string_view(p, size_t(q - p));
        } else {
            c.line.append(p, size_t(q - p));
            line = c.line;
        }
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        sse_line(c, line);
        c.line.clear();
        n -= size_t(q - p) + 1;
        p = q + 1;
    }
}

void SubChild::sse_line(Conn &c, std::string_view line) {
    if (line.empty()) {
        sse_dispatch(c);
        return;
    }
    if (line[0] == ':') return;  // comment / keep-alive ping
    size_t colon = line.find(':');
    std::string_view field = line.substr(0, colon), value;
    if (colon != std::string_view::npos) {
        value = line.substr(colon + 1);
        if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
    }
    if (field == "data") {
        if (c.has_data) c.data.push_back('\n');
        c.data.append(value);
        c.has_data = true;
    } else if (field == "id") {
        c.id.assign(value);
        c.has_id = true;
    } else if (field == "event") {
        c.ev.assign(value);
    }
}

// Event types that are not messages (SPEC §3, §4, §10); in a stream of several
// channels every other type is the channel's id (ours) and carries a message.
static bool control_event(std::string_view ev) {
    return ev == "channel-gap" || ev == "channel-deleted" || ev == "token-expired";
}

void SubChild::sse_dispatch(Conn &c) {
    if (c.has_data) {
        if (c.ev.empty() || c.ev == "message" || (cfg_.chan_per_sub > 1 && !control_event(c.ev))) {
            Msg m;
            if (parse_payload(c.data.data(), c.data.data() + c.data.size(), m)) deliver(c, m, now_);
            else bad_payload_++;
        } else {
            other_events_++;
            if (event_types_.size() < 16 || event_types_.count(c.ev)) event_types_[c.ev]++;
        }
    }
    if (c.has_id) {
        uint64_t hi, lo;
        if (parse_event_id(c.id, hi, lo)) {
            if (c.have_last_id && (hi < c.last_hi || (hi == c.last_hi && lo <= c.last_lo))) id_regress_++;
            c.last_hi = hi;
            c.last_lo = lo;
            c.have_last_id = true;
        }
    }
    c.data.clear();
    c.ev.clear();
    c.id.clear();
    c.has_data = c.has_id = false;
}

void SubChild::deliver(Conn &c, const Msg &m, int64_t now) {
    if (m.seq >= kMaxSeq || m.src > 4096) {
        bad_payload_++;
        return;
    }
    if (cfg_.chan_per_sub > 0) {
        // Only this connection's channels may reach it; ours also names the channel.
        uint64_t g = cfg_.first_conn + uint64_t(&c - conns_.data());
        uint64_t lo = g * uint64_t(cfg_.chan_per_sub);
        bool mine = m.chan >= 0 && uint64_t(m.chan) >= lo && uint64_t(m.chan) < lo + uint64_t(cfg_.chan_per_sub);
        if (mine && cfg_.chan_per_sub > 1 && cfg_.server == Server::Ours && cfg_.kind == SubKind::Sse)
            mine = c.ev == chan_name(cfg_.chan_base, uint64_t(m.chan), cfg_.id_width);
        if (!mine && ++misrouted_ <= 5)
            std::fprintf(stderr, "loadgen: connection %llu (channels %llu..) got message %llu of channel %lld (id %s, event %s)\n",
                         (unsigned long long)g, (unsigned long long)lo, (unsigned long long)m.seq, (long long)m.chan,
                         c.id.c_str(), c.ev.c_str());
    }
    size_t w = size_t(m.seq / 64);
    if (w >= c.seen.size()) c.seen.resize(w + 1 + (w >> 1), 0);
    uint64_t bit = uint64_t(1) << (m.seq % 64);
    if (c.seen[w] & bit) {
        dup_++;
        return;
    }
    c.seen[w] |= bit;
    delivered_++;
    if (m.src >= c.last_seq.size()) c.last_seq.resize(m.src + 1, 0);
    uint64_t &last = c.last_seq[m.src];
    if (last != 0 && m.seq + 1 < last) ooo_++;
    else last = m.seq + 1;
    int64_t lat = now - m.ts;
    hist_[m.seq < cfg_.phase_split ? 0 : 1].add(lat);
    if (m.seq >= seqs_.size()) seqs_.resize(size_t(m.seq) + 1 + seqs_.size() / 2);
    SeqStat &s = seqs_[size_t(m.seq)];
    s.count++;
    if (lat > s.max_lat) s.max_lat = lat;
    // One connection per message when it goes to one of many channels.
    if (!s.reported && (cfg_.chan_per_sub > 0 || int(s.count) >= live_)) {
        s.reported = true;
        outbuf_ += "D " + std::to_string(m.seq) + "\n";
    }
}

void SubChild::check_reported() {
    for (size_t q = 0; q < seqs_.size(); q++) {
        SeqStat &s = seqs_[q];
        if (s.count > 0 && !s.reported && int(s.count) >= live_) {
            s.reported = true;
            outbuf_ += "D " + std::to_string(q) + "\n";
        }
    }
}

void SubChild::kill(size_t i, bool disconnect) {
    Conn &c = conns_[i];
    if (c.fd >= 0) {
        epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
        ::close(c.fd);
        c.fd = -1;
    }
    c.st = Conn::St::Dead;
    if (c.ready) {
        if (disconnect) disconnects_++;
        live_--;
        check_reported();
    } else if (!c.failed) {
        c.failed = true;  // every connection not yet ready was counted in inflight_
        failed_++;
        inflight_--;
    }
    c.out.clear();
    c.out.shrink_to_fit();
    c.line.clear();
}

void SubChild::reconnect(size_t i) {
    Conn &c = conns_[i];
    if (c.fd >= 0) {
        epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
        ::close(c.fd);
        c.fd = -1;
    }
    reconnects_++;
    if (reconnects_ > uint64_t(conns_.size()) * 20 + 1000) {  // a server that keeps closing
        kill(i, true);
        return;
    }
    start_connect(i);
}

void SubChild::setup_progress() {
    while (next_ < conns_.size() && inflight_ < cfg_.window) {
        inflight_++;
        start_connect(next_++);
    }
    if (setup_reported_) return;
    bool all = next_ == conns_.size() && inflight_ == 0;
    if (!all && now_us() > setup_deadline_) {
        for (size_t i = 0; i < next_; i++)
            if (!conns_[i].ready && conns_[i].st != Conn::St::Dead) kill(i, false);
        for (; next_ < conns_.size(); next_++) {
            conns_[next_].failed = true;
            failed_++;
        }
        all = true;
    }
    if (all) {
        setup_reported_ = true;
        outbuf_ += "R " + std::to_string(ready_) + " " + std::to_string(failed_) + "\n";
    }
}

void SubChild::flush() {
    if (outbuf_.empty()) return;
    write_all(cfg_.out_fd, outbuf_);
    outbuf_.clear();
}

void SubChild::final_report() {
    std::string r;
    auto S = [&](const char *k, uint64_t v) { r += std::string("S ") + k + " " + std::to_string(v) + "\n"; };
    S("ready", uint64_t(ready_));
    S("failed", uint64_t(failed_));
    S("live", uint64_t(live_));
    S("connect_errors", connect_errors_);
    S("disconnects", disconnects_);
    S("reconnects", reconnects_);
    S("http_errors", http_errors_);
    S("dup", dup_);
    S("ooo", ooo_);
    S("id_regress", id_regress_);
    S("delivered", delivered_);
    S("other_events", other_events_);
    S("bad_payload", bad_payload_);
    S("bad_frame", bad_frame_);
    S("responses", responses_);
    S("misrouted", misrouted_);
    S("body_bytes", body_bytes_);
    for (auto &[code, cnt] : status_) r += "X " + std::to_string(code) + " " + std::to_string(cnt) + "\n";
    for (auto &[name, cnt] : event_types_) {
        std::string safe;
        for (char ch : name) safe += (ch > ' ' && ch != '"' && ch != '\\' && uint8_t(ch) < 127) ? ch : '_';
        r += "T " + std::to_string(cnt) + " " + safe.substr(0, 64) + "\n";
    }
    for (size_t q = 0; q < seqs_.size(); q++)
        if (seqs_[q].count)
            r += "Q " + std::to_string(q) + " " + std::to_string(seqs_[q].count) + " " +
                 std::to_string(seqs_[q].max_lat) + "\n";
    for (int ph = 0; ph < 2; ph++)
        for (size_t b = 0; b < hist_[ph].b.size(); b++)
            if (hist_[ph].b[b])
                r += "H " + std::to_string(ph) + " " + std::to_string(b) + " " + std::to_string(hist_[ph].b[b]) + "\n";
    r += "E\n";
    write_all(cfg_.out_fd, r);
}

int SubChild::run() {
    dst_ = make_addr(cfg_.host.c_str(), cfg_.port);
    if (!cfg_.src_ip.empty()) src_ = make_addr(cfg_.src_ip.c_str(), 0);
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
    epoll_event ce{};
    ce.events = EPOLLIN;
    ce.data.u64 = kCtlKey;
    epoll_ctl(ep_, EPOLL_CTL_ADD, cfg_.ctl_fd, &ce);
    setup_deadline_ = now_us() + cfg_.setup_timeout_us;
    if (!cfg_.save_body.empty() && cfg_.child == 0) {
        save_ = std::fopen(cfg_.save_body.c_str(), "w");
        if (!save_) die("open --save-body file");
    }
    std::vector<epoll_event> evs(1024);
    bool finishing = false;
    setup_progress();
    flush();
    while (!finishing) {
        int n = epoll_wait(ep_, evs.data(), int(evs.size()), 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            if (evs[size_t(k)].data.u64 == kCtlKey) {
                char b[64];
                ssize_t r = ::read(cfg_.ctl_fd, b, sizeof b);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) finishing = true;
                continue;
            }
            on_event(size_t(evs[size_t(k)].data.u64), evs[size_t(k)].events);
        }
        setup_progress();
        flush();
    }
    if (save_) std::fclose(save_);
    final_report();
    return 0;
}

}  // namespace

int run_subscriber_child(const SubConfig &cfg) {
    SubChild c(cfg);
    return c.run();
}

}  // namespace lg
