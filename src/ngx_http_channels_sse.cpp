// sse_channel: EventSource subscribers (SPEC §4).
//
// The request is parked in the event loop (count++, NGX_DONE). Messages arrive from the
// worker's delivery pass as shared frames; over HTTP/1.x the output chain points into
// them (no per-subscriber copy). HTTP/2 copies each frame into the stream's own recycled
// buffers, because an HTTP/2 stream may still send queued data after its request cleanup.

#include <algorithm>
#include <new>

#include "channels/json.h"
#include "channels/sse_format.h"
#include "ngx_http_channels.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_store.h"

namespace chn {
namespace {

constexpr size_t kMaxUnsent = 1024 * 1024;   // SPEC §4: cut off a subscriber beyond this
constexpr size_t kCopyBufferSize = 4096;
const char kBufTag = 0;                      // identifies our bufs in chains

Frame *ping_frame;                           // ":\n\n", shared by the whole worker

Frame *make_frame(std::string_view bytes) {
    Frame *f = frame_new(bytes);
    if (f == nullptr) throw std::bad_alloc();
    return f;
}

Frame *message_frame(const MessageCopy &m, bool named) {
    char id[channels::kMaxIdText];
    std::string_view id_text{id, channels::format_id(m.id, id)};
    std::string_view event = !m.event.empty() ? m.event : (named ? m.channel_id : std::string_view{});
    std::string text;
    text.reserve(channels::sse_event_size(id_text, event, m.data));
    channels::append_sse_event(text, id_text, event, m.data);
    return make_frame(text);
}

std::string channel_json(std::string_view channel) {
    std::string json = "{\"channel\":";
    channels::append_json_string(json, channel);
    json += '}';
    return json;
}

void append_deleted_event(std::string &out, const MessageCopy &m) {
    char id[channels::kMaxIdText];
    channels::append_sse_event(out, {id, channels::format_id(m.id, id)}, "channel-deleted",
                               channel_json(m.channel_id));
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

class SseSubscriber final : public Subscriber {
public:
    SseSubscriber(ngx_http_request_t *r, WorkerZone *zone, bool multi_channel) {
        request = r;
        wz = zone;
        multi = multi_channel;
#if (NGX_HTTP_V2)
        copy_frames = r->stream != nullptr;
#endif
    }

    void on_message(const MessageCopy &m, Link &link, MessageFrames &frames) override {
        MessageId before = cursor;
        cursor = m.id;
        if (m.kind == EntryKind::deleted) {
            if (frames.plain == nullptr) {
                std::string text;
                append_deleted_event(text, m);
                frames.plain = make_frame(text);
            }
            link.active = false;
            leaving = true;
            append(frames.plain);
            return;
        }
        if (m.channel_trimmed > before) {
            std::string text;
            append_gap_event(text, m.channel_id, before, m.channel_oldest);
            append_owned(text);
        }
        Frame *&frame = multi ? frames.named : frames.plain;
        if (frame == nullptr) frame = message_frame(m, multi);
        append(frame);
    }

    void on_flush() override {
        if (leaving) leave_deleted_channels();
        ngx_connection_t *c = request->connection;
        if (send() == NGX_OK && nactive == 0) end_stream();
        ngx_http_run_posted_requests(c);
    }

    void on_shutdown() override {
        ngx_connection_t *c = request->connection;
        if (send() == NGX_OK) end_stream();
        ngx_http_run_posted_requests(c);
    }

    void append(Frame *f) {
        if (f == nullptr) return;
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
        queued += f->len;
    }

    // A frame only this subscriber needs (replay, gap): the buf becomes its owner.
    void append_owned(std::string_view bytes) {
        Frame *f = make_frame(bytes);
        append(f);
        frame_unref(f);
    }

    // Writes what is queued. NGX_OK: the stream goes on; NGX_DONE: it was finalized.
    ngx_int_t send() {
        if (finished) return NGX_DONE;
        if (write_pending() != NGX_OK) return abort_stream(nullptr);
        if (queued - released > kMaxUnsent) {
            store_count_dropped_slow(wz->zone);
            return abort_stream("subscriber did not read 1 MiB of events, closing it");
        }
        return NGX_OK;
    }

    // Hands the queued bufs to nginx's filters; NGX_ERROR when the connection failed.
    ngx_int_t write_pending() {
        ngx_int_t rc = ngx_http_output_filter(request, pending);
        reclaim_sent();
        if (rc == NGX_ERROR) return NGX_ERROR;
        return arm_write_timer();
    }

    // The stream ends cleanly: the client reconnects and resumes from its cursor.
    void end_stream() {
        stop();
        ngx_http_request_t *r = request;
        ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
    }

    ngx_int_t abort_stream(const char *reason) {
        ngx_http_request_t *r = request;
        if (reason != nullptr) ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "channels: %s", reason);
        stop();
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_DONE;
    }

    // No more deliveries, pings or write timeouts (request cleanup frees the rest).
    void stop() {
        finished = true;
        delivery_detach(this);
        if (ping.timer_set) ngx_del_timer(&ping);
        if (request->connection->write->timer_set) ngx_del_timer(request->connection->write);
    }

    ngx_int_t arm_write_timer() {
        ngx_http_request_t *r = request;
        ngx_event_t *wev = r->connection->write;
        if (!r->connection->buffered && busy == nullptr) {
            if (wev->timer_set) ngx_del_timer(wev);
            return NGX_OK;
        }
        auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
            ngx_http_get_module_loc_conf(r, ngx_http_core_module));
        if (!wev->timer_set) ngx_add_timer(wev, clcf->send_timeout);
        return ngx_handle_write_event(wev, clcf->send_lowat);
    }

