// An SSE stream's two outputs, and detaching a stream from its request
// (see ngx_http_channels_sse_stream.h).
//
// Memory a stream holds for its client is counted as held: frame bytes it references plus
// the buffer and chain link for each, or the whole capacity of its own copies (HTTP/2), so
// the 1 MiB limit bounds what the worker really keeps for it.

#include <sys/uio.h>


#include <algorithm>

#include "ngx_http_channels_fault.h"
#include "ngx_http_channels_sse_stream.h"

namespace channels {
namespace {

constexpr size_t kCopyBufferSize = 4096;
constexpr size_t kKeptCopyBuffers = 4;        // recycled copy buffers kept per stream
constexpr size_t kMaxIovecs = 64;
constexpr size_t kReadChunk = 4096;
constexpr size_t kMaxReadAfterRequest = 65536; // bytes a client may send on an event stream
const char kBufTag = 0;                        // identifies our bufs in chains


void free_copy(u_char *start);

Frame *frame_of(ngx_buf_t *b) { return reinterpret_cast<Frame *>(b->start - offsetof(Frame, data)); }

size_t capacity(const ngx_buf_t *b) { return size_t(b->end - b->start); }

}  // namespace

struct CopyBlock {
    CopyBlock *prev, *next;
    CopyOwner *owner;
    u_char     data[1];
};

namespace {

CopyBlock *block_of(u_char *start) { return reinterpret_cast<CopyBlock *>(start - offsetof(CopyBlock, data)); }

void free_copy(u_char *start) {
    CopyBlock *blk = block_of(start);
    if (blk->prev != nullptr) {
        blk->prev->next = blk->next;
    } else {
        blk->owner->head = blk->next;
    }
    if (blk->next != nullptr) blk->next->prev = blk->prev;
    ngx_free(blk);
}

void free_all_copies(void *data) noexcept {
    auto *owner = static_cast<CopyOwner *>(data);
    while (owner->head != nullptr) free_copy(owner->head->data);
}

}  // namespace

// ---- request mode ----

void FilterOutput::init(ngx_http_request_t *r, bool copy) {
    r_ = r;
    copy_ = copy;
}

bool FilterOutput::queue(Frame *f) noexcept {
    if (copy_ && pending_ != nullptr) {   // HTTP/2: coalesced into the last copy not yet handed
        auto *tail = reinterpret_cast<ngx_chain_t *>(reinterpret_cast<u_char *>(pending_last_) -
                                                     offsetof(ngx_chain_t, next));
        ngx_buf_t *last = tail->buf;
        if (size_t(last->end - last->last) >= f->len) {
            last->last = ngx_cpymem(last->last, f->data, f->len);
            return true;
        }
    }
    ngx_chain_t *cl = ngx_chain_get_free_buf(r_->pool, &free_);
    if (cl == nullptr) return false;
    ngx_buf_t *b = cl->buf;
    if (copy_) {
        if (!copy_into(b, f)) {
            cl->next = free_;
            free_ = cl;
            return false;
        }
    } else {
        ngx_memzero(b, sizeof(ngx_buf_t));
        frame_ref(f);
        b->start = f->data;
        b->pos = b->start;
        b->last = b->end = b->start + f->len;
        b->memory = 1;
        held_ += f->len + kBufOverhead;
    }
    b->tag = const_cast<char *>(&kBufTag);
    b->flush = 1;   // events are written as they come, never held back by nginx
    cl->next = nullptr;
    *pending_last_ = cl;
    pending_last_ = &cl->next;
    return true;
}

bool FilterOutput::copy_into(ngx_buf_t *b, Frame *f) noexcept {
    u_char *start = b->start;
    size_t size = start != nullptr ? capacity(b) : 0;
    if (start == nullptr || size < f->len) {
        if (start != nullptr) {
            free_copy(start);
            free_buffers_--;
        }
        size = std::max(size_t(f->len), kCopyBufferSize);
        start = alloc_copy(size);
        if (start == nullptr) {
            b->start = nullptr;
            return false;
        }
    } else {
        free_buffers_--;
    }
    ngx_memzero(b, sizeof(ngx_buf_t));
    b->start = start;
    b->end = start + size;
    b->pos = start;
    b->last = ngx_cpymem(start, f->data, f->len);
    b->temporary = 1;
    held_ += size + kBufOverhead;
    return true;
}

u_char *FilterOutput::alloc_copy(size_t size) noexcept {
    if (owner_ == nullptr) {
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r_->pool, sizeof(CopyOwner));
        if (cln == nullptr) return nullptr;
        owner_ = static_cast<CopyOwner *>(cln->data);
        owner_->head = nullptr;
        cln->handler = free_all_copies;
    }
    auto *blk = static_cast<CopyBlock *>(ngx_alloc(offsetof(CopyBlock, data) + size, r_->connection->log));
    if (blk == nullptr) return nullptr;
    blk->prev = nullptr;
    blk->next = owner_->head;
    blk->owner = owner_;
    if (owner_->head != nullptr) owner_->head->prev = blk;
    owner_->head = blk;
    return blk->data;
}

