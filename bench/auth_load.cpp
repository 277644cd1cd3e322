// auth_load: the load generator of bench/auth-bench.py (C++17, epoll, libc only).
//
//   auth_load lp  --port P --path PATH --conns C --seconds S [--tokens FILE] [--auth bearer|cookie|none]
//   auth_load sub --port P --path PATH --conns C --seconds S [--tokens FILE] [--auth ...]
//
// lp:  C keep-alive connections send GET PATH back to back, each reading the whole answer
//      (a long poll answered at once: PATH carries a cursor with a message after it).
// sub: C slots each open a connection, send GET PATH (an SSE subscribe), read the header
//      and the first bytes of the stream, close, and start over: subscribes per second.
// Request n carries token n mod (lines of FILE). Prints one JSON line: answers, seconds,
// answers by status, connection errors.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace {

struct Opts {
    std::string mode, path = "/", auth = "bearer", tokens_file;
    int port = 0, conns = 16;
    double seconds = 3;
};

struct Conn {
    int fd = -1;
    std::string out, in;
    size_t sent = 0;
    bool connecting = false;
};

Opts opts;
std::vector<std::string> tokens;
size_t next_token = 0;
int epfd = -1;
std::map<int, long> by_status;
long answers = 0, errors = 0;

[[noreturn]] void usage(const char *why) {
    std::fprintf(stderr, "auth_load: %s\nusage: auth_load lp|sub --port P --path PATH --conns C --seconds S "
                         "[--tokens FILE] [--auth bearer|cookie|none]\n", why);
    std::exit(2);
}

std::string request() {
    std::string r = "GET " + opts.path + " HTTP/1.1\r\nHost: bench\r\n";
    if (!tokens.empty() && opts.auth != "none") {
        const std::string &t = tokens[next_token++ % tokens.size()];
        r += opts.auth == "cookie" ? "Cookie: channels_jwt=" + t + "\r\n" : "Authorization: Bearer " + t + "\r\n";
    }
    if (opts.mode == "sub") r += "Accept: text/event-stream\r\nConnection: close\r\n";
    return r + "\r\n";
}

void watch(Conn &c, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = &c;
    if (epoll_ctl(epfd, op, c.fd, &ev) != 0) {
        std::perror("epoll_ctl");
        std::exit(1);
    }
}

void open_conn(Conn &c) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(opts.port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(c.fd, reinterpret_cast<sockaddr *>(&sa), sizeof sa);
    c.connecting = rc != 0 && errno == EINPROGRESS;
    c.in.clear();
    c.out = request();
    c.sent = 0;
    watch(c, EPOLLOUT | EPOLLIN, EPOLL_CTL_ADD);
}

void restart(Conn &c, bool failed) {
    errors += failed;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    open_conn(c);
}

// Length of a complete response at the start of in (0: not complete yet). lp answers
// carry Content-Length, or none for 204.
size_t complete_response(const std::string &in, int *status) {
    size_t end = in.find("\r\n\r\n");
    if (end == std::string::npos || in.size() < 12) return 0;
    *status = std::atoi(in.c_str() + 9);
    if (opts.mode == "sub") {
        // A stream: its header and first bytes. A refusal: its short body.
        return *status == 200 ? (in.size() > end + 4 ? in.size() : 0) : in.size();
    }
    size_t body = 0;
    const char *cl = strcasestr(in.c_str(), "\r\ncontent-length:");
    if (cl != nullptr && cl < in.c_str() + end) body = size_t(std::atol(cl + 17));
    return in.size() >= end + 4 + body ? end + 4 + body : 0;
}

void on_event(Conn &c, uint32_t events) {
    if (events & (EPOLLERR | EPOLLHUP) && !(events & EPOLLIN)) {
        restart(c, true);
        return;
    }
    if (c.sent < c.out.size()) {
        ssize_t n = write(c.fd, c.out.data() + c.sent, c.out.size() - c.sent);
        if (n < 0 && errno != EAGAIN) {
            restart(c, true);
            return;
        }
        if (n > 0) c.sent += size_t(n);
        if (c.sent == c.out.size()) watch(c, EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    char buf[16384];
    ssize_t n = read(c.fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        restart(c, opts.mode != "sub" || c.in.empty());
        return;
    }
    if (n < 0) return;
    c.in.append(buf, size_t(n));
    int status = 0;
    size_t len = complete_response(c.in, &status);
    if (len == 0) return;
    answers++;
    by_status[status]++;
    if (opts.mode == "sub") {
        restart(c, false);
        return;
    }
    c.in.erase(0, len);
    c.out = request();
    c.sent = 0;
    watch(c, EPOLLOUT | EPOLLIN, EPOLL_CTL_MOD);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) usage("missing mode");
    opts.mode = argv[1];
    if (opts.mode != "lp" && opts.mode != "sub") usage("unknown mode");
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--port") opts.port = std::atoi(v.c_str());
        else if (k == "--path") opts.path = v;
        else if (k == "--conns") opts.conns = std::atoi(v.c_str());
        else if (k == "--seconds") opts.seconds = std::atof(v.c_str());
        else if (k == "--tokens") opts.tokens_file = v;
        else if (k == "--auth") opts.auth = v;
        else usage(("unknown option " + k).c_str());
    }
    if (opts.port <= 0 || opts.conns <= 0) usage("--port and --conns are required");
    if (!opts.tokens_file.empty()) {
        std::ifstream f(opts.tokens_file);
        for (std::string line; std::getline(f, line);) {
            if (!line.empty()) tokens.push_back(line);
        }
        if (tokens.empty()) usage("no token in --tokens");
    }
    epfd = epoll_create1(0);
    std::vector<Conn> conns(size_t(opts.conns));
    for (Conn &c : conns) open_conn(c);
    auto start = std::chrono::steady_clock::now();
    auto deadline = start + std::chrono::duration<double>(opts.seconds);
    epoll_event evs[256];
    while (std::chrono::steady_clock::now() < deadline) {
        int n = epoll_wait(epfd, evs, 256, 50);
        for (int i = 0; i < n; i++) on_event(*static_cast<Conn *>(evs[i].data.ptr), evs[i].events);
    }
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"answers\":%ld,\"seconds\":%.3f,\"errors\":%ld,\"status\":{", answers, took, errors);
    bool first = true;
    for (auto &[status, count] : by_status) {
        std::printf("%s\"%d\":%ld", first ? "" : ",", status, count);
        first = false;
    }
    std::printf("}}\n");
    return 0;
}
