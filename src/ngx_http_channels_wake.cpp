// Wake-ups between worker processes (see ngx_http_channels_wake.h).

#include "ngx_http_channels_wake.h"

extern "C" {
#include <ngx_event.h>
}

#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace channels {
namespace {

constexpr size_t kMaxPending = 16;       // zones with wake-ups asked for in this turn
constexpr size_t kMaxTargets = 1024;     // worker processes woken per zone
constexpr int kReadsPerEvent = 256;      // datagrams read before other events get a turn
constexpr int kBindTries = 8;            // random names tried when the plain one is taken

struct Pending {
    uintptr_t zone_key;
    Store    *store;
    uint64_t  bits;
};

WakeHandlers handlers;
ngx_connection_t *conn;                  // our socket in the event loop
ngx_pid_t master;                        // names are "nginx-channels/<master>/<pid>[/<nonce>]"
uint32_t own_nonce;                      // 0: this worker has the plain name
Pending pending[kMaxPending];
size_t npending;
ngx_event_t flush_event;

socklen_t socket_name(ngx_pid_t pid, uint32_t nonce, sockaddr_un *sa) {
    ngx_memzero(sa, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    // sun_path[0] stays '\0': the abstract namespace, nothing on disk.
    auto *start = reinterpret_cast<u_char *>(sa->sun_path) + 1;
    size_t room = sizeof(sa->sun_path) - 1;
    u_char *end = nonce == 0 ? ngx_snprintf(start, room, "nginx-channels/%P/%P", master, pid)
                             : ngx_snprintf(start, room, "nginx-channels/%P/%P/%08xD", master, pid, nonce);
    return socklen_t(offsetof(sockaddr_un, sun_path) + (reinterpret_cast<char *>(end) - sa->sun_path));
}

void send_wake(ngx_pid_t pid, uint32_t nonce, uintptr_t zone_key) {
    sockaddr_un sa;
    socklen_t len = socket_name(pid, nonce, &sa);
    // ECONNREFUSED: that worker is gone; EAGAIN: its queue is full, a wake-up is pending.
    if (sendto(conn->fd, &zone_key, sizeof(zone_key), MSG_DONTWAIT, reinterpret_cast<sockaddr *>(&sa), len) < 0 &&
        errno != ECONNREFUSED && errno != EAGAIN && errno != ENOENT) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, ngx_errno, "channels: waking worker %P failed", pid);
    }
}

void flush_handler(ngx_event_t *) noexcept { wake_flush_now(); }

// After a shutdown began: the socket stays open for sending (an exiting worker may still
// finish a publish that must wake the new workers), what arrives is dropped.
void drain_handler(ngx_event_t *rev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(rev->data);
    uintptr_t key;
    for (int i = 0; i < kReadsPerEvent && recv(c->fd, &key, sizeof(key), 0) >= 0; i++) {
    }
}

void read_handler(ngx_event_t *rev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(rev->data);
    if (c->close) {
        // ngx_close_idle_connections(): the worker is shutting down gracefully.
        c->close = 0;
        c->idle = 0;
        c->read->handler = drain_handler;
        handlers.shutdown();
        return;
    }
    uintptr_t keys[kMaxPending];
    size_t nkeys = 0;
    int reads = 0;
    for (; reads < kReadsPerEvent; reads++) {
        uintptr_t key;
        ssize_t n = recv(c->fd, &key, sizeof(key), 0);
        if (n < 0) break;
        if (n != ssize_t(sizeof(key))) continue;
        bool seen = false;
        for (size_t i = 0; i < nkeys; i++) seen |= keys[i] == key;
        if (!seen && nkeys < kMaxPending) keys[nkeys++] = key;
    }
    if (reads == kReadsPerEvent) {
        ngx_post_event(rev, &ngx_posted_next_events);   // more may wait: after other events
    }
    for (size_t i = 0; i < nkeys; i++) handlers.woken(keys[i]);
}

