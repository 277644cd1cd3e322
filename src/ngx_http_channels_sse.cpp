// sse_channel: EventSource subscribers (SPEC §4).
//
// A stream starts as a parked request (count++, NGX_DONE): the header, retry, gap notices
// and replay go through nginx's output filters. Then, for plain HTTP/1.1 streams (chunked,
// no subrequest, nothing registered on the request pool such as limit_conn), the stream is
// detached: the request is logged and freed, and only the connection and this object stay,
// about a tenth of the memory of a parked request. A detached stream writes the shared,
// pre-chunked frames of each message straight to the socket (writev, or SSL_write).
//
// Streams that stay requests (HTTP/2, HTTP/1.0, limit_conn, …) keep going through the
// filters: over HTTP/1.x their output chain points into the shared frames; HTTP/2 copies
// each frame into the stream's own recycled buffers, because an HTTP/2 stream may still
// send queued data after its request cleanup ran.

#include <sys/uio.h>

#include <algorithm>
#include <new>

#include "channels/json.h"
#include "channels/jwt.h"
#include "channels/sse_format.h"
#include "ngx_http_channels.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_jwt.h"
#include "ngx_http_channels_store.h"

namespace chn {
namespace {

constexpr size_t kMaxUnsent = 1024 * 1024;   // SPEC §4: queued past this, the subscriber is cut off
constexpr ngx_msec_t kStallWindow = 5000;     // a replay that makes no progress this long: cut off
constexpr size_t kReplayPage = 64;            // a replay is read from the store in pages
constexpr size_t kReplayPageBytes = 256 * 1024;
constexpr size_t kCopyBufferSize = 4096;
constexpr size_t kMaxIovecs = 64;
const char kBufTag = 0;                      // identifies our bufs in chains

Frame *shared_frames[4];                     // ping (bare, chunked), end of chunked stream

Frame *make_frame(std::string_view bytes) {
    Frame *f = frame_new(bytes);
    if (f == nullptr) throw std::bad_alloc();
    return f;
}

// An event as it goes on the wire: bare, or as one HTTP/1.1 chunk.
Frame *wire_frame(std::string_view event, bool chunked) {
    if (!chunked) return make_frame(event);
    char head[20];
    size_t n = size_t(ngx_sprintf(reinterpret_cast<u_char *>(head), "%xz\r\n", event.size()) -
                      reinterpret_cast<u_char *>(head));
    std::string text;
    text.reserve(n + event.size() + 2);
    text.append(head, n).append(event).append("\r\n");
    return make_frame(text);
}

Frame *shared_frame(size_t which, std::string_view bytes) {
    if (shared_frames[which] == nullptr) shared_frames[which] = make_frame(bytes);
    return shared_frames[which];
}

Frame *ping_frame(bool chunked) {
    return chunked ? shared_frame(1, "3\r\n:\n\n\r\n") : shared_frame(0, ":\n\n");
}

Frame *end_frame() { return shared_frame(2, "0\r\n\r\n"); }

std::string message_event(const MessageCopy &m, bool named) {
    char id[channels::kMaxIdText];
    std::string_view id_text{id, channels::format_id(m.id, id)};
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    std::string text;
    text.reserve(channels::sse_event_size(id_text, event, m.data));
    channels::append_sse_event(text, id_text, event, m.data);
    return text;
}

std::string deleted_event(const MessageCopy &m) {
    std::string json = "{\"channel\":";
    channels::append_json_string(json, m.channel_id);
    json += '}';
    char id[channels::kMaxIdText];
    std::string out;
    channels::append_sse_event(out, {id, channels::format_id(m.id, id)}, "channel-deleted", json);
    return out;
}

void append_gap_event(std::string &out, std::string_view channel, MessageId cursor, MessageId oldest) {
    std::string json = "{\"channel\":";
    channels::append_json_string(json, channel);
    json += ",\"last_event_id\":";
    append_json_id(json, cursor);
    json += ",\"oldest_event_id\":";
    append_json_id(json, oldest);
    json += '}';
    channels::append_sse_event(out, {}, "channel-gap", json);
}

Frame *frame_of(ngx_buf_t *b) { return reinterpret_cast<Frame *>(b->start - offsetof(Frame, data)); }

void detached_read_handler(ngx_event_t *rev) noexcept;
void detached_write_handler(ngx_event_t *wev) noexcept;

class SseSubscriber final : public Subscriber {
public:
    SseSubscriber(ngx_http_request_t *r, WorkerZone *zone, bool multi_channel)
        : conn(r->connection), multi(multi_channel) {
        request = r;
        wz = zone;
#if (NGX_HTTP_V2)
        copy_frames = r->stream != nullptr;
#endif
    }