// Recycles the buffers at the head of busy that were sent completely: frame references
// are dropped (done here, not by ngx_chain_update_chains(): a buf must give its frame back
// before reuse), copies are kept for reuse or freed.
void FilterOutput::reclaim() noexcept {
    while (busy_ != nullptr && ngx_buf_size(busy_->buf) == 0) {
        ngx_chain_t *cl = busy_;
        busy_ = cl->next;
        free_buffer(cl->buf);
        cl->next = free_;
        free_ = cl;
    }
    if (busy_ == nullptr) busy_last_ = &busy_;
}

void FilterOutput::free_buffer(ngx_buf_t *b) noexcept {
    if (b->start == nullptr) return;
    if (copy_) {
        sent_ += size_t(b->last - b->start);
        held_ -= capacity(b) + kBufOverhead;
        if (capacity(b) == kCopyBufferSize && free_buffers_ < kKeptCopyBuffers) {
            free_buffers_++;
            b->pos = b->last = b->start;
            return;
        }
        free_copy(b->start);
    } else {
        sent_ += capacity(b);
        held_ -= capacity(b) + kBufOverhead;
        frame_unref(frame_of(b));
    }
    b->start = b->end = nullptr;
}

ngx_int_t FilterOutput::write(bool force) noexcept {
    for (int round = 0; round < 2; round++) {
        ngx_chain_t *in = nullptr;
        // New buffers go to nginx only once it sent the previous ones: a client that does
        // not read makes nginx keep one batch, and the rest waits here, counted.
        if (pending_ != nullptr && (busy_ == nullptr || force)) {
            in = pending_;
            *busy_last_ = pending_;
            busy_last_ = pending_last_;
            pending_ = nullptr;
            pending_last_ = &pending_;
        }
        ngx_int_t rc = ngx_http_output_filter(r_, in);
        reclaim();
        if (rc == NGX_ERROR) return NGX_ERROR;
        if (busy_ != nullptr || pending_ == nullptr) break;
    }
    return NGX_OK;
}

size_t FilterOutput::backlog() const {
    ngx_chain_t *first = busy_ != nullptr ? busy_ : pending_;
    if (first == nullptr || first->buf->start == nullptr) return held_;
    return held_ - std::min(held_, capacity(first->buf) + kBufOverhead);
}

bool FilterOutput::blocked() const {
    return busy_ != nullptr || pending_ != nullptr || r_->connection->buffered;
}

size_t FilterOutput::progress() const {
    if (busy_ == nullptr) return sent_;
    return sent_ + size_t(busy_->buf->pos - busy_->buf->start);
}

void FilterOutput::release() noexcept {
    if (copy_) return;   // copies go with the request's pool (free_all_copies)
    for (ngx_chain_t *chain : {busy_, pending_}) {
        for (ngx_chain_t *cl = chain; cl != nullptr; cl = cl->next) {
            ngx_buf_t *b = cl->buf;
            if (b->tag != &kBufTag || b->start == nullptr) continue;
            frame_unref(frame_of(b));
            b->start = b->end = nullptr;
        }
    }
    busy_ = pending_ = nullptr;
    busy_last_ = &busy_;
    pending_last_ = &pending_;
    held_ = 0;
}

