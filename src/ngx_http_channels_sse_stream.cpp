// An SSE stream: delivery callbacks, writing, ending, pings and slow clients
// (see ngx_http_channels_sse_stream.h).
//
// Entry points capture the connection first: ending or aborting a request-mode stream may
// free this object (request cleanup) before nginx's posted requests are run.

#include "ngx_http_channels_sse_stream.h"

#include "ngx_http_channels_fault.h"
#include "channels/jwt.h"
#include "ngx_http_channels_sse_events.h"

namespace channels {
namespace {

constexpr ngx_msec_t kStallWindow = 5000;   // a replay that makes no progress this long: cut off

void run_posted(ngx_connection_t *c) {
    if (c != nullptr) ngx_http_run_posted_requests(c);
}

}  // namespace

// The token's exp: a timer only streams with a token pay for.
struct SseExpiry {
    ngx_event_t event;
    uint64_t    at_ms;
};

SseStream::SseStream(ngx_http_request_t *r, WorkerZone *zone, bool multi_channel)
    : request(r), conn_(r->connection), multi(multi_channel), armed_watching_(false), catching_up_(false),
      copy_frames_(false), detached_(false), leaving_(false), ending_(false), failed_(false),
      want_detach_(false), finished_(false) {
    wz = zone;
#if (NGX_HTTP_V2)
    copy_frames_ = r->stream != nullptr;
#endif
    filters().init(r, copy_frames_);
}

SseStream::~SseStream() {
    ngx_free(expiry_);
    if (detached_) {
        out_.socket.~SocketOutput();
    } else {
        out_.filters.~FilterOutput();
    }
}

// ---- Subscriber ----

void SseStream::on_message(const MessageCopy &m, size_t index, MessageFrames &frames) noexcept {
    if (catching_up_ || failed_ || finished_) return;   // a replay in progress reads it in order
    links[index].seen = PackedId::of(m.id);
    cursor = std::max(cursor, m.id);
    Frame *f;
    if (m.kind == EntryKind::deleted) {
        Frame *&shared = frames.slot(false, detached_);
        if (shared == nullptr) {
            shared = frame_build(detached_, [&](auto &sink) { put_deleted_event(sink, m.id, m.channel_id); });
        }
        positions[index].active = false;
        leaving_ = true;
        f = shared;
    } else {
        Frame *&shared = frames.slot(multi, detached_);
        if (shared == nullptr) shared = frame_build(detached_, [&](auto &sink) { put_message_event(sink, m, multi); });
        f = shared;
    }
    if (f == nullptr || !queue(f)) failed_ = true;
}

// Each link remembers how far its channel was seen: a loss of one channel is told once,
// before the stream passes it (its cursor moves with every channel's messages).
void SseStream::on_lost(size_t index, MessageId upto) noexcept {
    if (catching_up_ || failed_ || finished_ || upto <= links[index].seen.get()) return;   // a replay finds its own gaps
    links[index].seen = PackedId::of(upto);
    std::string_view channel = positions[index].channel->name();
    Frame *gap = frame_build(detached_, [&](auto &sink) { put_gap_event(sink, channel, cursor, MessageId{}); });
    if (gap == nullptr || !queue(gap)) failed_ = true;
    frame_unref(gap);
}

void SseStream::on_flush() noexcept {
    ngx_connection_t *c = request_connection();
    if (failed_) {
        abort_stream("out of memory queuing an event, closing the stream");
    } else {
        if (leaving_) leave_deleted_channels();
        send();
    }
    run_posted(c);
}

// The worker is going away: end the stream now. A client that cannot take the end at once
// is closed rather than allowed to hold the old worker (it resumes anyway).
void SseStream::on_shutdown() noexcept {
    ngx_connection_t *c = request_connection();
    if (finished_) return;
    if (send() != NGX_OK) {
        run_posted(c);
        return;
    }
    if (detached_) {
        stop();
        Frame *end = end_frame();
        if (end != nullptr && socket().queue(end, conn_->log)) socket().write(conn_);   // one attempt
        close_detached();
        return;
    }
    if (!filters().empty() || conn_->buffered) {
        abort_stream("closing a stream that does not read, the worker is shutting down");
    } else {
        end_stream();
    }
    run_posted(c);
}

// ---- writing ----

bool SseStream::queue(Frame *f) noexcept {
    if (fault::hit(fault::Site::sse_queue)) return false;
    return detached_ ? socket().queue(f, conn_->log) : filters().queue(f);
}

ngx_int_t SseStream::write_output() noexcept {
    if (detached_) {
        if (socket().write(conn_) != NGX_OK) return NGX_ERROR;
        return arm_write_timer(!socket().empty());
    }
    if (filters().write() != NGX_OK) return NGX_ERROR;
    return arm_write_timer(filters().blocked());
}

// Writes what is queued, and the next replay pages while the client keeps up.
// NGX_OK: the stream goes on; NGX_DONE: it was ended (this object may be gone).
ngx_int_t SseStream::send() noexcept {
    if (finished_ && !ending_) return NGX_DONE;
    ngx_int_t rc = write_output();
    if (rc == NGX_OK && catching_up_ && !ending_ && held() < kPageBytes) {
        if (!refill()) return abort_stream("out of memory reading a replay page, closing the stream");
        rc = write_output();
    }
    if (rc != NGX_OK) return abort_stream(nullptr);
    if (backlog() > kMaxHeld) return cut_slow();
    if (ending_) {
        if (output_empty()) {
            close_detached();
            return NGX_DONE;
        }
        return NGX_OK;
    }
    if (nactive == 0) {   // every channel was deleted
        end_stream();
        return NGX_DONE;
    }
    if (catching_up_ && held() < kPageBytes) schedule_refill();   // the client keeps up: more
    if (want_detach_ && !catching_up_ && output_empty() && !conn_->buffered) detach_later();
    return NGX_OK;
}

// While output waits: send_timeout, or the stall window while a replay is being paged in;
// restarted whenever the client took something.
ngx_int_t SseStream::arm_write_timer(bool blocked) noexcept {
    ngx_event_t *wev = conn_->write;
    if (!blocked) {
        if (wev->timer_set) ngx_del_timer(wev);
        return NGX_OK;
    }
    bool watch = catching_up_;
    size_t sent = progress();
    if (!wev->timer_set || sent != armed_at_ || watch != armed_watching_) {
        ngx_add_timer(wev, watch ? kStallWindow : send_timeout_);
        armed_at_ = sent;
        armed_watching_ = watch;
    }
    return ngx_handle_write_event(wev, 0);
}

// ---- ending ----

// The stream ends cleanly: the client reconnects and resumes from its cursor.
void SseStream::end_stream() noexcept {
    stop();
    if (detached_) {
        ending_ = true;
        Frame *end = end_frame();
        if (end == nullptr || !socket().queue(end, conn_->log)) {
            close_detached();
            return;
        }
        send();
        return;
    }
    ngx_http_request_t *r = request;
    filters().write(true);   // what was held back goes first
    ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
}

ngx_int_t SseStream::abort_stream(const char *reason) noexcept {
    if (reason != nullptr) ngx_log_error(NGX_LOG_INFO, conn_->log, 0, "channels: %s", reason);
    stop();
    if (detached_) {
        close_detached();
    } else {
        ngx_http_finalize_request(request, NGX_ERROR);
    }
    return NGX_DONE;
}

ngx_int_t SseStream::cut_slow() noexcept {
    wz->store->count_dropped_slow();
    return abort_stream("subscriber stopped reading with more than 1 MiB unsent, closing it");
}

// No more deliveries, pings, replay pages or write timeouts.
void SseStream::stop() noexcept {
    finished_ = true;
    catching_up_ = false;
    delivery_detach(this);
    if (timer_ != nullptr && timer_->timer_set) ngx_del_timer(timer_);
    if (expiry_ != nullptr && expiry_->event.timer_set) ngx_del_timer(&expiry_->event);
    if (timer_ != nullptr && !detached_ && timer_->posted) {   // (a detached one's is the read event)
        ngx_delete_posted_event(timer_);
    }
    if (conn_->write->timer_set) ngx_del_timer(conn_->write);
}

void SseStream::release_request_mode() noexcept {
    if (!finished_ && cleanup_ != nullptr) {
        stop();
    } else if (!finished_) {
        delivery_detach(this);   // refused or failed before it started: no timers of ours
    }
    filters().release();
    delivery_free_links(this);
}

void SseStream::leave_deleted_channels() noexcept {
    leaving_ = false;
    for (size_t i = 0; i < nlinks; i++) {
        if (!positions[i].active && positions[i].channel != nullptr) delivery_leave(this, i);
    }
}

// ---- events ----

void SseStream::start_pings() noexcept {
    if (!detached_) timer_->handler = ping_handler;   // detached: sse_detached_read() pings
    if (ping_interval_ > 0) ngx_add_timer(timer_, ping_interval_);
}

void SseStream::ping() noexcept {
    ngx_connection_t *c = request_connection();
    Frame *f = ping_frame(detached_);
    if (f == nullptr || !queue(f)) {
        abort_stream("out of memory queuing a ping, closing the stream");
    } else if (send() == NGX_OK && ping_interval_ > 0) {
        ngx_add_timer(timer_, ping_interval_);
    }
    run_posted(c);
}

void SseStream::ping_handler(ngx_event_t *ev) noexcept { static_cast<SseStream *>(ev->data)->ping(); }

void SseStream::on_write_event() noexcept {
    ngx_connection_t *c = request_connection();
    if (conn_->write->timedout) {
        conn_->timedout = 1;
        if (catching_up_) {
            cut_slow();   // a replay that makes no progress
        } else {
            abort_stream("client timed out");
        }
    } else {
        send();
    }
    run_posted(c);
}

void SseStream::end_at(uint64_t at_ms) noexcept {
    if (at_ms == 0) return;
    if (expiry_ == nullptr) {
        expiry_ = static_cast<SseExpiry *>(ngx_calloc(sizeof(SseExpiry), conn_->log));
        if (expiry_ == nullptr) {
            abort_stream("out of memory arming a token's expiry");
            return;
        }
    }
    ngx_event_t *ev = &expiry_->event;
    ev->handler = expiry_handler;
    ev->data = this;
    ev->log = conn_->log;
    expiry_->at_ms = at_ms;
    arm_expiry(expiry_);
}

// nginx gives its earliest timer to epoll_wait() as an int: one more than 24.8 days away
// would wrap there (and a worker with no nearer timer could sleep through the exp), so
// the expiry is armed at most a day ahead, and again until exp.
void SseStream::arm_expiry(SseExpiry *e) noexcept {
    constexpr uint64_t kMaxStep = 24 * 3600 * 1000;
    uint64_t now = now_ms(), left = e->at_ms > now ? e->at_ms - now : 0;
    ngx_add_timer(&e->event, ngx_msec_t(std::min(left, kMaxStep)));
}

// token-expired, then the end: the client reconnects with a fresh token and resumes.
void SseStream::expiry_handler(ngx_event_t *ev) noexcept {
    auto *sub = static_cast<SseStream *>(ev->data);
    if (now_ms() < sub->expiry_->at_ms) {   // a step of a far exp (arm_expiry)
        arm_expiry(sub->expiry_);
        return;
    }
    ngx_connection_t *c = sub->request_connection();
    sub->catching_up_ = false;   // nothing more after the notice
    Frame *f = frame_build(sub->detached_, [&](auto &sink) { put_token_expired_event(sink, sub->expiry_->at_ms); });
    bool queued = f != nullptr && sub->queue(f);
    frame_unref(f);
    if (!queued) {
        sub->abort_stream("out of memory ending a stream whose token expired");
    } else if (sub->send() == NGX_OK) {
        sub->end_stream();
    }
    run_posted(c);
}

// The client went away (detached streams notice it here; requests in ngx_http_test_reading).
void SseStream::client_closed() noexcept {
    ngx_log_error(NGX_LOG_INFO, conn_->log, 0, "client prematurely closed connection");
    abort_stream(nullptr);
}

}  // namespace channels
