// An SSE stream (sse_channel, README "SSE"): a Subscriber that turns messages into events.
//
// A stream starts as a parked request whose output goes through nginx's filters
// (FilterOutput). Plain HTTP/1.1 streams are then detached: the request is logged and
// freed, and the connection writes shared, pre-chunked frames itself (SocketOutput), at
// about a tenth of a parked request's memory. HTTP/2 streams copy frames into their own
// recycled buffers, because an HTTP/2 stream may still send queued data after its request
// cleanup ran.
//
// Concerns, one file each:
//   ngx_http_channels_sse_stream.cpp   delivery callbacks, ending, pings, slow clients
//   ngx_http_channels_sse_replay.cpp   the replay paged in as the client reads
//   ngx_http_channels_sse_output.cpp   the two outputs, and detaching
//   ngx_http_channels_sse.cpp          the content handler
#pragma once

#include "ngx_http_channels_delivery.h"

namespace channels {

// Bytes a subscriber may hold unsent before it is cut off (README "SSE", "What one client can cost").
inline constexpr size_t kMaxHeld = 1024 * 1024;
// Memory of one queued buffer beyond its bytes (an ngx_buf_t and a chain link).
inline constexpr size_t kBufOverhead = sizeof(ngx_buf_t) + sizeof(ngx_chain_t);

// Request mode: buffers handed to nginx's output filters, a batch at a time.
// HTTP/2 copies: malloc'd blocks, each freed once sent (or kept for reuse), the rest when
// the request's pool goes, after nginx's HTTP/2 layer let go of them. (Pool allocations of
// this size are "large" ones, whose records a long stream would pile up in its pool.)
struct CopyBlock;
struct SseExpiry;
struct CopyOwner {
    CopyBlock *head;
};

class FilterOutput {
public:
    void init(ngx_http_request_t *r, bool copy);
    bool queue(Frame *f) noexcept;                // false: memory is short
    // Hands queued buffers to the filters when nginx has sent the previous ones (or now,
    // when forced: the stream ends). NGX_OK or NGX_ERROR.
    ngx_int_t write(bool force = false) noexcept;
    bool blocked() const;                          // nginx holds data it could not send
    bool empty() const { return pending_ == nullptr && busy_ == nullptr; }
    size_t held() const { return held_; }
    // Held behind the buffer being sent: a client that reads gets any one message whole,
    // however large; one that stops reading is cut off past kMaxHeld.
    size_t backlog() const;
    size_t progress() const;                       // bytes the client has taken, so far
    void release() noexcept;                       // request cleanup: frame references go

private:
    bool copy_into(ngx_buf_t *b, Frame *f) noexcept;
    u_char *alloc_copy(size_t size) noexcept;
    void reclaim() noexcept;
    void free_buffer(ngx_buf_t *b) noexcept;

    ngx_http_request_t *r_ = nullptr;
    ngx_chain_t *pending_ = nullptr, **pending_last_ = &pending_;
    ngx_chain_t *busy_ = nullptr, **busy_last_ = &busy_;
    ngx_chain_t *free_ = nullptr;
    size_t held_ = 0;
    size_t sent_ = 0;
    CopyOwner *owner_ = nullptr;                   // HTTP/2 copies still allocated
    uint32_t free_buffers_ = 0;
    bool copy_ = false;
};

// Detached: a ring of frames written to the socket with writev (or SSL_write).
class SocketOutput {
public:
    bool queue(Frame *f, ngx_log_t *log) noexcept;
    ngx_int_t write(ngx_connection_t *c) noexcept;   // NGX_OK or NGX_ERROR
    bool empty() const { return count_ == 0; }
    size_t held() const { return held_; }
    size_t backlog() const { return count_ == 0 ? 0 : held_ - ring_[head_]->len - sizeof(Frame *); }
    size_t progress() const { return sent_; }
    void release() noexcept;

    SocketOutput() = default;
    SocketOutput(const SocketOutput &) = delete;
    SocketOutput &operator=(const SocketOutput &) = delete;

private:
    static constexpr uint32_t kInline = 2;   // an idle stream holds no ring of its own

    void pop() noexcept;
    void consume(size_t n) noexcept;
    ssize_t write_some(ngx_connection_t *c) noexcept;

    Frame *inline_[kInline] = {};
    Frame **ring_ = inline_;
    uint32_t capacity_ = kInline, head_ = 0, count_ = 0, head_sent_ = 0;
    size_t held_ = 0;
    size_t sent_ = 0;
};

class SseStream final : public Subscriber {
public:
    SseStream(ngx_http_request_t *r, WorkerZone *zone, bool multi_channel);