    void on_message(const MessageCopy &m, Link &link, MessageFrames &frames) override {
        if (catching_up && m.kind != EntryKind::deleted) return;   // the replay reads it
        MessageId before = cursor;
        if (!catching_up) cursor = std::max(cursor, m.id);   // the replay's position otherwise
        if (m.kind == EntryKind::deleted) {
            Frame *&frame = frames.slot(false, detached);
            if (frame == nullptr) frame = wire_frame(deleted_event(m), detached);
            link.active = false;
            leaving = true;
            append(frame);
            return;
        }
        if (m.channel_dropped > before) {
            std::string text;
            append_gap_event(text, m.channel_id, before, m.channel_oldest);
            append_owned(text);
        }
        Frame *&frame = frames.slot(multi, detached);
        if (frame == nullptr) frame = wire_frame(message_event(m, multi), detached);
        append(frame);
    }

    // Entry points capture the connection first: ending or aborting a request-mode stream
    // may free this object (request cleanup) before nginx's posted requests are run.
    void on_flush() override {
        ngx_connection_t *c = request_connection();
        if (leaving) leave_deleted_channels();
        if (send() == NGX_OK && nactive == 0) end_stream();
        run_posted(c);
    }

    // The worker is going away: end the stream now. A client that cannot take the end at
    // once is closed rather than allowed to hold the old worker (it resumes anyway).
    void on_shutdown() override {
        ngx_connection_t *c = request_connection();
        if (send() != NGX_OK) {
            run_posted(c);
            return;
        }
        if (detached) {
            stop();
            append(end_frame());
            write_frames();   // one attempt
            close_detached();
            return;
        }
        if (conn->buffered || busy != nullptr) {
            abort_stream("closing a stream that does not read, the worker is shutting down");
        } else {
            end_stream();
        }
        run_posted(c);
    }

    void append(Frame *f) {
        if (detached) {
            push_frame(f);
        } else {
            chain_frame(f);
        }
        queued += f->len;
    }

    // An event only this subscriber gets (replay, gap): its frame is made for it.
    void append_owned(std::string_view event) {
        Frame *f = wire_frame(event, detached);
        append(f);
        frame_unref(f);
    }

    // Writes what is queued. NGX_OK: the stream goes on; NGX_DONE: it was ended.
    ngx_int_t send() {
        if (finished && !ending) return NGX_DONE;
        ngx_int_t rc = detached ? write_frames() : write_pending();
        if (rc == NGX_OK && catching_up && !ending) {
            refill();
            rc = detached ? write_frames() : write_pending();
        }
        if (rc != NGX_OK) return abort_stream(nullptr);
        if (backlog() > kMaxUnsent) return cut_slow();
        if (ending && detached && count == 0) {
            close_detached();
            return NGX_DONE;
        }
        return NGX_OK;
    }

    // Bytes the client has taken, counting the part of the buffer in flight (a replay page
    // is one large buffer: a reading client must not look stalled while it drains).
    size_t sent_so_far() const {
        if (detached || busy == nullptr) return released;
        return released + size_t(busy->buf->pos - busy->buf->start);
    }

    // Bytes queued behind the frame being written: a client that reads gets any single
    // message whole, however large; one that stops reading is cut off past kMaxUnsent.
    size_t backlog() const {
        size_t unsent = queued - released;
        size_t in_flight = 0;
        if (detached) {
            if (count > 0) in_flight = ring[head]->len - head_sent;
        } else if (busy != nullptr) {
            in_flight = size_t(busy->buf->last - busy->buf->start);   // released counts whole bufs
        }
        return unsent > in_flight ? unsent - in_flight : 0;
    }

