// loadgen: the benchmark's load generator (C++17, epoll, libc only).
//
//   loadgen sse      --port P --subs N [--bursts B] [--msgs M --rate R] ...
//   loadgen longpoll --port P --subs N --rate R --duration S ...
//   loadgen publish  --port P [--subs N] --duration S [--pub-conns C] [--pub-channels K]
//   loadgen ceiling  --subs N [--bursts B] [--msgs M --rate R]
//   loadgen sse --replay --msgs M --cursor ID ...   publish first, then subscribe and replay
//   loadgen fetch    --port P --path /static/file [--repeat N]
//   loadgen attack   ...   hostile clients next to a run (lg_attack.cpp; --help there)
//
// Subscribers live in forked children (each under the per-process file limit);
// the parent publishes over keep-alive connections (or, for `ceiling`, hands
// messages to its own minimal SSE server processes), tracks completion of every
// message, and prints one JSON line with throughput, latency and the checks:
// lost, duplicated and out-of-order deliveries. See README.md.
#include "lg_common.h"

#include <arpa/inet.h>
#include <csignal>
#include <cmath>
#include <fcntl.h>
#include <map>
#include <netinet/tcp.h>
#include <random>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

using namespace lg;

namespace {

struct Opts {
    std::string mode;
    Server server = Server::Ours;
    std::string host = "127.0.0.1";
    int port = 0, pub_port = 0;
    std::string sub_path = "/sub/", lp_path = "/lp/", pub_path = "/pub/", channel = "b";
    int subs = 0, procs = 0, bursts = 0, msgs = 0;
    double rate = 0, duration = 0;
    size_t size = 128;
    int pub_conns = 1, pub_channels = 1;
    double drain = 3, drain_max = 60, setup_timeout = 30, timeout = 300, burst_gap = 0.05, subs_wait = 15;
    bool sync = false;
    int src_net = -1;
    int server_procs = 2;
    int window = 200;
    std::string label;
    int chan_per_sub = 0;       // > 0: each connection names its own channels (see SubConfig)
    int id_width = 0;
    bool pub_random = false;    // with chan_per_sub: random channels, else channel seq % total
    uint64_t seed = 1;
    std::string cursor;
    bool replay = false;
    std::string save_body;
    std::string path = "/";     // fetch
    int repeat = 3;             // fetch
    std::string header;         // fetch: one more request header ("Name: value")
    uint64_t until_bytes = 0;   // fetch: done after this many body bytes (an event stream)
};

constexpr const char *kHelp =
    "usage: loadgen sse|longpoll|publish|ceiling|fetch [--option value]...   (loadgen attack --help: hostile clients)\n"
    "  --server ours|nchan   long-poll cursor protocol (Last-Event-ID | Last-Modified/Etag)\n"
    "  --host IP --port P    server (not for ceiling); --pub-port P if publishing elsewhere\n"
    "  --sub-path /sub/ --lp-path /lp/ --pub-path /pub/ --channel NAME   URLs: PATH + NAME\n"
    "  --subs N              subscriber connections (sse, longpoll, ceiling; optional for publish)\n"
    "  --procs K             subscriber processes (default: 1 below 1000 subscribers, else 2-4)\n"
    "  --bursts B            single messages, each waited for until every subscriber has it\n"
    "  --msgs M --rate R     then M messages at R msg/s (rate 0 = flat out) ...\n"
    "  --duration S          ... or for S seconds (whichever ends first)\n"
    "  --pub-conns C         keep-alive publisher connections (default 1)\n"
    "  --pub-channels K      publish round-robin to NAME-0 .. NAME-(K-1); subscribers use NAME-0\n"
    "  --size BYTES          message size (default 128, at least 48)\n"
    "  --drain S             give up waiting for deliveries after S s without progress (default 3)\n"
    "  --drain-max S         ... or after S s in all (default 60)\n"
    "  --setup-timeout S --subs-wait S --timeout S --burst-gap S --window N --src-net N\n"
    "  --server-procs N      ceiling server processes (default 2)\n"
    "  --sub-channels K      connection g names channels NAME-(g*K) .. NAME-(g*K+K-1), comma-\n"
    "                        separated after --sub-path (e.g. /msub?ch=); each message goes to\n"
    "                        one channel (--pub-pattern seq: message s to channel s mod total;\n"
    "                        random: uniform, --seed S), so to exactly one connection\n"
    "  --id-width W          channel ids NAME-000123 zero-padded to W bytes\n"
    "  --cursor ID           Last-Event-ID of each subscriber's first request\n"
    "  --replay              publish --msgs first (flat out), then subscribe (with --cursor) and\n"
    "                        time the replay: replay_ms = subscribe -> last message received\n"
    "  --save-body FILE      the decoded SSE body of the first connection, for a static copy\n"
    "  fetch: --path P --repeat N   GET P N times on fresh connections, time to the last byte\n"
    "         [--header 'Name: value'] [--until-bytes B: done after B body bytes, for an event stream]\n"
    "  --sync                print {\"event\":\"ready\"} and {\"event\":\"done\"} lines and wait for a\n"
    "                        line on stdin after each (lets a driver measure the server)\n"
    "Prints one JSON line: throughput, latency, and lost/dup/ooo checks. See bench/README.md.\n";

[[noreturn]] void usage(const char *msg) {
    std::fprintf(stderr, "loadgen: %s\n%s", msg, kHelp);
    std::exit(2);
}

Opts parse_opts(int argc, char **argv) {
    Opts o;
    if (argc < 2) usage("missing mode");
    o.mode = argv[1];
    if (o.mode == "--help" || o.mode == "-h") {
        std::fputs(kHelp, stdout);
        std::exit(0);
    }
    if (o.mode != "sse" && o.mode != "longpoll" && o.mode != "publish" && o.mode != "ceiling" &&
        o.mode != "fetch")
        usage("unknown mode");
    for (int i = 2; i < argc; i++) {
        std::string k = argv[i];
        if (k == "--sync") { o.sync = true; continue; }
        if (k == "--replay") { o.replay = true; continue; }
        if (i + 1 >= argc) usage(("missing value for " + k).c_str());
        std::string v = argv[++i];
        auto I = [&] { return std::atoi(v.c_str()); };
        auto D = [&] { return std::atof(v.c_str()); };
        if (k == "--server") {
            if (v == "ours") o.server = Server::Ours;
            else if (v == "nchan") o.server = Server::Nchan;
            else usage("--server ours|nchan");
        } else if (k == "--host") o.host = v;
        else if (k == "--port") o.port = I();
        else if (k == "--pub-port") o.pub_port = I();
        else if (k == "--sub-path") o.sub_path = v;
        else if (k == "--lp-path") o.lp_path = v;
        else if (k == "--pub-path") o.pub_path = v;
        else if (k == "--channel") o.channel = v;
        else if (k == "--subs") o.subs = I();
        else if (k == "--procs") o.procs = I();
        else if (k == "--bursts") o.bursts = I();
        else if (k == "--msgs") o.msgs = I();
        else if (k == "--rate") o.rate = D();
        else if (k == "--duration") o.duration = D();
        else if (k == "--size") o.size = size_t(I());
        else if (k == "--pub-conns") o.pub_conns = I();
        else if (k == "--pub-channels") o.pub_channels = I();
        else if (k == "--drain") o.drain = D();
        else if (k == "--drain-max") o.drain_max = D();
        else if (k == "--setup-timeout") o.setup_timeout = D();
        else if (k == "--subs-wait") o.subs_wait = D();
        else if (k == "--timeout") o.timeout = D();
        else if (k == "--burst-gap") o.burst_gap = D();
        else if (k == "--src-net") o.src_net = I();
        else if (k == "--server-procs") o.server_procs = I();
        else if (k == "--window") o.window = I();
        else if (k == "--label") o.label = v;
        else if (k == "--sub-channels") o.chan_per_sub = I();
        else if (k == "--id-width") o.id_width = I();
        else if (k == "--pub-pattern") {
            if (v == "random") o.pub_random = true;
            else if (v == "seq") o.pub_random = false;
            else usage("--pub-pattern seq|random");
        } else if (k == "--seed") o.seed = std::strtoull(v.c_str(), nullptr, 10);
        else if (k == "--cursor") o.cursor = v;
        else if (k == "--save-body") o.save_body = v;
        else if (k == "--path") o.path = v;
        else if (k == "--repeat") o.repeat = I();
        else if (k == "--header") o.header = v;
        else if (k == "--until-bytes") o.until_bytes = uint64_t(std::stoull(v));
        else usage(("unknown option " + k).c_str());
    }
    if (o.mode == "ceiling") o.server = Server::Ceiling;
    if (o.mode != "ceiling" && o.port <= 0) usage("--port is required");
    if (o.chan_per_sub > 0 && o.pub_channels > 1) usage("--sub-channels and --pub-channels do not mix");
    if (o.pub_port <= 0) o.pub_port = o.port;
    if (o.pub_conns < 1) o.pub_conns = 1;
    if (o.pub_channels < 1) o.pub_channels = 1;
    if (o.size < 48) o.size = 48;
    if ((o.mode == "sse" || o.mode == "longpoll" || o.mode == "ceiling") && o.subs <= 0)
        usage("--subs must be > 0");
    return o;
}

// Channel of message `seq` with --pub-channels; subscribers listen on the channel of seq 0.
std::string channel_of(const Opts &o, uint64_t seq) {
    if (o.pub_channels <= 1) return o.channel;
    return chan_name(o.channel, seq % uint64_t(o.pub_channels), o.id_width);
}

struct ChildProc {
    pid_t pid = -1;
    int ctl = -1;  // parent's write end: closing it asks the child to report
    int out = -1;  // parent's read end
    LineBuf lines;
    bool got_r = false, got_e = false;
    int ready = 0, failed = 0;
};

struct SeqInfo {
    int64_t ts = 0;
    int64_t resp = 0;   // when the publish was answered
    int8_t status = 0;  // 0 in flight, 1 accepted, -1 refused
    bool expected = false;
    bool complete = false;
    uint32_t dchildren = 0;
    uint64_t count = 0;
    int64_t max_lat = -1;
};

struct PubConn {
    int fd = -1;
    bool busy = false;
    std::string out;
    size_t off = 0;
    std::string head;
    bool in_body = false;
    RespHead rh;
    BodyDecoder body;
    std::string bodybuf;
    uint64_t seq = 0;
    int64_t sent = 0;
};

constexpr uint64_t kChildBase = 1ull << 40;
constexpr uint64_t kServerBase = 1ull << 41;

class Parent {
public:
    explicit Parent(const Opts &o) : o_(o) {}
    int run();

private:
    void spawn_ceiling_servers();
    void spawn_children();
    void wait_children_ready();
    int query_subscribers(const std::string &channel);
    void wait_subscribers();
    void sync_point(const char *event);
    void connect_pub(size_t i);
    void pump(int64_t timeout_us);
    void on_child_line(ChildProc &c, std::string_view line);
    void on_pub_event(size_t i, uint32_t ev);
    void pub_send(size_t i);
    void pub_done(size_t i);
    bool publish_next();
    int idle_pub();
    void note_complete(uint64_t seq);
    void drain(const std::vector<uint64_t> &which);
    void collect();
    void print_result();
    int children_active() const;
    bool reached_all(const SeqInfo &s) const;
    void stream_phase();
    int run_replay();
    uint64_t total_channels() const { return uint64_t(o_.subs) * uint64_t(o_.chan_per_sub); }

