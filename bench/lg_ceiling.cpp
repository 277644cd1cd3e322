// The ceiling: the least an SSE server can do. Accepts connections, answers
// each request with an SSE response head, and for every message the parent
// hands over (a line "P <payload>" on ctl_fd) formats one chunked SSE frame
// and writes that same buffer to every subscriber. Two of these share the
// port through SO_REUSEPORT, like nginx's two workers.
#include "lg_common.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

namespace lg {
namespace {

constexpr uint64_t kListenKey = ~uint64_t(0);
constexpr uint64_t kCtlKey = ~uint64_t(0) - 1;

struct CConn {
    int fd = -1;
    bool subscribed = false;
    size_t pos = 0;       // index in subs_ while subscribed
    std::string in;       // request bytes until the blank line
    std::string pending;  // unsent bytes (socket buffer full)
};

class Ceiling {
public:
    Ceiling(int lfd, int ctl, int out) : lfd_(lfd), ctl_(ctl), out_(out) {}
    int run();

private:
    void accept_all();
    void on_conn(size_t i, uint32_t ev);
    void send(size_t i, const char *p, size_t n);
    void add_frame(std::string_view payload);
    void publish();
    void drop(size_t i);

    int lfd_, ctl_, out_, ep_ = -1;
    std::vector<CConn> conns_;
    std::vector<size_t> free_;
    std::vector<size_t> subs_;  // indexes of subscribed connections
    uint64_t blocked_ = 0, published_ = 0;
    std::string frame_, events_;
};

void Ceiling::accept_all() {
    for (;;) {
        int fd = accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        size_t i;
        if (!free_.empty()) {
            i = free_.back();
            free_.pop_back();
        } else {
            i = conns_.size();
            conns_.emplace_back();
        }
        conns_[i] = CConn{};
        conns_[i].fd = fd;
        epoll_event e{};
        e.events = EPOLLIN;
        e.data.u64 = i;
        epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &e);
    }
}

void Ceiling::drop(size_t i) {
    CConn &c = conns_[i];
    if (c.fd < 0) return;
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    c.fd = -1;
    if (c.subscribed) {
        size_t last = subs_.back();
        subs_[c.pos] = last;
        conns_[last].pos = c.pos;
        subs_.pop_back();
    }
    c = CConn{};
    free_.push_back(i);
}

void Ceiling::send(size_t i, const char *p, size_t n) {
    CConn &c = conns_[i];
    if (!c.pending.empty()) {
        c.pending.append(p, n);
        return;
    }
    ssize_t w = ::write(c.fd, p, n);
    if (w < 0) {
        if (errno != EAGAIN) {
            drop(i);
            return;
        }
        w = 0;
    }
    if (size_t(w) < n) {
        blocked_++;
        c.pending.assign(p + w, n - size_t(w));
        epoll_event e{};
        e.events = EPOLLIN | EPOLLOUT;
        e.data.u64 = i;
        epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &e);
    }
}

void Ceiling::on_conn(size_t i, uint32_t ev) {
    CConn &c = conns_[i];
    if (c.fd < 0) return;
    if (ev & EPOLLOUT) {
        std::string p;
        p.swap(c.pending);
        send(i, p.data(), p.size());
        if (conns_[i].fd >= 0 && conns_[i].pending.empty()) {
            epoll_event e{};
            e.events = EPOLLIN;
            e.data.u64 = i;
            epoll_ctl(ep_, EPOLL_CTL_MOD, conns_[i].fd, &e);
        }
    }
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    char buf[4096];
    ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
        drop(i);
        return;
    }
    if (c.subscribed) return;  // nothing more is expected from a subscriber
    c.in.append(buf, size_t(n));
    if (c.in.find("\r\n\r\n") == std::string::npos) {
        if (c.in.size() > 16384) drop(i);
        return;
    }
    c.in.clear();
    c.in.shrink_to_fit();
    c.subscribed = true;
    c.pos = subs_.size();
    subs_.push_back(i);
    static constexpr std::string_view head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    send(i, head.data(), head.size());
}

// Appends one SSE event to the batch being formatted.
void Ceiling::add_frame(std::string_view payload) {
    Msg m;
    if (!parse_payload(payload.data(), payload.data() + payload.size(), m)) return;
    published_++;
    events_ += "id: " + std::to_string(m.seq) + "-0\ndata: ";
    events_.append(payload);
    events_ += "\n\n";
}

// One formatted buffer per batch of messages (everything that arrived since
// the last wake-up), one chunk, one write per subscriber.
void Ceiling::publish() {
    if (events_.empty()) return;
    char hex[24];
    int hn = std::snprintf(hex, sizeof hex, "%zx\r\n", events_.size());
    frame_.assign(hex, size_t(hn));
    frame_ += events_;
    frame_ += "\r\n";
    events_.clear();
    std::vector<size_t> targets(subs_);  // send() may drop and reorder subs_
    for (size_t i : targets)
        if (conns_[i].fd >= 0 && conns_[i].subscribed) send(i, frame_.data(), frame_.size());
}

int Ceiling::run() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
    fcntl(ctl_, F_SETFL, O_NONBLOCK);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = kListenKey;
    epoll_ctl(ep_, EPOLL_CTL_ADD, lfd_, &e);
    e.data.u64 = kCtlKey;
    epoll_ctl(ep_, EPOLL_CTL_ADD, ctl_, &e);
    std::vector<epoll_event> evs(1024);
    LineBuf ctl_lines;
    bool done = false;
    while (!done) {
        int n = epoll_wait(ep_, evs.data(), int(evs.size()), 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            uint64_t key = evs[size_t(k)].data.u64;
            if (key == kListenKey) {
                accept_all();
            } else if (key == kCtlKey) {
                char buf[65536];
                for (;;) {  // take everything queued, then write it once
                    ssize_t r = ::read(ctl_, buf, sizeof buf);
                    if (r <= 0) {
                        if (r == 0 || (errno != EAGAIN && errno != EINTR)) done = true;
                        break;
                    }
                    ctl_lines.feed(buf, size_t(r), [&](std::string_view line) {
                        if (line.size() > 2 && line[0] == 'P') add_frame(line.substr(2));
                    });
                }
                publish();
            } else {
                on_conn(size_t(key), evs[size_t(k)].events);
            }
        }
    }
    write_all(out_, "E " + std::to_string(subs_.size()) + " " + std::to_string(blocked_) + " " +
                        std::to_string(published_) + "\n");
    return 0;
}

}  // namespace

int run_ceiling_server(int listen_fd, int ctl_fd, int out_fd) {
    Ceiling c(listen_fd, ctl_fd, out_fd);
    return c.run();
}

}  // namespace lg
