// longpoll_channel: long-poll subscribers, json and raw (README "Long polling").
//
// A request whose cursor has messages after it is answered at once. Otherwise it waits,
// registered like an SSE subscriber, until a delivery pass hands it messages (it answers
// with them when flushed: no second look at the zone), its channel is deleted (410), the
// timeout passes or the worker shuts down (204 with its cursor).
//
// An answer holds at most 100 messages (raw: one) and about 1 MiB of encoded data (but
// always one message), and is built in one exact allocation (README "Long polling", "What one client can cost").

#include <algorithm>
#include <new>

#include "channels/json.h"
#include "channels/json_writer.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_frame.h"
#include "ngx_http_channels_fault.h"
#include "ngx_http_channels_jwt.h"
#include "ngx_http_channels_longpoll_park.h"
#include "ngx_http_channels_request.h"

namespace channels {
namespace {

constexpr size_t kMaxJsonMessages = 100;
constexpr size_t kAnswerBytes = 1024 * 1024;   // encoded, in an answer (but one message)
constexpr ngx_uint_t kHttpGone = 410;   // nginx names no constant for it

struct Answer {
    const MessageCopy *items[kMaxJsonMessages];   // the first n are set
    size_t n = 0;
    size_t bytes = 0;   // encoded data so far
    bool gap = false;
};

// Waiters of a channel woken by the same pass mostly answer with the same messages: the
// JSON body is built once and shared (reference-counted) by every such answer. Entries
// hold pointers into the pass's batch, so the cache is emptied when a batch is released.
struct SharedBody {
    const MessageCopy *first = nullptr;
    size_t n = 0;
    bool gap = false;
    Frame *body = nullptr;
};

struct BodyCache {
    const WorkerZone *wz = nullptr;
    uint64_t released = 0;
    SharedBody entries[8];
    size_t next = 0;