    Opts o_;
    int ep_ = -1;
    std::vector<ChildProc> kids_;
    std::vector<ChildProc> servers_;  // ceiling server processes
    std::vector<int> listen_fds_;
    std::vector<PubConn> pubs_;
    std::vector<SeqInfo> seqs_;
    uint64_t next_seq_ = 0;
    uint64_t outstanding_ = 0;      // publishes without a response
    uint64_t incomplete_ = 0;       // expected, accepted, not yet everywhere
    int64_t last_progress_ = 0;
    int ready_ = 0, failed_ = 0;
    int subs_seen_ = -1;
    double subs_wait_s_ = 0;
    Hist hist_[2], pub_hist_;
    std::map<std::string, uint64_t> sums_;
    std::map<int, uint64_t> sub_status_, pub_status_;
    std::map<std::string, uint64_t> event_types_;
    int first_pub_subscribers_ = -1;
    uint64_t pub_errors_ = 0, pub_reconnects_ = 0;
    std::vector<double> burst_fanout_ms_;
    int64_t stream_t0_ = 0, stream_t1_ = 0;   // first and last stream publish
    uint64_t stream_first_ = 0, stream_end_ = 0;  // seq range of the stream phase
    int64_t max_sched_lag_ = 0;
    std::string ceiling_info_;
    int64_t t_start_ = 0;
    int64_t t_sub_ = 0;         // --replay: when the subscribers were started
    int64_t t_sub_end_ = 0;     // --replay: when everything arrived, or waiting stopped
    bool drained_ = true;
    std::mt19937_64 rng_;
};

// Every subscriber that should have the message has it: one connection when each
// message goes to one of many channels, else every live connection of every child.
bool Parent::reached_all(const SeqInfo &s) const {
    int need = o_.chan_per_sub > 0 ? 1 : children_active();
    return need > 0 && int(s.dchildren) >= need;
}

int Parent::children_active() const {
    int n = 0;
    for (auto &k : kids_) n += k.ready > 0;
    return n;
}

void Parent::spawn_ceiling_servers() {
    sockaddr_in a = make_addr("127.0.0.1", 0);
    for (int s = 0; s < o_.server_procs; s++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket");
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) < 0) die("bind");
        if (listen(fd, 4096) < 0) die("listen");
        if (s == 0) {
            socklen_t len = sizeof a;
            getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
            o_.port = ntohs(a.sin_port);
        }
        listen_fds_.push_back(fd);
    }
    for (int s = 0; s < o_.server_procs; s++) {
        int ctl[2], out[2];
        if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) die("pipe");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::close(ctl[1]);
            ::close(out[0]);
            for (size_t k = 0; k < listen_fds_.size(); k++)
                if (int(k) != s) ::close(listen_fds_[k]);
            std::_Exit(run_ceiling_server(listen_fds_[size_t(s)], ctl[0], out[1]));
        }
        ::close(ctl[0]);
        ::close(out[1]);
        ChildProc c;
        c.pid = pid;
        c.ctl = ctl[1];
        c.out = out[0];
        fcntl(c.out, F_SETFL, O_NONBLOCK);
        epoll_event e{};
        e.events = EPOLLIN;
        e.data.u64 = kServerBase + servers_.size();
        epoll_ctl(ep_, EPOLL_CTL_ADD, c.out, &e);
        servers_.push_back(std::move(c));
    }
    for (int fd : listen_fds_) ::close(fd);
    listen_fds_.clear();
}