    // Hands the queued bufs to nginx's filters (request mode).
    ngx_int_t write_pending() {
        ngx_int_t rc = ngx_http_output_filter(request, pending);
        reclaim_sent();
        if (rc == NGX_ERROR) return NGX_ERROR;
        return arm_write_timer(request->connection->buffered || busy != nullptr);
    }

    // The stream ends cleanly: the client reconnects and resumes from its cursor.
    void end_stream() {
        stop();
        if (detached) {
            ending = true;
            append(end_frame());
            send();
            return;
        }
        ngx_http_request_t *r = request;
        ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
    }

    ngx_int_t cut_slow() {
        store_count_dropped_slow(wz->zone);
        return abort_stream("subscriber stopped reading with more than 1 MiB unsent, closing it");
    }

    // A replay is paged in as the client reads, so its backlog stays small whether the client
    // reads or not: a replay is judged by progress instead (none for kStallWindow: cut off).
    bool watched_for_stall() const { return catching_up; }

    // Queues the next page of a replay while little is queued. Live messages wait in the
    // store meanwhile (on_message skips them), so the replay joins them in id order.
    void refill() {
        while (catching_up && backlog() < kReplayPageBytes) {
            ChannelKey keys[channels::kMaxChannels];
            size_t n = 0;
            for (size_t i = 0; i < nlinks; i++) {
                if (links[i].active) keys[n++] = links[i].key;
            }
            Batch page = store_read(wz->zone, keys, n, cursor, kReplayPage, kReplayPageBytes);
            std::string text;
            for (const GapInfo &gap : page.gaps) append_gap_event(text, gap.channel_id, cursor, gap.oldest);
            if (!text.empty()) append_owned(text);
            for (const MessageCopy &m : page.items) append_owned(message_event(m, multi));
            if (!page.items.empty()) cursor = page.items.back().id;
            if (!page.more) {
                catching_up = false;
                cursor = std::max(cursor, page.position);   // later ids come live
            }
        }
    }

    ngx_int_t abort_stream(const char *reason) {
        if (reason != nullptr) ngx_log_error(NGX_LOG_INFO, conn->log, 0, "channels: %s", reason);
        stop();
        if (detached) {
            close_detached();
        } else {
            ngx_http_finalize_request(request, NGX_ERROR);
        }
        return NGX_DONE;
    }

    // No more deliveries, pings or write timeouts.
    void stop() {
        finished = true;
        delivery_detach(this);
        if (timer.timer_set) ngx_del_timer(&timer);
        if (timer.posted) {
            ngx_delete_posted_event(&timer);
        }
        if (expiry.timer_set) ngx_del_timer(&expiry);
        if (conn->write->timer_set) ngx_del_timer(conn->write);
    }

    // Request cleanup (request mode): nothing of ours may stay referenced.
    void release_request_mode() {
        if (!finished) stop();
        if (copy_frames) return;   // copies live in the request pool
        for (ngx_chain_t *chain : {busy, pending}) {
            for (ngx_chain_t *cl = chain; cl != nullptr; cl = cl->next) {
                ngx_buf_t *b = cl->buf;
                if (b->tag != &kBufTag || b->start == nullptr) continue;
                frame_unref(frame_of(b));
                b->start = b->end = nullptr;
            }
        }
    }

    // Starts the stream: header already sent; first bytes queued.
    ngx_int_t start(LocConf *lcf, ngx_http_cleanup_t *cln) {
        cleanup = cln;
        ping_interval = lcf->sse_ping;
        send_timeout = static_cast<ngx_http_core_loc_conf_t *>(
                           ngx_http_get_module_loc_conf(request, ngx_http_core_module))->send_timeout;
        timer.data = this;
        timer.log = conn->log;
        refill();
        if (write_pending() != NGX_OK) return NGX_ERROR;
        if (may_detach()) {
            timer.handler = detach_handler;   // once the handler has returned
            ngx_post_event(&timer, &ngx_posted_events);
        } else {
            start_pings();
        }
        return NGX_OK;
    }

    void start_pings() {
        timer.handler = ping_handler;
        if (ping_interval > 0) ngx_add_timer(&timer, ping_interval);
    }