    // ---- Subscriber ----
    void on_message(const MessageCopy &m, size_t index, MessageFrames &frames) noexcept override;
    void on_lost(size_t index, MessageId upto) noexcept override;
    void on_flush() noexcept override;
    void on_shutdown() noexcept override;

    // ---- from the handler ----
    // Header sent; queues the stream's first bytes (retry, gaps, first page) and starts it.
    ngx_int_t start(ngx_http_cleanup_t *cln, const Batch &first_page, bool more) noexcept;
    void release_request_mode() noexcept;   // request cleanup
    ~SseStream();
    // The stream ends at its token's exp (ms; 0: never) with token-expired (README "Authorization (JWT)").
    void end_at(uint64_t at_ms) noexcept;
    bool finished() const { return finished_; }
    void on_write_event() noexcept;

    ngx_http_request_t *request;

private:
    friend void sse_detached_read(ngx_event_t *rev) noexcept;
    friend void sse_detached_write(ngx_event_t *wev) noexcept;

    // stream
    bool queue(Frame *f) noexcept;
    ngx_int_t send() noexcept;
    void end_stream() noexcept;
    ngx_int_t abort_stream(const char *reason) noexcept;
    ngx_int_t cut_slow() noexcept;
    void stop() noexcept;
    void ping() noexcept;
    void start_pings() noexcept;
    void client_closed() noexcept;
    ngx_connection_t *request_connection() const { return detached_ ? nullptr : conn_; }
    size_t held() const { return detached_ ? socket().held() : filters().held(); }
    size_t backlog() const { return detached_ ? socket().backlog() : filters().backlog(); }
    size_t progress() const { return detached_ ? socket().progress() : filters().progress(); }
    bool output_empty() const { return detached_ ? socket().empty() : filters().empty(); }
    ngx_int_t write_output() noexcept;
    ngx_int_t arm_write_timer(bool blocked) noexcept;
    void leave_deleted_channels() noexcept;

    // replay (ngx_http_channels_sse_replay.cpp)
    bool queue_page(const Batch &page, bool first) noexcept;
    bool refill() noexcept;
    // The next pages come on the next event-loop turn, through the write event (a write
    // handler takes spurious wake-ups): no event of its own.
    void schedule_refill() noexcept;

    // detaching (ngx_http_channels_sse_output.cpp)
    bool may_detach() const;
    bool detach() noexcept;
    void detach_later() noexcept;
    void close_detached() noexcept;

    static void ping_handler(ngx_event_t *ev) noexcept;
    static void detach_handler(ngx_event_t *ev) noexcept;
    static void expiry_handler(ngx_event_t *ev) noexcept;
    static void arm_expiry(SseExpiry *e) noexcept;
    FilterOutput &filters() { return out_.filters; }
    SocketOutput &socket() { return out_.socket; }
    const FilterOutput &filters() const { return out_.filters; }
    const SocketOutput &socket() const { return out_.socket; }

    // Thousands of streams stay open for hours: fields are sized for that (README
    // "What one client can cost").
    ngx_connection_t   *conn_;
    ngx_http_cleanup_t *cleanup_ = nullptr;
    // Posted once to detach, then the ping timer: in request mode an event in the request's
    // pool; once detached, the connection's read event (which has no timer of its own then).
    ngx_event_t        *timer_ = nullptr;
    SseExpiry          *expiry_ = nullptr; // the token's exp (JWT), allocated when there is one
    size_t              armed_at_ = 0;     // progress() when the write timer was armed
    uint32_t            ping_interval_ = 0;  // ms (sse_ping, at most 49 days)
    uint32_t            send_timeout_ = 0;   // ms
    uint32_t            read_bytes_ = 0;   // detached: what the client sent after its request
    bool                multi : 1;          // events name their channel
    bool                armed_watching_ : 1;
    bool                catching_up_ : 1;   // a replay is still being read in pages
    bool                copy_frames_ : 1;
    bool                detached_ : 1;
    bool                leaving_ : 1;       // a channel was deleted: leave it at flush
    bool                ending_ : 1;        // detached: close once the end chunk is out
    bool                failed_ : 1;        // an event could not be queued: end at flush
    bool                want_detach_ : 1;   // detach once the output is empty
    bool                finished_ : 1;
    // A stream writes through the filters until detached, then to the socket: one at a time.
    union Output {
        Output() : filters() {}
        ~Output() {}
        FilterOutput filters;
        SocketOutput socket;
    } out_;
};

}  // namespace channels