    void clear() {
        for (SharedBody &e : entries) {
            frame_unref(e.body);
            e = SharedBody{};
        }
    }
};

BodyCache body_cache;   // one per worker (all waiters run in its event loop)

size_t answer_limit(const LocConf *lcf) { return lcf->longpoll_raw ? 1 : kMaxJsonMessages; }

template <typename Sink>
void put_message(JsonWriter<Sink> &w, const MessageCopy &m) {
    w.open_object().key("id").id(m.id).key("channel").string(m.channel_id);
    if (!m.event.empty()) w.key("event").string(m.event);
    w.key("data");
    if (is_valid_utf8(m.data)) {
        w.string(m.data);
    } else {
        w.base64(m.data).key("encoding").string("base64");
    }
    w.key("content_type").string(m.content_type.empty() ? std::string_view("text/plain") : m.content_type);
    w.close_object();
}

// Encoded size of a message's JSON object.
size_t message_size(const MessageCopy &m) {
    SizeSink size;
    JsonWriter<SizeSink> w(size);
    put_message(w, m);
    return size.size();
}

// Adds a message unless the answer is full; false when it was not added.
bool add(Answer &a, const MessageCopy &m, size_t limit) {
    if (a.n == limit) return false;
    size_t size = message_size(m);
    if (a.n > 0 && a.bytes + size > kAnswerBytes) return false;
    a.items[a.n++] = &m;
    a.bytes += size;
    return true;
}

template <typename Sink>
void put_answer(Sink &sink, const Answer &a) {
    JsonWriter<Sink> w(sink);
    w.open_object().key("messages").open_array();
    for (size_t i = 0; i < a.n; i++) put_message(w, *a.items[i]);
    w.close_array().key("last_event_id").id(a.items[a.n - 1]->id);
    if (a.gap) w.key("gap").boolean(true);
    w.close_object().raw("\n");
}

ngx_int_t common_headers(ngx_http_request_t *r, MessageId cursor) {
    if (add_header(r, "Cache-Control", "no-cache") != NGX_OK || add_cursor_header(r, cursor) != NGX_OK) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

Frame *answer_body(const Answer &a) noexcept {
    return frame_build(false, [&](auto &sink) { put_answer(sink, a); });
}

// The body for a live answer: shared with the other waiters answered by the same pass.
Frame *shared_body(WorkerZone *wz, const Answer &a) noexcept {
    BodyCache &cache = body_cache;
    if (cache.wz != wz || cache.released != wz->released) {
        cache.clear();
        cache.wz = wz;
        cache.released = wz->released;
    }
    for (SharedBody &e : cache.entries) {
        if (e.body != nullptr && e.first == a.items[0] && e.n == a.n && e.gap == a.gap) {
            frame_ref(e.body);
            return e.body;
        }
    }
    Frame *body = answer_body(a);
    if (body == nullptr) return nullptr;
    SharedBody &slot = cache.entries[cache.next++ % 8];
    frame_unref(slot.body);
    slot = SharedBody{a.items[0], a.n, a.gap, body};
    frame_ref(body);
    return body;
}

void release_body(void *data) noexcept { frame_unref(static_cast<Frame *>(data)); }

// 200 with the JSON body in a shared frame, kept until the request is freed.
ngx_int_t send_shared(ngx_http_request_t *r, Frame *body) {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == nullptr) {
        frame_unref(body);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    cln->handler = release_body;
    cln->data = body;
    ngx_buf_t *b = static_cast<ngx_buf_t *>(ngx_calloc_buf(r->pool));
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    b->start = b->pos = body->data;
    b->end = b->last = body->data + body->len;
    b->memory = 1;
    return send_buffer(r, NGX_HTTP_OK, "application/json", b);
}

// 200 with what the answer holds (never empty); wz: a live answer, its body shared.
ngx_int_t answer_messages(ngx_http_request_t *r, const Answer &a, WorkerZone *wz = nullptr) {
    if (fault::hit(fault::Site::longpoll_answer)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    LocConf *lcf = loc_conf(r);
    if (lcf->longpoll_raw) {
        const MessageCopy &m = *a.items[0];
        if (common_headers(r, m.id) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        if (!m.event.empty() && add_header(r, "Event-Type", m.event) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        return send_body(r, NGX_HTTP_OK, m.content_type.empty() ? std::string_view("text/plain") : m.content_type,
                         m.data);
    }
    if (common_headers(r, a.items[a.n - 1]->id) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (wz != nullptr) {
        Frame *body = shared_body(wz, a);
        return body != nullptr ? send_shared(r, body) : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    SizeSink size;
    put_answer(size, a);
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, size.size());
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    BufferSink out(reinterpret_cast<char *>(b->pos));
    put_answer(out, a);
    b->last = reinterpret_cast<u_char *>(out.end());
    return send_buffer(r, NGX_HTTP_OK, "application/json", b);
}

ngx_int_t answer_empty(ngx_http_request_t *r, ngx_uint_t status, MessageId cursor) {
    if (common_headers(r, cursor) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (status == kHttpGone) return send_text(r, status, "channel deleted");
    return send_body(r, status, "text/plain", {});
}

// A refusal (404, 503) tells the client where it stands, like every long-poll answer.
ngx_int_t refuse(ngx_http_request_t *r, SubscribeStatus status, std::string_view channel, MessageId cursor) {
    if (add_cursor_header(r, cursor) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    return send_refusal(r, status, channel);
}

// An answer from a first page: its messages up to a deletion (the next request, from the
// last of them, gets the deletion), or 410 when the deletion comes first.
ngx_int_t answer_page(ngx_http_request_t *r, const Batch &page, size_t limit) {
    Answer a;
    a.gap = !page.gaps.empty();
    for (const MessageCopy &m : page.items) {
        if (m.kind == EntryKind::deleted) {
            if (a.n == 0) return answer_empty(r, kHttpGone, m.id);
            break;
        }
        add(a, m, limit);
    }
    return answer_messages(r, a);
}

void ngx_http_channels_longpoll_cleanup(void *data) noexcept;

// Lives in its request's pool, links too. One that waited park_delay() moves to the heap
// and gives up its request (parked, ngx_http_channels_longpoll_park.h), which comes back
// when it answers.
class LongpollWaiter final : public Subscriber {
public:
    LongpollWaiter(ngx_http_request_t *r, WorkerZone *zone)
        : request_(r), conn_(r->connection), limit_(answer_limit(loc_conf(r))) {
        wz = zone;
    }
    ~LongpollWaiter() {
        if (parked_answer_) ngx_free(answer_);
    }

    // Collects the pass's messages: the first pass that reaches a waiting request holds
    // everything after its cursor, so the answer needs no second look at the zone.
    // A deletion ends what the answer takes: messages before it are answered, and the next
    // request (from the last of them) learns of the deletion; without any, 410.
    void on_message(const MessageCopy &m, size_t, MessageFrames &) noexcept override {
        if (deleted_) return;
        cursor = m.id;
        if (m.kind == EntryKind::deleted) {
            deleted_ = true;
            deleted_at_ = m.id;
            return;
        }
        if (answer_ == nullptr) {
            parked_answer_ = request_ == nullptr;
            answer_ = static_cast<Answer *>(parked_answer_ ? ngx_alloc(sizeof(Answer), conn_->log)
                                                           : ngx_palloc(request_->pool, sizeof(Answer)));
            if (answer_ == nullptr) {
                failed_ = true;
                return;
            }
            answer_->n = 0;
            answer_->bytes = 0;
            answer_->gap = gap_;
        }
        add(*answer_, m, limit_);
    }

    void on_lost(size_t, MessageId upto) noexcept override {
        if (upto <= reply_cursor) return;
        gap_ = true;
        if (answer_ != nullptr) answer_->gap = true;
    }

    void on_flush() noexcept override {
        bool answers = failed_ || (answer_ != nullptr && answer_->n > 0) || deleted_;
        if (!answers || !ensure_request()) return;
        if (failed_) {
            finish(NGX_HTTP_INTERNAL_SERVER_ERROR);
        } else if (answer_ != nullptr && answer_->n > 0) {
            finish(answer_messages(request_, *answer_, wz));
        } else if (deleted_) {
            finish(answer_empty(request_, kHttpGone, deleted_at_));
        }
    }

    void on_shutdown() noexcept override {
        if (ensure_request()) finish(answer_empty(request_, NGX_HTTP_NO_CONTENT, reply_cursor));
    }

    // Waits from here on: registered with the delivery, timed, watching the client. The
    // timer first fires to park the request, if the wait is longer than park_delay().
    void park(ngx_msec_t timeout, bool gap, MessageId last_news) {
        gap_ = gap;
        timeout_.handler = timeout_handler;
        timeout_.data = this;
        timeout_.log = conn_->log;
        deadline_ = ngx_current_msec + timeout;
        ngx_add_timer(&timeout_, std::min(timeout, park_delay(last_news.ms)));
    }

    void stop() noexcept {
        delivery_detach(this);
        if (timeout_.timer_set) ngx_del_timer(&timeout_);
    }

    // Ends this object (its request is gone, or never comes back).
    void release() noexcept {
        stop();
        delivery_free_links(this);
        bool heap = on_heap_;
        this->~LongpollWaiter();
        if (heap) ngx_free(this);
    }

    MessageId reply_cursor;   // the cursor the client sent, or where it started waiting

private:
    static void timeout_handler(ngx_event_t *ev) noexcept {
        auto *sub = static_cast<LongpollWaiter *>(ev->data);
        auto left = ngx_msec_int_t(sub->deadline_ - ngx_current_msec);
        if (left > 0) {   // waited park_delay(): the request can go until the answer
            sub = sub->try_park();
            ngx_add_timer(&sub->timeout_, ngx_msec_t(left));
            return;
        }
        if (sub->ensure_request()) sub->finish(answer_empty(sub->request_, NGX_HTTP_NO_CONTENT, sub->reply_cursor));
    }

    // The waiter that goes on: this one, or its copy on the heap once the request is parked
    // (this object went with the request's pool). Not while an answer is on its way
    // (touched: flushed soon, its answer in the pool).
    LongpollWaiter *try_park() noexcept {
        if (request_ == nullptr || touched || answer_ != nullptr || deleted_ || failed_ || !attached) return this;
        ParkedRequest *p = park_prepare(request_, this);
        if (p == nullptr) return this;
        LongpollWaiter *moved = relocate();
        if (moved == nullptr) {
            park_cancel(p);
            return this;
        }
        moved->parked_ = p;
        park_commit(p, request_, moved, parked_gone);
        return moved;
    }

    LongpollWaiter(const LongpollWaiter &) = default;

    // A copy on the heap, in this one's place in the delivery (this one holds nothing after).
    LongpollWaiter *relocate() noexcept {
        void *mem = ngx_alloc(sizeof(LongpollWaiter), conn_->log);
        if (mem == nullptr) return nullptr;
        auto *to = new (mem) LongpollWaiter(*this);
        if (!move_subscriber(this, to)) {
            to->~LongpollWaiter();
            ngx_free(mem);
            return nullptr;
        }
        to->request_ = nullptr;
        to->on_heap_ = true;
        to->timeout_.data = to;   // (not armed: it is what fired)
        return to;
    }

    static void parked_gone(void *owner) noexcept { static_cast<LongpollWaiter *>(owner)->release(); }

    // A parked waiter gets its request back before it answers, and is again the request's
    // (its cleanup). false: the request could not come back; this object is gone.
    bool ensure_request() noexcept {
        if (request_ != nullptr) return true;
        ParkedRequest *p = parked_;
        parked_ = nullptr;
        ngx_connection_t *c = conn_;
        ngx_http_request_t *r = unpark_request(p);
        ngx_http_cleanup_t *cln = r != nullptr ? ngx_http_cleanup_add(r, 0) : nullptr;
        if (cln == nullptr) {
            release();
            if (r != nullptr) ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            ngx_http_run_posted_requests(c);
            return false;
        }
        cln->handler = ngx_http_channels_longpoll_cleanup;
        cln->data = this;
        request_ = r;
        return true;
    }

    void finish(ngx_int_t rc) noexcept {
        ngx_http_request_t *r = request_;
        ngx_connection_t *c = r->connection;
        stop();
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }

    ngx_http_request_t *request_;     // nullptr while parked
    ngx_connection_t *conn_;
    ParkedRequest *parked_ = nullptr;
    size_t limit_;
    ngx_event_t timeout_{};
    ngx_msec_t deadline_ = 0;
    Answer *answer_ = nullptr;
    bool parked_answer_ = false;      // answer_ was allocated while parked: on the heap
    bool on_heap_ = false;
    bool deleted_ = false;
    MessageId deleted_at_;    // the deletion's id: a client polling on from it is past it
    bool failed_ = false;
    bool gap_ = false;        // messages after its cursor were lost before it waited
};

void ngx_http_channels_longpoll_cleanup(void *data) noexcept { static_cast<LongpollWaiter *>(data)->release(); }

// The first page answers at once when it holds anything; else the request waits.
ngx_int_t wait_or_answer(ngx_http_request_t *r, LongpollWaiter *sub, const ChannelArgs &args, bool has_cursor,
                         MessageId client_cursor) {
    LocConf *lcf = loc_conf(r);
    WorkerZone *wz = sub->wz;
    size_t n = args.list.count;
    LocalChannel *locals[kMaxChannels];
    if (!delivery_alloc_links(sub, n, r->pool) || !delivery_prepare(wz, args.list, locals)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    // An answer read at once takes at most a page of data (the next request gets the rest
    // at once): the batch is the worker's recycled page-sized one, nothing to allocate.
    Batch *page = batch_take(wz, kPageBytes);
    if (page == nullptr) {
        delivery_discard(wz, locals, n);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    SubscribeQuery q;
    q.list = &args.list;
    q.locals = locals;
    q.has_cursor = has_cursor;
    q.cursor = client_cursor;
    q.first = first_message(lcf);
    q.existing_only = lcf->existing_only;
    q.attach_only_if_empty = true;
    q.limit = std::min(answer_limit(lcf), kPageMessages);   // one page under the lock (the next request gets more)
    q.byte_limit = kPageBytes;
    SubscribeResult res = wz->store->subscribe(wz->session, q, sub->positions, *page);
    if (res.status == SubscribeStatus::ok && page->need_bytes > 0 && batch_grow(page)) {
        page->clear();   // one message larger than a page: read again with room for it
        res = wz->store->subscribe(wz->session, q, sub->positions, *page);
    }
    if (res.status != SubscribeStatus::ok || !page->items.empty() || !res.attached) {
        delivery_discard(wz, locals, n);
        ngx_int_t rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        if (res.status != SubscribeStatus::ok) {
            rc = refuse(r, res.status, args.list.ids[res.failed_index], has_cursor ? client_cursor : wz->store->position());
        } else if (!page->items.empty()) {
            rc = answer_page(r, *page, q.limit);
        }
        batch_give(wz, page);
        return rc;
    }
    delivery_attach(sub, locals, n);
    sub->news_after = has_cursor ? std::min(client_cursor, res.attached_at) : res.attached_at;
    // Never below the client's own cursor: a host still mirroring Redis may get older ids.
    sub->cursor = has_cursor ? std::max(res.attached_at, client_cursor) : res.attached_at;
    sub->reply_cursor = has_cursor ? client_cursor : res.attached_at;
    sub->park(auth_bounded_wait(r, lcf->longpoll_timeout), !page->gaps.empty(),   // never past the token's exp
              has_cursor ? client_cursor : MessageId{});
    batch_give(wz, page);
    r->write_event_handler = ngx_http_request_empty_handler;
    watch_client_close(r);
    r->main->count++;
    return NGX_DONE;
}

ngx_int_t serve_longpoll(ngx_http_request_t *r) {
    LocConf *lcf = loc_conf(r);
    ZoneConf *zone = zone_of(lcf);
    WorkerZone *wz = worker_zone(zone);
    MessageId client_cursor;
    bool has_cursor = request_cursor(r, &client_cursor);
    MessageId refusal_cursor = has_cursor ? client_cursor : zone->store->position();
    ChannelArgs args;
    ngx_int_t rc = NGX_OK;
    if (!subscriber_prelude(r, args, &rc, &refusal_cursor)) return rc;

    if (r->method & NGX_HTTP_HEAD) {   // the headers a GET would carry, at once
        if (const std::string_view *missing = missing_channel(r, args)) {
            return refuse(r, SubscribeStatus::not_found, *missing,
                          has_cursor ? client_cursor : zone->store->position());
        }
        if (common_headers(r, has_cursor ? client_cursor : zone->store->position()) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return send_body(r, NGX_HTTP_OK, lcf->longpoll_raw ? "text/plain" : "application/json", {});
    }
    if (delivery_exiting() || wz == nullptr) {
        return answer_empty(r, NGX_HTTP_NO_CONTENT, has_cursor ? client_cursor : zone->store->position());
    }
    void *mem = ngx_palloc(r->pool, sizeof(LongpollWaiter));
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (mem == nullptr || cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto *sub = new (mem) LongpollWaiter(r, wz);
    cln->handler = ngx_http_channels_longpoll_cleanup;
    cln->data = sub;
    return wait_or_answer(r, sub, args, has_cursor, client_cursor);
}

}  // namespace

ngx_int_t ngx_http_channels_longpoll_handler(ngx_http_request_t *r) noexcept {
    return guarded(r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [r] { return serve_longpoll(r); });
}

}  // namespace channels