    void ping() {
        ngx_connection_t *c = request_connection();
        append(ping_frame(detached));
        if (send() == NGX_OK && ping_interval > 0) ngx_add_timer(&timer, ping_interval);
        run_posted(c);
    }

    void on_write_event() {
        ngx_connection_t *c = request_connection();
        if (conn->write->timedout) {
            conn->timedout = 1;
            if (watched_for_stall()) {
                cut_slow();
            } else {
                abort_stream("client timed out");
            }
        } else {
            send();
        }
        run_posted(c);
    }

    // The client went away (detached streams notice it here; requests in test_reading).
    void client_closed() {
        ngx_log_error(NGX_LOG_INFO, conn->log, 0, "client prematurely closed connection");
        abort_stream(nullptr);
    }

    // Where live delivery takes over: after the replay's first page when more remains
    // (the rest is paged in as the socket drains), else at the zone's position.
    // Never below the client's own cursor: a host still mirroring Redis may get older ids.
    void set_start(const SubscribeResult &res, const SubscribeQuery &q) {
        catching_up = res.replay.more;
        cursor = catching_up ? res.replay.items.back().id : res.replay.position;
        if (q.has_cursor) cursor = std::max(cursor, q.cursor);
    }

    // SPEC §10: the stream ends at its token's exp (ms; 0: never) with token-expired.
    void end_at(uint64_t at_ms) {
        if (at_ms == 0) return;
        expiry.handler = expiry_handler;
        expiry.data = this;
        expiry.log = conn->log;
        expiry_ms = at_ms;
        uint64_t now = now_ms();
        ngx_add_timer(&expiry, at_ms > now ? ngx_msec_t(at_ms - now) : 0);
    }

    bool finished = false;

private:
    static void expiry_handler(ngx_event_t *ev) noexcept {
        auto *sub = static_cast<SseSubscriber *>(ev->data);
        ngx_connection_t *c = sub->request_connection();
        try {
            sub->catching_up = false;   // nothing more after the notice
            sub->append_owned(channels::token_expired_event(sub->expiry_ms));
            if (sub->send() == NGX_OK) sub->end_stream();
        } catch (...) {
            sub->abort_stream("out of memory");
        }
        run_posted(c);
    }

    ngx_event_t expiry{};
    uint64_t    expiry_ms = 0;

    bool may_detach() const {
        ngx_http_request_t *r = request;
        return !copy_frames && r == r->main && r->chunked && r->pool->cleanup == nullptr &&
               r->headers_out.status == NGX_HTTP_OK && !r->header_only;
    }

    static void detach_handler(ngx_event_t *ev) noexcept {
        auto *sub = static_cast<SseSubscriber *>(ev->data);
        ngx_http_request_t *r = sub->request;
        bool idle = r->main->count == 1 && !r->blocked && !r->buffered && !r->connection->buffered &&
                    r->postponed == nullptr && sub->busy == nullptr && sub->pending == nullptr;
        if (sub->finished || !idle) {
            sub->start_pings();
            return;
        }
        sub->detach();
        sub->start_pings();
    }

    // Frees the request (writing its access log line) and keeps only the connection.
    void detach() {
        ngx_connection_t *c = conn;
        ngx_http_request_t *r = request;
        auto *hc = static_cast<ngx_http_connection_t *>(r->http_connection);
        cleanup->handler = nullptr;   // this object lives on
        request = nullptr;
        ngx_http_free_request(r, 0);
        c->destroyed = 0;
        release_header_buffers(c, hc);
        auto *ctx = static_cast<ngx_http_log_ctx_t *>(c->log->data);
        ctx->request = nullptr;
        ctx->current_request = nullptr;
        c->log->action = const_cast<char *>("sending events");
        c->data = this;
        c->read->handler = detached_read_handler;
        c->write->handler = detached_write_handler;
        if (c->read->timer_set) ngx_del_timer(c->read);
        detached = true;
        free_bufs = nullptr;
        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            abort_stream(nullptr);
            return;
        }
        if (c->read->ready) {
            ngx_post_event(c->read, &ngx_posted_events);
        }
    }