void Parent::spawn_children() {
    int k = o_.procs;
    if (k <= 0) k = o_.subs >= 1000 ? std::min(4, std::max(2, (o_.subs + 4999) / 5000)) : 1;
    if (k > o_.subs) k = o_.subs;
    SubConfig base;
    base.kind = o_.mode == "longpoll" ? SubKind::LongPoll : SubKind::Sse;
    base.server = o_.server;
    base.host = o_.host;
    base.port = uint16_t(o_.port);
    std::string ch = channel_of(o_, 0);
    base.path = (base.kind == SubKind::LongPoll ? o_.lp_path : o_.sub_path) + ch;
    if (o_.chan_per_sub > 0) {
        base.path = base.kind == SubKind::LongPoll ? o_.lp_path : o_.sub_path;
        base.chan_per_sub = o_.chan_per_sub;
        base.chan_base = o_.channel;
        base.id_width = o_.id_width;
    }
    base.cursor = o_.cursor;
    base.save_body = o_.save_body;
    uint64_t first_conn = 0;
    base.window = o_.window;
    base.setup_timeout_us = int64_t(o_.setup_timeout * 1e6);
    base.phase_split = uint64_t(o_.bursts);
    for (int c = 0; c < k; c++) {
        SubConfig cfg = base;
        cfg.child = c;
        cfg.count = o_.subs / k + (c < o_.subs % k ? 1 : 0);
        cfg.first_conn = first_conn;
        first_conn += uint64_t(cfg.count);
        if (o_.src_net >= 0)
            cfg.src_ip = "127.0." + std::to_string(1 + o_.src_net % 250) + "." + std::to_string(2 + c);
        int ctl[2], out[2];
        if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) die("pipe");
        std::fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::close(ctl[1]);
            ::close(out[0]);
            for (auto &kd : kids_) {
                ::close(kd.ctl);
                ::close(kd.out);
            }
            for (auto &s : servers_) {
                ::close(s.ctl);
                ::close(s.out);
            }
            ::close(ep_);
            cfg.ctl_fd = ctl[0];
            cfg.out_fd = out[1];
            std::_Exit(run_subscriber_child(cfg));
        }
        ::close(ctl[0]);
        ::close(out[1]);
        ChildProc cp;
        cp.pid = pid;
        cp.ctl = ctl[1];
        cp.out = out[0];
        fcntl(cp.out, F_SETFL, O_NONBLOCK);
        epoll_event e{};
        e.events = EPOLLIN;
        e.data.u64 = kChildBase + kids_.size();
        epoll_ctl(ep_, EPOLL_CTL_ADD, cp.out, &e);
        kids_.push_back(std::move(cp));
    }
}