// ---- detached: a ring of frames ----

bool SocketOutput::queue(Frame *f, ngx_log_t *log) noexcept {
    if (count_ == capacity_) {
        uint32_t grown = capacity_ * 2;
        auto *bigger = static_cast<Frame **>(ngx_alloc(grown * sizeof(Frame *), log));
        if (bigger == nullptr) return false;
        for (uint32_t i = 0; i < count_; i++) bigger[i] = ring_[(head_ + i) % capacity_];
        if (ring_ != inline_) ngx_free(ring_);
        ring_ = bigger;
        capacity_ = grown;
        head_ = 0;
    }
    frame_ref(f);
    ring_[(head_ + count_) % capacity_] = f;
    count_++;
    held_ += f->len + sizeof(Frame *);
    return true;
}

void SocketOutput::pop() noexcept {
    Frame *f = ring_[head_];
    sent_ += f->len - head_sent_;
    held_ -= f->len + sizeof(Frame *);
    head_sent_ = 0;
    head_ = (head_ + 1) % capacity_;
    count_--;
    frame_unref(f);
}

void SocketOutput::consume(size_t n) noexcept {
    while (n > 0) {
        size_t left = ring_[head_]->len - head_sent_;
        if (n < left) {
            head_sent_ += uint32_t(n);
            sent_ += n;
            return;
        }
        n -= left;
        pop();
    }
}

ssize_t SocketOutput::write_some(ngx_connection_t *c) noexcept {
    if (c->ssl != nullptr) {
        Frame *f = ring_[head_];
        return c->send(c, f->data + head_sent_, f->len - head_sent_);
    }
    struct iovec iov[kMaxIovecs];
    size_t n = 0;
    for (uint32_t i = 0; i < count_ && n < kMaxIovecs; i++, n++) {
        Frame *f = ring_[(head_ + i) % capacity_];
        size_t skip = i == 0 ? head_sent_ : 0;
        iov[n].iov_base = f->data + skip;
        iov[n].iov_len = f->len - skip;
    }
    ssize_t sent = writev(c->fd, iov, int(n));
    if (sent >= 0) return sent;
    ngx_err_t err = ngx_socket_errno;
    if (err == NGX_EAGAIN || err == NGX_EINTR) {
        c->write->ready = 0;
        return NGX_AGAIN;
    }
    ngx_log_error(NGX_LOG_INFO, c->log, err, "writev() failed");
    c->error = 1;
    return NGX_ERROR;
}

ngx_int_t SocketOutput::write(ngx_connection_t *c) noexcept {
    while (count_ > 0) {
        ssize_t n = write_some(c);
        if (n == NGX_ERROR) return NGX_ERROR;
        if (n == NGX_AGAIN || n == 0) break;
        c->sent += n;
        consume(size_t(n));
    }
    if (count_ == 0 && ring_ != inline_) release();   // idle again: back to the inline slots
    return NGX_OK;
}

void SocketOutput::release() noexcept {
    while (count_ > 0) pop();
    if (ring_ != inline_) ngx_free(ring_);
    ring_ = inline_;
    capacity_ = kInline;
    head_ = 0;
}

// ---- detaching ----

bool SseStream::may_detach() const {
    ngx_http_request_t *r = request;
    return !copy_frames_ && r == r->main && r->chunked && r->pool->cleanup == nullptr &&
           r->headers_out.status == NGX_HTTP_OK && !r->header_only;
}

// Detaches once the handler has returned and nothing is on its way out; a stream still
// busy (a replay being written) is detached later, when its output is empty (send()).
void SseStream::detach_handler(ngx_event_t *ev) noexcept {
    auto *sub = static_cast<SseStream *>(ev->data);
    if (sub->finished_) return;
    ngx_http_request_t *r = sub->request;
    bool idle = r->main->count == 1 && !r->blocked && !r->buffered && !r->connection->buffered &&
                r->postponed == nullptr && sub->filters().empty() && !sub->catching_up_;
    sub->want_detach_ = !idle;
    if (idle && !sub->detach()) return;   // closed
    sub->start_pings();
}

