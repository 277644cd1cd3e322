// `loadgen attack`: hostile anonymous clients to run next to a measured run
// (issue 11's "under attack" scenario). One process, one epoll:
//   - replayers: connections that ask for everything retained on many channels
//     (--replay-path, optionally with --cursor as Last-Event-ID) and read slowly:
//     a small receive buffer and at most --read-bps bytes per second each. A stream
//     the server ends is reopened from the start.
//   - a channel flood: --flood-rate new subscriber requests per second, each naming
//     --flood-channels random channel ids that exist nowhere, each held open for
//     --flood-hold seconds and then closed (at most --flood-max at once).
// It runs for --timeout seconds; with --sync it prints {"event":"ready",...} once
// every replay request is sent and the flood has run for one hold period,
// and stops early when stdin is closed. Then it prints one JSON result line.
#include "lg_common.h"

#include <arpa/inet.h>
#include <cmath>
#include <fcntl.h>
#include <map>
#include <netinet/tcp.h>
#include <random>
#include <sys/epoll.h>
#include <sys/socket.h>

namespace lg {
namespace {

struct AttackOpts {
    std::string host = "127.0.0.1";
    int port = 0;
    int replayers = 20;
    std::string replay_path;
    std::string cursor;
    double read_bps = 65536;
    int rcvbuf = 8192;
    double flood_rate = 100;
    std::string flood_path = "/msub?ch=";
    int flood_channels = 64;
    double flood_hold = 1.0;
    int flood_max = 256;
    int src_net = -1;
    bool sync = false;
    double timeout = 300;
    uint64_t seed = 1;
};

constexpr const char *kAttackHelp =
    "usage: loadgen attack --port P [--option value]...\n"
    "  --host IP                  server (default 127.0.0.1)\n"
    "  --replayers N              slow replaying connections (default 20)\n"
    "  --replay-path PATH         their request, e.g. /msub?ch=h-0,h-1,...\n"
    "  --cursor ID                Last-Event-ID of each replay request (e.g. 0-0)\n"
    "  --read-bps B --rcvbuf B    each replayer reads at most B bytes/s (65536), SO_RCVBUF (8192)\n"
    "  --flood-rate R             new flood requests per second (100; 0 = no flood)\n"
    "  --flood-path P             flood request prefix, followed by the ids (/msub?ch=)\n"
    "  --flood-channels K         random 16-byte channel ids per flood request (64)\n"
    "  --flood-hold S --flood-max N   hold each S seconds (1.0), at most N at once (256)\n"
    "  --src-net N --sync --timeout S --seed S\n";

[[noreturn]] void attack_usage(const char *msg) {
    std::fprintf(stderr, "loadgen attack: %s\n%s", msg, kAttackHelp);
    std::exit(2);
}

AttackOpts parse_attack(int argc, char **argv) {
    AttackOpts o;
    for (int i = 2; i < argc; i++) {
        std::string k = argv[i];
        if (k == "--help" || k == "-h") {
            std::fputs(kAttackHelp, stdout);
            std::exit(0);
        }
        if (k == "--sync") { o.sync = true; continue; }
        if (i + 1 >= argc) attack_usage(("missing value for " + k).c_str());
        std::string v = argv[++i];
        double d = std::atof(v.c_str());
        if (k == "--host") o.host = v;
        else if (k == "--port") o.port = int(d);
        else if (k == "--replayers") o.replayers = int(d);
        else if (k == "--replay-path") o.replay_path = v;
        else if (k == "--cursor") o.cursor = v;
        else if (k == "--read-bps") o.read_bps = d;
        else if (k == "--rcvbuf") o.rcvbuf = int(d);
        else if (k == "--flood-rate") o.flood_rate = d;
        else if (k == "--flood-path") o.flood_path = v;
        else if (k == "--flood-channels") o.flood_channels = int(d);
        else if (k == "--flood-hold") o.flood_hold = d;
        else if (k == "--flood-max") o.flood_max = int(d);
        else if (k == "--src-net") o.src_net = int(d);
        else if (k == "--timeout") o.timeout = d;
        else if (k == "--seed") o.seed = std::strtoull(v.c_str(), nullptr, 10);
        else attack_usage(("unknown option " + k).c_str());
    }
    if (o.port <= 0) attack_usage("--port is required");
    if (o.replayers > 0 && o.replay_path.empty()) attack_usage("--replay-path is required with replayers");
    return o;
}

struct AConn {
    int fd = -1;
    bool replayer = false;
    bool sent = false;
    bool got_head = false;
    int status = 0;
    int64_t opened = 0;
    std::string out;
    size_t out_off = 0;
    std::string head;
    double tokens = 0;  // replayer: bytes it may read now
};

constexpr uint64_t kStdinKey = ~uint64_t(0);

class Attack {
public:
    explicit Attack(const AttackOpts &o) : o_(o) { rng_.seed(o.seed); }
    int run();

private:
    size_t open_conn(bool replayer);
    void close_conn(size_t i);
    void on_event(size_t i, uint32_t ev);
    void send_some(size_t i);
    void read_some(size_t i, size_t limit);
    void take_head(AConn &c, const char *p, size_t n);
    void tick(int64_t now);
    std::string flood_request();
    std::string request(const std::string &target, const std::string &cursor) const;