void Parent::on_child_line(ChildProc &c, std::string_view line) {
    if (line.empty()) return;
    const char *p = line.data() + 2, *end = line.data() + line.size();
    uint64_t a = 0, b = 0, d = 0;
    switch (line[0]) {
    case 'R':
        parse_u64(p, end, a);
        if (p < end) p++;
        parse_u64(p, end, b);
        c.got_r = true;
        c.ready = int(a);
        c.failed = int(b);
        // A replay's first messages can come with the response head, their "D" before "R".
        for (uint64_t q = 0; q < seqs_.size(); q++)
            if (seqs_[q].dchildren > 0 && !seqs_[q].complete && reached_all(seqs_[q])) note_complete(q);
        break;
    case 'D':
        parse_u64(p, end, a);
        if (a < seqs_.size()) {
            seqs_[a].dchildren++;
            last_progress_ = now_us();
            if (reached_all(seqs_[a])) note_complete(a);
        }
        break;
    case 'S': {
        std::string_view rest(p, size_t(end - p));
        size_t sp = rest.find(' ');
        if (sp == std::string_view::npos) break;
        sums_[std::string(rest.substr(0, sp))] += std::strtoull(std::string(rest.substr(sp + 1)).c_str(), nullptr, 10);
        break;
    }
    case 'X':
        parse_u64(p, end, a);
        if (p < end) p++;
        parse_u64(p, end, b);
        sub_status_[int(a)] += b;
        break;
    case 'Q':
        parse_u64(p, end, a);
        if (p < end) p++;
        parse_u64(p, end, b);
        if (p < end) p++;
        {
            bool neg = p < end && *p == '-';
            if (neg) p++;
            parse_u64(p, end, d);
            if (a >= seqs_.size()) seqs_.resize(size_t(a) + 1);
            seqs_[a].count += b;
            if (!neg && int64_t(d) > seqs_[a].max_lat) seqs_[a].max_lat = int64_t(d);
        }
        break;
    case 'H':
        parse_u64(p, end, a);
        if (p < end) p++;
        parse_u64(p, end, b);
        if (p < end) p++;
        parse_u64(p, end, d);
        if (a < 2) hist_[a].add_bucket(size_t(b), d);
        break;
    case 'T': {
        parse_u64(p, end, a);
        if (p < end) p++;
        event_types_[std::string(p, size_t(end - p))] += a;
        break;
    }
    case 'E':
        c.got_e = true;
        if (&c >= servers_.data() && &c < servers_.data() + servers_.size())
            ceiling_info_ = std::string(line.substr(std::min<size_t>(2, line.size())));
        break;
    }
}

void Parent::note_complete(uint64_t seq) {
    SeqInfo &s = seqs_[seq];
    if (s.complete) return;
    s.complete = true;
    if (s.expected && s.status >= 0 && incomplete_ > 0) incomplete_--;
}

void Parent::connect_pub(size_t i) {
    PubConn &pc = pubs_[i];
    if (pc.fd >= 0) {
        epoll_ctl(ep_, EPOLL_CTL_DEL, pc.fd, nullptr);
        ::close(pc.fd);
    }
    pc = PubConn{};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    sockaddr_in a = make_addr(o_.host.c_str(), uint16_t(o_.pub_port));
    if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) < 0) die("connect (publisher)");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    pc.fd = fd;
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &e);
}

int Parent::idle_pub() {
    if (o_.server == Server::Ceiling) return 0;
    for (size_t i = 0; i < pubs_.size(); i++)
        if (!pubs_[i].busy) return int(i);
    return -1;
}

// Publishes message next_seq_ on an idle publisher connection (or to the
// ceiling servers). False when no connection is idle.
bool Parent::publish_next() {
    int pi = idle_pub();
    if (pi < 0) return false;
    uint64_t seq = next_seq_++;
    if (seq >= seqs_.size()) seqs_.resize(size_t(seq) + 1 + seqs_.size() / 2);
    SeqInfo &s = seqs_[seq];
    Msg m;
    std::string channel;
    if (o_.chan_per_sub > 0) {
        uint64_t total = total_channels();
        m.chan = int64_t(o_.pub_random ? rng_() % total : seq % total);
        channel = chan_name(o_.channel, uint64_t(m.chan), o_.id_width);
        s.expected = true;
    } else {
        channel = channel_of(o_, seq);
        s.expected = (!kids_.empty() || o_.replay) && seq % uint64_t(o_.pub_channels) == 0;
    }
    m.src = uint32_t(pi);
    m.seq = seq;
    m.ts = now_us();
    s.ts = m.ts;
    std::string payload = make_payload(m, o_.size);
    if (o_.server == Server::Ceiling) {
        std::string line = "P " + payload + "\n";
        for (auto &sv : servers_) write_all(sv.ctl, line);
        s.status = 1;
        s.resp = m.ts;
        if (s.expected) incomplete_++;
        if (reached_all(s) && s.expected) note_complete(seq);
        last_progress_ = now_us();
        return true;
    }
    PubConn &pc = pubs_[size_t(pi)];
    pc.busy = true;
    pc.seq = seq;
    pc.sent = m.ts;
    pc.out = "POST " + o_.pub_path + channel + " HTTP/1.1\r\nHost: " + o_.host +
             "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(payload.size()) +
             "\r\n\r\n" + payload;
    pc.off = 0;
    outstanding_++;
    if (s.expected) incomplete_++;  // taken back if the publish is refused
    pub_send(size_t(pi));
    return true;
}

void Parent::pub_send(size_t i) {
    PubConn &pc = pubs_[i];
    while (pc.off < pc.out.size()) {
        ssize_t w = ::write(pc.fd, pc.out.data() + pc.off, pc.out.size() - pc.off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                epoll_event e{};
                e.events = EPOLLIN | EPOLLOUT;
                e.data.u64 = i;
                epoll_ctl(ep_, EPOLL_CTL_MOD, pc.fd, &e);
                return;
            }
            // The connection broke before the request left: count it refused.
            uint64_t seq = pc.seq;
            pub_errors_++;
            pub_status_[0]++;
            SeqInfo &s = seqs_[seq];
            s.status = -1;
            if (s.expected && !s.complete && incomplete_ > 0) incomplete_--;
            outstanding_--;
            pub_reconnects_++;
            connect_pub(i);
            return;
        }
        pc.off += size_t(w);
    }
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = i;
    epoll_ctl(ep_, EPOLL_CTL_MOD, pc.fd, &e);
}