void SseStream::detach_later() noexcept {
    want_detach_ = false;
    if (timer_->timer_set) ngx_del_timer(timer_);
    timer_->handler = detach_handler;
    ngx_post_event(timer_, &ngx_posted_events);
}

namespace {

// As an idle keep-alive connection does: the header buffers are not needed any more.
void release_header_buffers(ngx_connection_t *c, ngx_http_connection_t *hc) {
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
    if (c->buffer != nullptr && c->buffer->start != nullptr && ngx_pfree(c->pool, c->buffer->start) == NGX_OK) {
        c->buffer->start = c->buffer->pos = c->buffer->last = c->buffer->end = nullptr;
    }
}

}  // namespace

void sse_detached_read(ngx_event_t *rev) noexcept;
void sse_detached_write(ngx_event_t *wev) noexcept;

// Frees the request (writing its access log line) and keeps only the connection. false:
// the stream was closed (this object is gone).
bool SseStream::detach() noexcept {
    ngx_connection_t *c = conn_;
    ngx_http_request_t *r = request;
    auto *hc = static_cast<ngx_http_connection_t *>(r->http_connection);
    cleanup_->handler = nullptr;   // this object lives on
    request = nullptr;
    ngx_http_free_request(r, 0);
    c->destroyed = 0;
    release_header_buffers(c, hc);
    auto *ctx = static_cast<ngx_http_log_ctx_t *>(c->log->data);
    ctx->request = nullptr;
    ctx->current_request = nullptr;
    c->log->action = const_cast<char *>("sending events");
    c->data = this;
    c->read->handler = sse_detached_read;
    c->write->handler = sse_detached_write;
    if (c->read->timer_set) ngx_del_timer(c->read);
    timer_ = c->read;   // the request's event went with its pool (not armed: see detach_later())
    detached_ = true;
    out_.filters.~FilterOutput();   // its buffers went with the request pool
    new (&out_.socket) SocketOutput();
    if (fault::hit(fault::Site::detach_read_event) || ngx_handle_read_event(c->read, 0) != NGX_OK) {
        abort_stream("cannot watch the connection of a detached stream");
        return false;
    }
    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
    delivery_trim_heap_later();   // its request pool and header buffers were freed
    return true;
}

void SseStream::close_detached() noexcept {
    stop();
    socket().release();
    delivery_free_links(this);
    ngx_connection_t *c = conn_;
    this->~SseStream();
    ngx_free(this);
    ngx_http_close_connection(c);
}

// A detached stream reads only to see the client go: a little at a time, and a client
// that keeps sending is closed (it holds no request that could read it).
void sse_detached_read(ngx_event_t *rev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(rev->data);
    auto *sub = static_cast<SseStream *>(c->data);
    if (rev->timedout) {   // the ping timer
        rev->timedout = 0;
        sub->ping();
        return;
    }
    u_char buf[kReadChunk];
    ssize_t n = c->recv(c, buf, sizeof(buf));
    if (n == NGX_AGAIN) {
        if (ngx_handle_read_event(rev, 0) != NGX_OK) sub->abort_stream(nullptr);
        return;
    }
    if (n == 0 || n == NGX_ERROR) {
        sub->client_closed();
        return;
    }
    sub->read_bytes_ += size_t(n);
    if (sub->read_bytes_ > kMaxReadAfterRequest) {
        sub->abort_stream("client keeps sending on an event stream, closing it");
        return;
    }
    if (rev->ready) {
        ngx_post_event(rev, &ngx_posted_next_events);   // the rest after other events
    }
}

void sse_detached_write(ngx_event_t *wev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(wev->data);
    static_cast<SseStream *>(c->data)->on_write_event();
}

}  // namespace channels