    AttackOpts o_;
    int ep_ = -1;
    std::vector<AConn> conns_;
    std::vector<size_t> free_;
    std::vector<size_t> replayers_;  // slot of each replayer
    std::mt19937_64 rng_;
    sockaddr_in dst_{}, src_{};
    bool have_src_ = false;
    bool flooding_ = false;
    int64_t flood_t0_ = 0, last_tick_ = 0;
    uint64_t flood_started_ = 0, flood_open_ = 0, flood_skipped_ = 0, flood_no_head_ = 0;
    uint64_t replay_conns_ = 0, replay_closed_ = 0, replay_bytes_ = 0, replay_events_ = 0;
    uint64_t connect_errors_ = 0;
    std::map<int, uint64_t> replay_status_, flood_status_;
};

std::string Attack::request(const std::string &target, const std::string &cursor) const {
    std::string r = "GET " + target + " HTTP/1.1\r\nHost: " + o_.host +
                    "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n";
    if (!cursor.empty()) r += "Last-Event-ID: " + cursor + "\r\n";
    return r + "\r\n";
}

// --flood-channels ids of 16 bytes that no one publishes to: "f" + 15 random [a-z0-9].
std::string Attack::flood_request() {
    static constexpr char kAlnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    std::string target = o_.flood_path;
    for (int k = 0; k < o_.flood_channels; k++) {
        if (k) target += ',';
        target += 'f';
        for (int j = 0; j < 15; j++) target += kAlnum[rng_() % 36];
    }
    return request(target, "");
}

size_t Attack::open_conn(bool replayer) {
    size_t i;
    if (!free_.empty()) {
        i = free_.back();
        free_.pop_back();
    } else {
        i = conns_.size();
        conns_.emplace_back();
    }
    AConn &c = conns_[i];
    c = AConn{};
    c.replayer = replayer;
    c.opened = now_us();
    c.out = replayer ? request(o_.replay_path, o_.cursor) : flood_request();
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) die("socket");
    if (replayer) {
        // Small buffers on our side: the server's send queue fills and it must wait.
        setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &o_.rcvbuf, sizeof o_.rcvbuf);
    }
    if (have_src_) {
        int one = 1;
        setsockopt(c.fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        sockaddr_in a = src_;
        if (!replayer) a.sin_addr.s_addr = htonl(ntohl(a.sin_addr.s_addr) + 1);
        if (bind(c.fd, reinterpret_cast<sockaddr *>(&a), sizeof a) < 0) die("bind");
    }
    int r = connect(c.fd, reinterpret_cast<sockaddr *>(&dst_), sizeof dst_);
    if (r < 0 && errno != EINPROGRESS) {
        connect_errors_++;
        ::close(c.fd);
        c.fd = -1;
        free_.push_back(i);
        return SIZE_MAX;
    }
    epoll_event e{};
    e.events = EPOLLOUT | EPOLLIN;
    e.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &e);
    if (replayer) replay_conns_++;
    else {
        flood_started_++;
        flood_open_++;
    }
    return i;
}