void Parent::pub_done(size_t i) {
    PubConn &pc = pubs_[i];
    int64_t now = now_us();
    pub_hist_.add(now - pc.sent);
    int st = pc.rh.status;
    pub_status_[st]++;
    SeqInfo &s = seqs_[pc.seq];
    s.resp = now;
    outstanding_--;
    last_progress_ = now;
    if (st >= 200 && st < 300) {
        s.status = 1;
        if (first_pub_subscribers_ < 0) {
            size_t k = pc.bodybuf.find("subscribers");
            if (k != std::string::npos) {
                k += 11;
                while (k < pc.bodybuf.size() && (pc.bodybuf[k] < '0' || pc.bodybuf[k] > '9')) k++;
                first_pub_subscribers_ = std::atoi(pc.bodybuf.c_str() + k);
            }
        }
        if (s.expected && reached_all(s)) note_complete(pc.seq);
    } else {
        s.status = -1;
        pub_errors_++;
        if (s.expected && !s.complete && incomplete_ > 0) incomplete_--;
    }
    bool close = pc.rh.close;
    pc.busy = false;
    pc.head.clear();
    pc.bodybuf.clear();
    pc.in_body = false;
    if (close) {
        pub_reconnects_++;
        connect_pub(i);
    }
}

void Parent::on_pub_event(size_t i, uint32_t ev) {
    PubConn &pc = pubs_[i];
    if (ev & EPOLLOUT) pub_send(i);
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    char buf[16384];
    ssize_t n = ::read(pc.fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        if (pc.busy) {
            pc.rh.status = 0;
            pc.rh.close = true;
            pub_done(i);
        } else {
            pub_reconnects_++;
            connect_pub(i);
        }
        return;
    }
    const char *p = buf;
    size_t len = size_t(n);
    std::string rest;
    while (len > 0) {
        if (!pc.in_body) {
            size_t old = pc.head.size();
            pc.head.append(p, len);
            size_t pos = pc.head.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
            if (pos == std::string::npos) return;
            parse_resp_head(std::string_view(pc.head.data(), pos), pc.rh);
            rest.assign(pc.head, pos + 4, std::string::npos);
            p = rest.data();
            len = rest.size();
            pc.in_body = true;
            pc.body.start(pc.rh, pc.rh.status == 204 || pc.rh.status == 304);
            if (pc.body.done()) {
                pub_done(i);
                return;
            }
            continue;
        }
        ssize_t k = pc.body.feed(p, len, [&](const char *d, size_t m) {
            if (pc.bodybuf.size() < 4096) pc.bodybuf.append(d, m);
        });
        if (k < 0) {
            pc.rh.close = true;
            pc.body.st = BodyDecoder::St::Done;
            k = ssize_t(len);
        }
        p += k;
        len -= size_t(k);
        if (pc.body.done()) {
            pub_done(i);
            return;
        }
    }
}

void Parent::pump(int64_t timeout_us) {
    epoll_event evs[256];
    if (timeout_us < 0) timeout_us = 0;
    timespec ts{time_t(timeout_us / 1000000), long(timeout_us % 1000000) * 1000};
    int n = epoll_pwait2(ep_, evs, 256, &ts, nullptr);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_pwait2");
    }
    for (int k = 0; k < n; k++) {
        uint64_t key = evs[k].data.u64;
        if (key >= kServerBase || key >= kChildBase) {
            bool server = key >= kServerBase;
            ChildProc &c = server ? servers_[key - kServerBase] : kids_[key - kChildBase];
            char buf[65536];
            for (;;) {
                ssize_t r = ::read(c.out, buf, sizeof buf);
                if (r > 0) {
                    c.lines.feed(buf, size_t(r), [&](std::string_view l) { on_child_line(c, l); });
                    continue;
                }
                if (r == 0) {
                    epoll_ctl(ep_, EPOLL_CTL_DEL, c.out, nullptr);
                    if (!c.got_r) c.got_r = true;  // died: nothing ready
                    if (!c.got_e) c.got_e = true;
                }
                break;
            }
        } else {
            on_pub_event(size_t(key), evs[k].events);
        }
    }
}

void Parent::wait_children_ready() {
    int64_t deadline = now_us() + int64_t((o_.setup_timeout + 10) * 1e6);
    for (;;) {
        bool all = true;
        for (auto &k : kids_) all = all && k.got_r;
        if (all || now_us() > deadline) break;
        pump(100000);
    }
    for (auto &k : kids_) {
        ready_ += k.ready;
        failed_ += k.got_r ? k.failed : 0;
    }
}

int Parent::query_subscribers(const std::string &channel) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a = make_addr(o_.host.c_str(), uint16_t(o_.pub_port));
    if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) < 0) {
        ::close(fd);
        return -1;
    }
    std::string req = "GET " + o_.pub_path + channel + " HTTP/1.1\r\nHost: " + o_.host +
                      "\r\nAccept: text/json\r\nConnection: close\r\n\r\n";
    if (::write(fd, req.data(), req.size()) != ssize_t(req.size())) {
        ::close(fd);
        return -1;
    }
    std::string resp;
    char buf[4096];
    for (;;) {
        ssize_t r = ::read(fd, buf, sizeof buf);
        if (r <= 0) break;
        resp.append(buf, size_t(r));
        if (resp.size() > 65536) break;
    }
    ::close(fd);
    size_t hdr = resp.find("\r\n\r\n");
    if (hdr == std::string::npos) return -1;
    size_t k = resp.find("subscribers", hdr);
    if (k == std::string::npos) return -1;
    k += 11;
    while (k < resp.size() && (resp[k] < '0' || resp[k] > '9')) k++;
    return std::atoi(resp.c_str() + k);
}