    // As an idle keep-alive connection does: the header buffers are not needed any more.
    static void release_header_buffers(ngx_connection_t *c, ngx_http_connection_t *hc) {
        for (ngx_chain_t **list : {&hc->free, &hc->busy}) {
            for (ngx_chain_t *cl = *list; cl != nullptr;) {
                ngx_chain_t *ln = cl;
                cl = cl->next;
                ngx_pfree(c->pool, ln->buf->start);
                ngx_free_chain(c->pool, ln);
            }
            *list = nullptr;
            hc->nbusy = 0;
        }
        if (c->buffer != nullptr && c->buffer->start != nullptr &&
            ngx_pfree(c->pool, c->buffer->start) == NGX_OK) {
            c->buffer->start = c->buffer->pos = c->buffer->last = c->buffer->end = nullptr;
        }
    }

    void close_detached() {
        stop();
        while (count > 0) pop_frame();
        ngx_free(ring);
        ngx_connection_t *c = conn;
        this->~SseSubscriber();
        ngx_free(this);
        ngx_http_close_connection(c);
    }

    // A detached stream has no request, and its connection may be closed by now.
    ngx_connection_t *request_connection() const { return detached ? nullptr : conn; }

    static void run_posted(ngx_connection_t *c) {
        if (c != nullptr) ngx_http_run_posted_requests(c);
    }

    // ---- request mode: chains through nginx's filters ----

    void chain_frame(Frame *f) {
        ngx_chain_t *cl = ngx_chain_get_free_buf(request->pool, &free_bufs);
        if (cl == nullptr) throw std::bad_alloc();
        ngx_buf_t *b = cl->buf;
        if (copy_frames) {
            copy_into(b, f);
        } else {
            ngx_memzero(b, sizeof(ngx_buf_t));
            frame_ref(f);
            b->start = f->data;
            b->pos = b->start;
            b->last = b->end = b->start + f->len;
            b->memory = 1;
        }
        b->tag = const_cast<char *>(&kBufTag);
        b->flush = 1;   // events are written as they come, never held back
        cl->next = nullptr;
        *out_last = cl;
        out_last = &cl->next;
    }

    void copy_into(ngx_buf_t *b, Frame *f) {
        u_char *start = b->start;
        size_t capacity = size_t(b->end - b->start);
        if (start == nullptr || capacity < f->len) {
            capacity = std::max(size_t(f->len), kCopyBufferSize);
            start = static_cast<u_char *>(ngx_palloc(request->pool, capacity));
            if (start == nullptr) throw std::bad_alloc();
        }
        ngx_memzero(b, sizeof(ngx_buf_t));
        b->start = start;
        b->end = start + capacity;
        b->pos = start;
        b->last = ngx_cpymem(start, f->data, f->len);
        b->temporary = 1;
    }

    // Moves what was just handed to nginx behind busy, then recycles the bufs at the head
    // of busy that were sent completely, dropping their frame references. (Done here, not
    // by ngx_chain_update_chains(), because a buf must give its frame back before reuse.)
    void reclaim_sent() {
        if (pending != nullptr) {
            *busy_last = pending;
            busy_last = out_last;
            pending = nullptr;
            out_last = &pending;
        }
        while (busy != nullptr && ngx_buf_size(busy->buf) == 0) {
            ngx_chain_t *cl = busy;
            busy = cl->next;
            ngx_buf_t *b = cl->buf;
            released += size_t(b->last - b->start);
            if (!copy_frames) {
                frame_unref(frame_of(b));
                b->start = b->end = nullptr;
            }
            cl->next = free_bufs;
            free_bufs = cl;
        }
        if (busy == nullptr) busy_last = &busy;
    }

    // While output waits: send_timeout, or the stall window when over the backlog limit or
    // catching up; restarted whenever the client took something.
    ngx_int_t arm_write_timer(bool blocked) {
        ngx_event_t *wev = conn->write;
        if (!blocked) {
            if (wev->timer_set) ngx_del_timer(wev);
            return NGX_OK;
        }
        bool watch = watched_for_stall();
        size_t progress = sent_so_far();
        if (!wev->timer_set || progress != armed_at || watch != armed_watching) {
            ngx_add_timer(wev, watch ? kStallWindow : send_timeout);
            armed_at = progress;
            armed_watching = watch;
        }
        return ngx_handle_write_event(wev, 0);
    }