void Attack::close_conn(size_t i) {
    AConn &c = conns_[i];
    if (c.fd < 0) return;
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    c.fd = -1;
    if (!c.replayer) {
        flood_open_--;
        if (!c.got_head) flood_no_head_++;
        free_.push_back(i);
    }
}

void Attack::send_some(size_t i) {
    AConn &c = conns_[i];
    while (c.out_off < c.out.size()) {
        ssize_t w = ::write(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off);
        if (w < 0) {
            if (errno == EAGAIN) return;
            if (errno == EINTR) continue;
            connect_errors_++;
            close_conn(i);
            return;
        }
        c.out_off += size_t(w);
    }
    c.sent = true;
    // A replayer is read on the clock (tick), not when data arrives.
    epoll_event e{};
    e.events = c.replayer ? 0u : uint32_t(EPOLLIN);
    e.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &e);
}

void Attack::take_head(AConn &c, const char *p, size_t n) {
    c.head.append(p, std::min<size_t>(n, 4096));
    size_t pos = c.head.find("\r\n\r\n");
    if (pos == std::string::npos && c.head.size() < 4096) return;
    RespHead rh;
    parse_resp_head(std::string_view(c.head.data(), pos == std::string::npos ? c.head.size() : pos), rh);
    c.got_head = true;
    c.status = rh.status;
    (c.replayer ? replay_status_ : flood_status_)[rh.status]++;
    c.head.clear();
    c.head.shrink_to_fit();
}

void Attack::read_some(size_t i, size_t limit) {
    static char buf[1 << 16];
    AConn &c = conns_[i];
    ssize_t r = ::read(c.fd, buf, std::min(limit, sizeof buf));
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) {
        if (c.replayer) {
            // The server ended the stream (or reset it): start the replay over.
            replay_closed_++;
            close_conn(i);
            size_t slot = open_conn(true);
            for (auto &s : replayers_)
                if (s == i) s = slot;
        } else {
            close_conn(i);
        }
        return;
    }
    if (!c.got_head) take_head(c, buf, size_t(r));
    if (!c.replayer) return;
    c.tokens -= double(r);
    replay_bytes_ += uint64_t(r);
    std::string_view v(buf, size_t(r));
    for (size_t k = v.find("data:"); k != std::string_view::npos; k = v.find("data:", k + 5)) replay_events_++;
}

void Attack::on_event(size_t i, uint32_t ev) {
    AConn &c = conns_[i];
    if (c.fd < 0) return;
    if (!c.sent) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            connect_errors_++;
            close_conn(i);
            return;
        }
        if (ev & EPOLLOUT) send_some(i);
        return;
    }
    if (!c.replayer && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) read_some(i, 4096);
}

void Attack::tick(int64_t now) {
    double dt = last_tick_ ? double(now - last_tick_) / 1e6 : 0;
    last_tick_ = now;
    for (size_t slot : replayers_) {
        if (slot == SIZE_MAX) continue;
        AConn &c = conns_[slot];
        if (c.fd < 0 || !c.sent) continue;
        // At most read_bps on average, never more than a tenth of a second's worth at once.
        c.tokens = std::min(c.tokens + o_.read_bps * dt, o_.read_bps / 10);
        if (c.tokens >= 1) read_some(slot, size_t(c.tokens));
    }
    for (size_t k = 0; k < replayers_.size(); k++)
        if (replayers_[k] == SIZE_MAX) replayers_[k] = open_conn(true);
    if (!flooding_) return;
    int64_t hold = int64_t(o_.flood_hold * 1e6);
    for (size_t i = 0; i < conns_.size(); i++)
        if (conns_[i].fd >= 0 && !conns_[i].replayer && now - conns_[i].opened >= hold) close_conn(i);
    uint64_t due = uint64_t(double(now - flood_t0_) / 1e6 * o_.flood_rate);
    while (flood_started_ + flood_skipped_ < due) {
        if (flood_open_ >= uint64_t(o_.flood_max)) {
            flood_skipped_++;
            continue;
        }
        open_conn(false);
    }
}