// Waits until the server counts every subscriber we hold (or a deadline):
// a long-poll request has no response head to tell us it is parked.
void Parent::wait_subscribers() {
    if (o_.server == Server::Ceiling || kids_.empty()) return;
    int64_t t0 = now_us(), deadline = t0 + int64_t(o_.subs_wait * 1e6);
    // Many channels per connection: the last connection's last channel has one subscriber.
    std::string channel = o_.chan_per_sub > 0 ? chan_name(o_.channel, total_channels() - 1, o_.id_width)
                                              : channel_of(o_, 0);
    int want = o_.chan_per_sub > 0 ? 1 : ready_;
    for (;;) {
        subs_seen_ = query_subscribers(channel);
        if (subs_seen_ >= want || now_us() > deadline) break;
        pump(20000);
    }
    subs_wait_s_ = double(now_us() - t0) / 1e6;
}

void Parent::sync_point(const char *event) {
    if (!o_.sync) return;
    std::string pids;
    for (auto &sv : servers_) pids += (pids.empty() ? "" : ",") + std::to_string(sv.pid);
    std::printf("{\"event\":\"%s\",\"ready\":%d,\"failed\":%d,\"subs_seen\":%d,\"pid\":%d,\"server_pids\":[%s]}\n",
                event, ready_, failed_, subs_seen_, int(getpid()), pids.c_str());
    std::fflush(stdout);
    char line[256];
    if (!std::fgets(line, sizeof line, stdin)) o_.sync = false;
}

// Waits until every message in `which` reached every subscriber, or nothing
// progressed for --drain seconds.
void Parent::drain(const std::vector<uint64_t> &which) {
    last_progress_ = now_us();
    int64_t hard = last_progress_ + int64_t(o_.drain_max * 1e6);
    for (;;) {
        bool done = outstanding_ == 0;
        if (done && !kids_.empty()) {
            for (uint64_t q : which) {
                const SeqInfo &s = seqs_[q];
                if (s.expected && s.status > 0 && !s.complete) {
                    done = false;
                    break;
                }
            }
        }
        if (done) {
            drained_ = true;
            return;
        }
        drained_ = false;
        if (now_us() - last_progress_ > int64_t(o_.drain * 1e6) || now_us() > hard) return;
        pump(20000);
    }
}

void Parent::collect() {
    for (auto &k : kids_) ::close(k.ctl);
    int64_t deadline = now_us() + 30000000;
    for (;;) {
        bool all = true;
        for (auto &k : kids_) all = all && k.got_e;
        if (all || now_us() > deadline) break;
        pump(50000);
    }
    for (auto &s : servers_) ::close(s.ctl);
    deadline = now_us() + 10000000;
    for (;;) {
        bool all = true;
        for (auto &s : servers_) all = all && s.got_e;
        if (all || now_us() > deadline) break;
        pump(50000);
    }
    for (auto &k : kids_) {
        int st;
        if (!k.got_e) kill(k.pid, SIGKILL);
        waitpid(k.pid, &st, 0);
    }
    for (auto &s : servers_) {
        int st;
        if (!s.got_e) kill(s.pid, SIGKILL);
        waitpid(s.pid, &st, 0);
    }
}

std::string num(double v) {
    char b[64];
    if (std::isnan(v)) return "null";
    std::snprintf(b, sizeof b, "%.3f", v);
    return b;
}

double ms(int64_t us) { return us < 0 ? NAN : double(us) / 1000.0; }

double pct_of(std::vector<double> v, double p) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    size_t k = size_t(p * double(v.size()));
    if (k >= v.size()) k = v.size() - 1;
    return v[k];
}