    void leave_deleted_channels() {
        leaving = false;
        for (size_t i = 0; i < nlinks; i++) {
            if (!links[i].active && links[i].channel != nullptr) delivery_leave(this, links[i]);
        }
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
                frame_unref(reinterpret_cast<Frame *>(b->start - offsetof(Frame, data)));
                b->start = b->end = nullptr;
            }
            cl->next = free_bufs;
            free_bufs = cl;
        }
        if (busy == nullptr) busy_last = &busy;
    }

    // Request cleanup: nothing of ours may stay referenced.
    void release_all() {
        if (!finished) stop();
        if (copy_frames) return;   // copies live in the request pool
        for (ngx_chain_t *chain : {busy, pending}) {
            for (ngx_chain_t *cl = chain; cl != nullptr; cl = cl->next) {
                ngx_buf_t *b = cl->buf;
                if (b->tag != &kBufTag || b->start == nullptr) continue;
                frame_unref(reinterpret_cast<Frame *>(b->start - offsetof(Frame, data)));
                b->start = b->end = nullptr;
            }
        }
    }

    ngx_event_t ping{};
    ngx_msec_t  ping_interval = 0;

private:
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

    ngx_chain_t  *pending = nullptr;
    ngx_chain_t **out_last = &pending;
    ngx_chain_t  *free_bufs = nullptr;
    ngx_chain_t  *busy = nullptr;
    ngx_chain_t **busy_last = &busy;
    size_t        queued = 0;     // bytes handed to nginx
    size_t        released = 0;   // of those, bytes known to be sent
    bool          multi = false;
    bool          copy_frames = false;
    bool          leaving = false;
    bool          finished = false;
};

void cleanup(void *data) noexcept {
    auto *sub = static_cast<SseSubscriber *>(data);
    sub->release_all();
    sub->~SseSubscriber();
}

void ping_handler(ngx_event_t *ev) noexcept {
    auto *sub = static_cast<SseSubscriber *>(ev->data);
    ngx_connection_t *c = sub->request->connection;
    try {
        if (ping_frame == nullptr) ping_frame = make_frame(":\n\n");
        sub->append(ping_frame);
        if (sub->send() == NGX_OK) ngx_add_timer(ev, sub->ping_interval);
    } catch (...) {
        sub->abort_stream("out of memory");
    }
    ngx_http_run_posted_requests(c);
}

void write_handler(ngx_http_request_t *r) noexcept {
    auto *sub = static_cast<SseSubscriber *>(ngx_http_get_module_ctx(r, ngx_http_channels_module));
    if (sub == nullptr) return;
    if (r->connection->write->timedout) {
        r->connection->timedout = 1;
        sub->abort_stream("client timed out");
        return;
    }
    sub->send();
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
    for (const MessageCopy &m : res.replay.items) {
        char id[channels::kMaxIdText];
        std::string_view event = !m.event.empty() ? m.event : (multi ? m.channel_id : std::string_view{});
        channels::append_sse_event(out, {id, channels::format_id(m.id, id)}, event, m.data);
    }
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

    bool multi = args.list.count > 1;
    auto *sub = new (ngx_pcalloc(r->pool, sizeof(SseSubscriber))) SseSubscriber(r, zone->worker, multi);
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    cln->handler = cleanup;
    cln->data = sub;
    ngx_http_set_ctx(r, sub, ngx_http_channels_module);

    SubscribeQuery q;
    q.list = &args.list;
    q.has_cursor = request_cursor(r, &q.cursor);
    q.first_message = lcf->first_message;
    SubscribeResult res = store_subscribe(zone, zone->worker->record, q);
    if (!res.attached) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "channels: zone \"%V\" is full", &zone->name);
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "channel zone is full");
    }
    if (delivery_attach(sub, res, args.list.count) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    sub->cursor = res.replay.position;

    rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return rc;
    std::string start = stream_start(lcf, res, q.cursor, multi);
    if (start.empty()) start = ":\n\n";   // something to flush the header with
    sub->append_owned(start);
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = write_handler;
    if (lcf->sse_ping > 0) {
        sub->ping.handler = ping_handler;
        sub->ping.data = sub;
        sub->ping.log = r->connection->log;
        sub->ping_interval = lcf->sse_ping;
        ngx_add_timer(&sub->ping, lcf->sse_ping);
    }
    if (sub->write_pending() != NGX_OK) return NGX_ERROR;
    r->main->count++;
    return NGX_DONE;
}

}  // namespace

ngx_int_t sse_handler(ngx_http_request_t *r) {
    return guarded(r->connection->log, [r] { return handle(r); });
}

}  // namespace chn