// Binds the plain name; when another process holds it (any local user can bind abstract
// names, also those of pids to come), a name no one can guess: the zone's worker record
// tells the others which.
ngx_int_t bind_name(ngx_socket_t fd, ngx_log_t *log) {
    own_nonce = 0;
    for (int attempt = 0; attempt <= kBindTries; attempt++) {
        sockaddr_un sa;
        socklen_t len = socket_name(ngx_pid, own_nonce, &sa);
        if (bind(fd, reinterpret_cast<sockaddr *>(&sa), len) == 0) {
            if (own_nonce != 0) {
                ngx_log_error(NGX_LOG_WARN, log, 0,
                              "channels: the wake-up socket name of this worker was taken by another "
                              "process; using a random one");
            }
            return NGX_OK;
        }
        if (ngx_socket_errno != EADDRINUSE) break;
        if (getrandom(&own_nonce, sizeof(own_nonce), 0) != ssize_t(sizeof(own_nonce))) break;
        own_nonce |= 1;   // never 0, the plain name
    }
    ngx_log_error(NGX_LOG_EMERG, log, ngx_socket_errno, "channels: bind() of the wake-up socket failed");
    return NGX_ERROR;
}

}  // namespace

uint32_t wake_nonce() { return own_nonce; }

ngx_int_t wake_init_worker(ngx_cycle_t *cycle, WakeHandlers h) {
    handlers = h;
    npending = 0;
    master = ngx_process == NGX_PROCESS_WORKER ? getppid() : ngx_pid;
    ngx_socket_t fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_socket_errno, "channels: socket() failed");
        return NGX_ERROR;
    }
    if (bind_name(fd, cycle->log) != NGX_OK) {
        close(fd);
        return NGX_ERROR;
    }
    ngx_connection_t *c = ngx_get_connection(fd, cycle->log);
    if (c == nullptr) {
        close(fd);
        return NGX_ERROR;
    }
    c->read->handler = read_handler;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    c->idle = 1;   // so that a graceful shutdown reaches read_handler with c->close set
    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_close_connection(c);
        return NGX_ERROR;
    }
    conn = c;
    flush_event.handler = flush_handler;
    flush_event.log = cycle->log;
    return NGX_OK;
}

void wake_exit_worker() {
    if (flush_event.posted) {
        ngx_delete_posted_event(&flush_event);
    }
    if (conn != nullptr) {
        ngx_close_connection(conn);
        conn = nullptr;
    }
}

void wake_others(uintptr_t zone_key, Store *store, uint64_t bits) {
    if (conn == nullptr || bits == 0) return;
    size_t i = 0;
    while (i < npending && pending[i].zone_key != zone_key) i++;
    if (i == npending) {
        if (npending == kMaxPending) wake_flush_now();
        i = npending++;
        pending[i] = {zone_key, store, 0};
    }
    pending[i].bits |= bits;
    if (!flush_event.posted) {
        ngx_post_event(&flush_event, &ngx_posted_events);
    }
}

void wake_siblings(uintptr_t zone_key) {
    if (conn == nullptr || master == ngx_pid) return;
    char path[64], text[8192];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", int(master), int(master));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0) return;
    text[n] = '\0';
    for (char *p = text, *end; *p != '\0'; p = end) {
        long pid = strtol(p, &end, 10);
        if (end == p) break;
        if (pid > 0 && pid != ngx_pid) send_wake(ngx_pid_t(pid), 0, zone_key);
    }
}

void wake_flush_now() {
    if (flush_event.posted) {
        ngx_delete_posted_event(&flush_event);
    }
    WakeTarget targets[kMaxTargets];
    for (size_t i = 0; i < npending; i++) {
        size_t n = pending[i].store->wake_targets(pending[i].bits, targets, kMaxTargets);
        for (size_t k = 0; k < n; k++) send_wake(targets[k].pid, targets[k].nonce, pending[i].zone_key);
    }
    npending = 0;
}

}  // namespace channels