void Parent::print_result() {
    uint64_t published = 0, expected = 0, received = 0, lost = 0, unexpected = 0, incomplete = 0;
    std::vector<uint64_t> lost_sample;  // the first few messages someone did not get
    int64_t last_delivery = 0;
    std::vector<double> stream_fanout;
    uint64_t stream_delivered = 0;
    int targets = ready_ - int(sums_["ready"] - sums_["live"]);  // connections alive at the end
    for (uint64_t q = 0; q < next_seq_; q++) {
        const SeqInfo &s = seqs_[q];
        if (s.status > 0) published++;
        if (s.status > 0 && s.expected) {
            uint64_t want = o_.chan_per_sub > 0 ? 1 : uint64_t(ready_);
            expected += want;
            received += s.count;
            if (s.count < want) {
                lost += want - s.count;
                if (lost_sample.size() < 10) lost_sample.push_back(q);
            }
            if (!s.complete) incomplete++;
            if (q >= stream_first_ && q < stream_end_) {
                stream_delivered += s.count;
                if (s.max_lat >= 0) stream_fanout.push_back(ms(s.max_lat));
            }
        } else {
            unexpected += s.count;
        }
        if (s.max_lat >= 0) last_delivery = std::max(last_delivery, s.ts + s.max_lat);
    }
    uint64_t stream_pub = 0;
    int64_t last_resp = stream_t0_;
    for (uint64_t q = stream_first_; q < stream_end_; q++) {
        stream_pub += seqs_[q].status > 0;
        last_resp = std::max(last_resp, seqs_[q].resp);
    }
    double stream_s = double(last_resp - stream_t0_) / 1e6;
    double deliver_span = last_delivery > stream_t0_ ? double(last_delivery - stream_t0_) / 1e6 : NAN;
    uint64_t dup = sums_["dup"], ooo = sums_["ooo"], idr = sums_["id_regress"];
    bool ok = drained_ && lost == 0 && dup == 0 && ooo == 0 && idr == 0 && failed_ == 0 && unexpected == 0 &&
              sums_["bad_payload"] == 0 && sums_["bad_frame"] == 0 && sums_["misrouted"] == 0 && pub_errors_ == 0 &&
              (kids_.empty() || ready_ > 0);
    std::string j = "{\"event\":\"result\",\"mode\":\"" + o_.mode + "\",\"server\":\"" +
                    (o_.server == Server::Ours ? "ours" : o_.server == Server::Nchan ? "nchan" : "ceiling") +
                    "\",\"label\":\"" + o_.label + "\"";
    auto I = [&](const char *k, int64_t v) { j += std::string(",\"") + k + "\":" + std::to_string(v); };
    auto F = [&](const char *k, double v) { j += std::string(",\"") + k + "\":" + num(v); };
    I("subs", o_.subs);
    I("procs", int64_t(kids_.size()));
    I("ready", ready_);
    I("failed", failed_);
    I("subs_seen", subs_seen_);
    F("subs_wait_s", subs_wait_s_);
    I("first_pub_subscribers", first_pub_subscribers_);
    I("published", int64_t(published));
    I("publish_errors", int64_t(pub_errors_));
    I("pub_reconnects", int64_t(pub_reconnects_));
    F("pub_lat_p50_ms", ms(pub_hist_.pct(0.5)));
    F("pub_lat_p99_ms", ms(pub_hist_.pct(0.99)));
    j += ",\"burst_fanout_ms\":[";
    for (size_t k = 0; k < burst_fanout_ms_.size(); k++) j += (k ? "," : "") + num(burst_fanout_ms_[k]);
    j += "]";
    F("burst_fanout_med_ms", pct_of(burst_fanout_ms_, 0.5));
    F("burst_lat_p50_ms", ms(hist_[0].pct(0.5)));
    F("burst_lat_p99_ms", ms(hist_[0].pct(0.99)));
    I("stream_msgs", int64_t(stream_pub));
    F("stream_pub_s", stream_s);
    F("pub_rate", stream_s > 0 ? double(stream_pub) / stream_s : NAN);
    F("max_sched_lag_ms", ms(max_sched_lag_));
    F("stream_fanout_med_ms", pct_of(stream_fanout, 0.5));
    F("stream_fanout_p99_ms", pct_of(stream_fanout, 0.99));
    F("stream_lat_p50_ms", ms(hist_[1].pct(0.5)));
    F("stream_lat_p99_ms", ms(hist_[1].pct(0.99)));
    F("stream_span_s", deliver_span);
    I("stream_deliveries", int64_t(stream_delivered));
    F("deliveries_per_s", deliver_span > 0 ? double(stream_delivered) / deliver_span : NAN);
    I("expected", int64_t(expected));
    I("received", int64_t(received));
    I("lost", int64_t(lost));
    j += ",\"lost_seqs\":[";
    for (size_t k = 0; k < lost_sample.size(); k++) j += (k ? "," : "") + std::to_string(lost_sample[k]);
    j += "]";
    I("dup", int64_t(dup));
    I("ooo", int64_t(ooo));
    I("id_regress", int64_t(idr));
    I("unexpected", int64_t(unexpected));
    I("incomplete_msgs", int64_t(incomplete));
    j += std::string(",\"drained\":") + (drained_ ? "true" : "false");
    I("targets_alive", targets);
    for (const char *k : {"disconnects", "reconnects", "connect_errors", "http_errors", "other_events",
                          "bad_payload", "bad_frame", "responses", "misrouted", "body_bytes"})
        I(k, int64_t(sums_[k]));
    I("chan_per_sub", o_.chan_per_sub);
    F("msgs_per_answer", sums_["responses"] ? double(received) / double(sums_["responses"]) : NAN);
    if (o_.replay) {
        // The time to the last message means something only when every message came.
        F("replay_ms", lost == 0 && t_sub_ && last_delivery > t_sub_ ? double(last_delivery - t_sub_) / 1000.0 : NAN);
        F("replay_wait_ms", double(t_sub_end_ - t_sub_) / 1000.0);
    }
    j += ",\"sub_status\":{";
    bool first = true;
    for (auto &[c, n] : sub_status_) {
        j += (first ? "\"" : ",\"") + std::to_string(c) + "\":" + std::to_string(n);
        first = false;
    }
    j += "},\"other_event_types\":{";
    first = true;
    for (auto &[name, n] : event_types_) {
        j += (first ? "\"" : ",\"") + name + "\":" + std::to_string(n);
        first = false;
    }
    j += "},\"pub_status\":{";
    first = true;
    for (auto &[c, n] : pub_status_) {
        j += (first ? "\"" : ",\"") + std::to_string(c) + "\":" + std::to_string(n);
        first = false;
    }
    j += "}";
    if (!ceiling_info_.empty()) j += ",\"ceiling_server\":\"" + ceiling_info_ + "\"";
    F("wall_s", double(now_us() - t_start_) / 1e6);
    j += std::string(",\"ok\":") + (ok ? "true" : "false") + "}";
    std::printf("%s\n", j.c_str());
    std::fflush(stdout);
}

int Parent::run() {
    t_start_ = now_us();
    rng_.seed(o_.seed);
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
    if (o_.replay) return run_replay();
    if (o_.server == Server::Ceiling) spawn_ceiling_servers();
    if (o_.subs > 0) spawn_children();
    wait_children_ready();
    wait_subscribers();
    sync_point("ready");

    if (o_.server != Server::Ceiling) {
        pubs_.resize(size_t(o_.pub_conns));
        for (size_t i = 0; i < pubs_.size(); i++) connect_pub(i);
    }

    // Phase 1: single-message bursts, each waited for until everywhere.
    for (int b = 0; b < o_.bursts; b++) {
        while (!publish_next()) pump(1000);
        uint64_t seq = next_seq_ - 1;
        drain({seq});
        const SeqInfo &s = seqs_[seq];
        // Fan-out time = publish -> last delivery; the children's max latency
        // arrives only with their final report, so track it from D lines here.
        burst_fanout_ms_.push_back(s.complete ? ms(now_us() - s.ts) : NAN);
        int64_t until = now_us() + int64_t(o_.burst_gap * 1e6);
        while (now_us() < until) pump(until - now_us());
    }
    // Lets a driver take the server's CPU for the single messages alone.
    if (o_.bursts > 0 && (o_.msgs > 0 || o_.duration > 0)) sync_point("bursts");

    stream_phase();
    stream_end_ = next_seq_;
    if (stream_t1_ == 0) stream_t1_ = stream_t0_;
    std::vector<uint64_t> all;
    for (uint64_t q = 0; q < next_seq_; q++) all.push_back(q);
    drain(all);
    // Burst fan-out from D completion times above is an upper bound; the exact
    // figure (publish -> last delivery) comes from the children's reports below.
    sync_point("done");
    collect();
    for (int b = 0; b < o_.bursts && size_t(b) < seqs_.size(); b++)
        if (seqs_[size_t(b)].max_lat >= 0) burst_fanout_ms_[size_t(b)] = ms(seqs_[size_t(b)].max_lat);
    print_result();
    return 0;
}