int Attack::run() {
    dst_ = make_addr(o_.host.c_str(), uint16_t(o_.port));
    if (o_.src_net >= 0) {
        std::string ip = "127.0." + std::to_string(1 + o_.src_net % 250) + ".100";
        src_ = make_addr(ip.c_str(), 0);
        have_src_ = true;
    }
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    epoll_event se{};
    se.events = EPOLLIN;
    se.data.u64 = kStdinKey;
    if (o_.sync) epoll_ctl(ep_, EPOLL_CTL_ADD, 0, &se);
    int64_t t0 = now_us(), hard = t0 + int64_t(o_.timeout * 1e6);
    for (int k = 0; k < o_.replayers; k++) replayers_.push_back(open_conn(true));
    bool ready = false, stop = false;
    int64_t ready_at = 0;
    std::vector<epoll_event> evs(512);
    while (!stop && now_us() < hard) {
        int n = epoll_wait(ep_, evs.data(), int(evs.size()), 10);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            if (evs[size_t(k)].data.u64 == kStdinKey) {
                char b[256];
                ssize_t r = ::read(0, b, sizeof b);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) stop = true;
                continue;
            }
            on_event(size_t(evs[size_t(k)].data.u64), evs[size_t(k)].events);
        }
        int64_t now = now_us();
        tick(now);
        if (!flooding_ && !ready_at) {
            // The flood starts once every replay request is out, whether or not the
            // server has answered yet: the attack does not wait for the server.
            bool sent = true;
            for (size_t slot : replayers_) sent = sent && slot != SIZE_MAX && conns_[slot].sent;
            if (sent || now - t0 > 2000000) {
                flooding_ = o_.flood_rate > 0;
                flood_t0_ = now;
                ready_at = now + (flooding_ ? int64_t(o_.flood_hold * 1e6) : 0);
            }
        }
        if (!ready && ready_at && now >= ready_at) {
            ready = true;
            if (o_.sync) {
                std::printf("{\"event\":\"ready\",\"replay_bytes\":%llu,\"flood_started\":%llu}\n",
                            (unsigned long long)replay_bytes_, (unsigned long long)flood_started_);
                std::fflush(stdout);
            }
        }
    }
    double secs = double(now_us() - t0) / 1e6;
    auto map_json = [](const std::map<int, uint64_t> &m) {
        std::string j = "{";
        for (auto &[k, v] : m) j += (j.size() > 1 ? ",\"" : "\"") + std::to_string(k) + "\":" + std::to_string(v);
        return j + "}";
    };
    uint64_t replay_200 = replay_status_.count(200) ? replay_status_.at(200) : 0;
    bool ok = ready && replay_200 > 0;
    std::printf("{\"event\":\"result\",\"mode\":\"attack\",\"seconds\":%.3f,\"replayers\":%d,"
                "\"replay_conns\":%llu,\"replay_status\":%s,\"replay_bytes\":%llu,\"replay_events\":%llu,"
                "\"replay_closed\":%llu,\"flood_started\":%llu,\"flood_status\":%s,\"flood_no_head\":%llu,"
                "\"flood_skipped\":%llu,\"connect_errors\":%llu,\"ok\":%s}\n",
                secs, o_.replayers, (unsigned long long)replay_conns_, map_json(replay_status_).c_str(),
                (unsigned long long)replay_bytes_, (unsigned long long)replay_events_,
                (unsigned long long)replay_closed_, (unsigned long long)flood_started_,
                map_json(flood_status_).c_str(), (unsigned long long)flood_no_head_,
                (unsigned long long)flood_skipped_, (unsigned long long)connect_errors_, ok ? "true" : "false");
    std::fflush(stdout);
    return 0;
}

}  // namespace

int attack_main(int argc, char **argv) {
    AttackOpts o = parse_attack(argc, argv);
    alarm(unsigned(o.timeout + 30));
    Attack a(o);
    return a.run();
}

}  // namespace lg