    // ---- detached mode: a ring of frames written to the socket ----

    void push_frame(Frame *f) {
        if (count == capacity) {
            uint32_t grown = capacity ? capacity * 2 : 8;
            auto *bigger = static_cast<Frame **>(ngx_alloc(grown * sizeof(Frame *), conn->log));
            if (bigger == nullptr) throw std::bad_alloc();
            for (uint32_t i = 0; i < count; i++) bigger[i] = ring[(head + i) % capacity];
            ngx_free(ring);
            ring = bigger;
            capacity = grown;
            head = 0;
        }
        frame_ref(f);
        ring[(head + count) % capacity] = f;
        count++;
    }

    void pop_frame() {
        Frame *f = ring[head];
        released += f->len - head_sent;
        head_sent = 0;
        head = (head + 1) % capacity;
        count--;
        frame_unref(f);
    }

    // Consumes n written bytes from the front of the ring.
    void consume(size_t n) {
        while (n > 0) {
            Frame *f = ring[head];
            size_t left = f->len - head_sent;
            if (n < left) {
                head_sent += uint32_t(n);
                released += n;
                return;
            }
            n -= left;
            pop_frame();
        }
    }

    ssize_t write_some() {
        ngx_connection_t *c = conn;
        if (c->ssl != nullptr) {
            Frame *f = ring[head];
            return c->send(c, f->data + head_sent, f->len - head_sent);
        }
        struct iovec iov[kMaxIovecs];
        size_t n = 0;
        for (uint32_t i = 0; i < count && n < kMaxIovecs; i++, n++) {
            Frame *f = ring[(head + i) % capacity];
            size_t skip = i == 0 ? head_sent : 0;
            iov[n].iov_base = f->data + skip;
            iov[n].iov_len = f->len - skip;
        }
        ssize_t sent = writev(c->fd, iov, int(n));
        if (sent >= 0) return sent;
        if (ngx_socket_errno == NGX_EAGAIN || ngx_socket_errno == NGX_EINTR) {
            c->write->ready = 0;
            return NGX_AGAIN;
        }
        ngx_log_error(NGX_LOG_INFO, c->log, ngx_socket_errno, "writev() failed");
        c->error = 1;
        return NGX_ERROR;
    }

    ngx_int_t write_frames() {
        while (count > 0) {
            ssize_t n = write_some();
            if (n == NGX_ERROR) return NGX_ERROR;
            if (n == NGX_AGAIN || n == 0) break;
            conn->sent += n;
            consume(size_t(n));
        }
        return arm_write_timer(count > 0);
    }

    static void ping_handler(ngx_event_t *ev) noexcept {
        auto *sub = static_cast<SseSubscriber *>(ev->data);
        try {
            sub->ping();
        } catch (...) {
            sub->abort_stream("out of memory");
        }
    }

    ngx_connection_t   *conn;
    ngx_http_cleanup_t *cleanup = nullptr;
    ngx_event_t         timer{};          // posted once to detach, then the ping timer
    ngx_msec_t          ping_interval = 0;
    ngx_msec_t          send_timeout = 0;
    size_t              queued = 0;       // bytes queued for the client
    size_t              released = 0;     // of those, bytes known to be sent
    size_t              armed_at = 0;     // sent_so_far() when the write timer was armed
    bool                armed_watching = false;   // and whether with the stall window
    bool                catching_up = false;   // a replay is still being read in pages
    bool                multi = false;
    bool                copy_frames = false;
    bool                detached = false;
    bool                leaving = false;
    bool                ending = false;   // detached: close once the end chunk is out
    // request mode
    ngx_chain_t        *pending = nullptr;
    ngx_chain_t       **out_last = &pending;
    ngx_chain_t        *free_bufs = nullptr;
    ngx_chain_t        *busy = nullptr;
    ngx_chain_t       **busy_last = &busy;
    // detached mode
    Frame             **ring = nullptr;
    uint32_t            capacity = 0, head = 0, count = 0, head_sent = 0;