// Phase 2: a stream of messages at --rate (0 = flat out), --msgs of them or for
// --duration seconds.
void Parent::stream_phase() {
    stream_first_ = next_seq_;
    stream_t0_ = now_us();
    if (o_.msgs > 0 || o_.duration > 0) {
        int64_t end = o_.duration > 0 ? stream_t0_ + int64_t(o_.duration * 1e6) : INT64_MAX;
        uint64_t limit = o_.msgs > 0 ? uint64_t(o_.msgs) : UINT64_MAX;
        double interval = o_.rate > 0 ? 1e6 / o_.rate : 0;
        uint64_t sent = 0;
        int64_t hard = t_start_ + int64_t(o_.timeout * 1e6);
        while (sent < limit) {
            int64_t now = now_us();
            if (now >= end || now >= hard) break;
            int64_t target = stream_t0_ + int64_t(double(sent) * interval);
            if (now < target) {
                pump(target - now);
                continue;
            }
            if (publish_next()) {
                if (now - target > max_sched_lag_) max_sched_lag_ = now - target;
                stream_t1_ = now_us();
                sent++;
            } else {
                pump(o_.rate > 0 ? 200 : 5000);
            }
        }
    }
}

// --replay: publish everything first, then subscribe from --cursor and time how
// long the subscribers take to receive it all (and check it: every message once,
// in order).
int Parent::run_replay() {
    pubs_.resize(size_t(o_.pub_conns));
    for (size_t i = 0; i < pubs_.size(); i++) connect_pub(i);
    stream_phase();
    stream_end_ = next_seq_;
    while (outstanding_ > 0 && now_us() - last_progress_ < int64_t(o_.drain * 1e6)) pump(20000);
    sync_point("published");
    t_sub_ = now_us();
    if (o_.subs > 0) spawn_children();
    wait_children_ready();
    std::vector<uint64_t> all;
    for (uint64_t q = 0; q < next_seq_; q++) all.push_back(q);
    drain(all);
    t_sub_end_ = now_us();
    sync_point("done");
    collect();
    print_result();
    return 0;
}

// One GET on a fresh connection, read to the end of the body with the same read
// size as a subscriber child. Returns the time from connect() to the last byte, in
// ms (NaN on any error); `bytes` = body bytes.
double fetch_once(const Opts &o, uint64_t &bytes, int &status) {
    static char buf[1 << 18];
    bytes = 0;
    status = 0;
    int64_t t0 = now_us();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a = make_addr(o.host.c_str(), uint16_t(o.port));
    if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) < 0) {
        ::close(fd);
        return NAN;
    }
    std::string req = "GET " + o.path + " HTTP/1.1\r\nHost: " + o.host + "\r\nConnection: close\r\n" +
                      (o.header.empty() ? std::string() : o.header + "\r\n") + "\r\n";
    write_all(fd, req);
    std::string head;
    RespHead rh;
    BodyDecoder body;
    bool in_body = false;
    for (;;) {
        ssize_t r = ::read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        const char *p = buf;
        size_t n = size_t(r);
        std::string rest;
        if (!in_body) {
            head.append(p, n);
            size_t pos = head.find("\r\n\r\n");
            if (pos == std::string::npos) continue;
            parse_resp_head(std::string_view(head.data(), pos), rh);
            status = rh.status;
            body.start(rh, false);
            rest.assign(head, pos + 4, std::string::npos);
            p = rest.data();
            n = rest.size();
            in_body = true;
        }
        if (body.feed(p, n, [&](const char *, size_t m) { bytes += m; }) < 0) break;
        if (body.done() || (o.until_bytes > 0 && bytes >= o.until_bytes)) break;
    }
    int64_t t1 = now_us();
    ::close(fd);
    bool whole = o.until_bytes > 0 ? bytes >= o.until_bytes : body.done();
    return in_body && whole && status == 200 ? double(t1 - t0) / 1000.0 : NAN;
}

int run_fetch(const Opts &o) {
    std::vector<double> times;
    uint64_t bytes = 0;
    int status = 0;
    bool ok = true;
    for (int k = 0; k < std::max(1, o.repeat); k++) {
        double t = fetch_once(o, bytes, status);
        if (std::isnan(t)) ok = false;
        else times.push_back(t);
    }
    std::string j = "{\"event\":\"result\",\"mode\":\"fetch\",\"path\":\"" + o.path + "\",\"status\":" +
                    std::to_string(status) + ",\"bytes\":" + std::to_string(bytes) + ",\"times_ms\":[";
    for (size_t k = 0; k < times.size(); k++) j += (k ? "," : "") + num(times[k]);
    j += "],\"fetch_ms\":" + num(pct_of(times, 0.5)) + ",\"ok\":" + (ok ? "true" : "false") + "}";
    std::printf("%s\n", j.c_str());
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
    std::signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && std::string(argv[1]) == "attack") return attack_main(argc, argv);
    Opts o = parse_opts(argc, argv);
    // The whole run is bounded: children die with us (PR_SET_PDEATHSIG).
    alarm(unsigned(o.timeout + 60));
    if (o.mode == "fetch") return run_fetch(o);
    Parent p(o);
    return p.run();
}