    void leave_deleted_channels() {
        leaving = false;
        for (size_t i = 0; i < nlinks; i++) {
            if (!links[i].active && links[i].channel != nullptr) delivery_leave(this, links[i]);
        }
    }
};

void detached_read_handler(ngx_event_t *rev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(rev->data);
    auto *sub = static_cast<SseSubscriber *>(c->data);
    u_char discard[256];
    for (;;) {
        ssize_t n = c->recv(c, discard, sizeof(discard));
        if (n == NGX_AGAIN) break;
        if (n == 0 || n == NGX_ERROR) {
            sub->client_closed();
            return;
        }
    }
    if (ngx_handle_read_event(rev, 0) != NGX_OK) sub->abort_stream(nullptr);
}

void detached_write_handler(ngx_event_t *wev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(wev->data);
    static_cast<SseSubscriber *>(c->data)->on_write_event();
}

// Request cleanup of a stream still in request mode.
void cleanup(void *data) noexcept {
    auto *sub = static_cast<SseSubscriber *>(data);
    sub->release_request_mode();
    sub->~SseSubscriber();
    ngx_free(sub);
}

void write_handler(ngx_http_request_t *r) noexcept {
    auto *sub = static_cast<SseSubscriber *>(ngx_http_get_module_ctx(r, ngx_http_channels_module));
    if (sub != nullptr && !sub->finished) sub->on_write_event();
}

ngx_int_t send_stream_header(ngx_http_request_t *r) {
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;
    if (add_header(r, "Cache-Control", "no-cache") != NGX_OK ||
        add_header(r, "X-Accel-Buffering", "no") != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_send_header(r);
}

// The first bytes of a stream: retry, gap notices, then the replay.
std::string stream_start(LocConf *lcf, const SubscribeResult &res, MessageId cursor, bool multi) {
    std::string out;
    if (lcf->sse_retry > 0) channels::append_sse_retry(out, lcf->sse_retry);
    for (const GapInfo &gap : res.replay.gaps) {
        append_gap_event(out, gap.channel_id, cursor, gap.oldest);
    }
    for (const MessageCopy &m : res.replay.items) out += message_event(m, multi);
    if (out.empty()) out = ":\n\n";   // something to flush the header with
    return out;
}

// A stream that ends at once (HEAD, or a worker on its way out: the client reconnects).
ngx_int_t empty_stream(ngx_http_request_t *r) {
    ngx_int_t rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    return ngx_http_send_special(r, NGX_HTTP_LAST);
}

ngx_int_t handle(ngx_http_request_t *r) {
    ChannelArgs args;
    ngx_int_t rc = NGX_OK;
    if (!subscriber_prelude(r, args, &rc)) return rc;
    LocConf *lcf = loc_conf(r);
    ZoneConf *zone = zone_of(lcf);
    if (r->method & NGX_HTTP_HEAD || delivery_exiting() || zone->worker == nullptr) return empty_stream(r);

    void *mem = ngx_alloc(sizeof(SseSubscriber), r->connection->log);
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (mem == nullptr || cln == nullptr) {
        ngx_free(mem);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *sub = new (mem) SseSubscriber(r, zone->worker, args.list.count > 1);
    cln->handler = cleanup;
    cln->data = sub;
    ngx_http_set_ctx(r, sub, ngx_http_channels_module);

    SubscribeQuery q;
    q.list = &args.list;
    q.has_cursor = request_cursor(r, &q.cursor);
    q.first_message = lcf->first_message;
    q.limit = kReplayPage;
    q.byte_limit = kReplayPageBytes;
    SubscribeResult res = store_subscribe(zone, zone->worker->record, q);
    if ((rc = delivery_attach_request(sub, res, args.list.count)) != NGX_OK) return rc;
    sub->set_start(res, q);

    rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return rc;
    sub->append_owned(stream_start(lcf, res, q.cursor, args.list.count > 1));
    r->write_event_handler = write_handler;
    watch_client_close(r);
    if (sub->start(lcf, cln) != NGX_OK) return NGX_ERROR;
    sub->end_at(auth_expiry_ms(r));
    r->main->count++;
    return NGX_DONE;
}

}  // namespace

ngx_int_t sse_handler(ngx_http_request_t *r) {
    return guarded(r->connection->log, [r] { return handle(r); });
}

}  // namespace chn
