// publish_channel: POST/PUT publish, GET channel info, DELETE (README "Publishing"). Publishing and
// deleting go through the zone's store, which answers at once (shared memory) or later
// (Redis): the request waits for its PublishCall either way.

#include "channels/json_writer.h"
#include "ngx_http_channels_request.h"

namespace channels {
namespace {

constexpr std::string_view kAllow = "GET, HEAD, POST, PUT, DELETE";

// A publish or delete in flight, in the request's pool.
struct PublishRequest {
    PublishCall call;
    ngx_http_request_t *r;
    ngx_http_cleanup_t *cleanup;
    Store *store;
    bool waiting;           // the store answers later: the request is parked
    ngx_int_t rc;           // the answer's result, when the store answered at once
};

template <typename Sink>
void put_info(Sink &sink, std::string_view channel, const ChannelInfo &info) {
    JsonWriter<Sink> w(sink);
    w.open_object().key("channel").string(channel).key("messages").number(info.messages);
    w.key("subscribers").number(info.subscribers).key("last_event_id").id(info.newest);
    w.key("oldest_event_id").id(info.oldest).close_object().raw("\n");
}

template <typename Sink>
void put_published(Sink &sink, const PublishCall &call) {
    JsonWriter<Sink> w(sink);
    w.open_object().key("channel").string(call.in.channel).key("id").id(call.id);
    w.key("subscribers").number(call.subscribers).key("messages").number(call.messages).close_object().raw("\n");
}

// A JSON answer written straight into one buffer of the right size.
template <typename PutFn>
ngx_int_t send_json(ngx_http_request_t *r, ngx_uint_t status, PutFn &&put) {
    SizeSink size;
    put(size);
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, size.size());
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    BufferSink out(reinterpret_cast<char *>(b->pos));
    put(out);
    b->last = reinterpret_cast<u_char *>(out.end());
    return send_buffer(r, status, "application/json", b);
}

ngx_int_t answer(PublishRequest *p) {
    ngx_http_request_t *r = p->r;
    const PublishCall &call = p->call;
    switch (call.status) {
    case PublishCall::Status::ok:
        if (call.remove) {
            return send_json(r, NGX_HTTP_OK, [&](auto &sink) { put_info(sink, call.in.channel, call.info); });
        }
        return send_json(r, NGX_HTTP_CREATED, [&](auto &sink) { put_published(sink, call); });
    case PublishCall::Status::not_found:
        return send_text(r, NGX_HTTP_NOT_FOUND, "channel not found");
    case PublishCall::Status::too_large:
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "channels: 507: message of %uz bytes does not fit in zone \"%V\"",
                      call.in.data.size(), &zone_of(loc_conf(r))->name);
        return send_body(r, NGX_HTTP_INSUFFICIENT_STORAGE, "text/plain", "message too large for zone\n");
    case PublishCall::Status::unavailable:
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis unavailable");
    case PublishCall::Status::failed:
        break;
    }
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

// The store's answer: now (inside start()) or later (the request was parked).
void ngx_http_channels_publish_done(PublishCall *call) {
    auto *p = static_cast<PublishRequest *>(call->owner);
    ngx_int_t rc = guarded(p->r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [p] { return answer(p); });
    if (!p->waiting) {
        p->rc = rc;
        return;
    }
    p->cleanup->handler = nullptr;
    ngx_http_request_t *r = p->r;
    ngx_connection_t *c = r->connection;
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

// The request went away first: the store must not answer it.
void ngx_http_channels_publish_cleanup(void *data) noexcept {
    auto *p = static_cast<PublishRequest *>(data);
    if (p->waiting) p->store->cancel(&p->call);
}

ngx_int_t start_call(ngx_http_request_t *r, const PublishInput &in, bool remove) {
    ZoneConf *zone = zone_of(loc_conf(r));
    auto *p = static_cast<PublishRequest *>(ngx_pcalloc(r->pool, sizeof(PublishRequest)));
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (p == nullptr || cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    new (&p->call) PublishCall();
    p->call.in = in;
    p->call.remove = remove;
    p->call.done = ngx_http_channels_publish_done;
    p->call.owner = p;
    p->r = r;
    p->cleanup = cln;
    p->store = zone->store;
    p->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    cln->handler = ngx_http_channels_publish_cleanup;
    cln->data = p;
    if (zone->store->start(&p->call) == NGX_OK) return p->rc;
    p->waiting = true;
    r->main->count++;   // answered from ngx_http_channels_publish_done()
    return NGX_DONE;
}

// Each check either fills in its value and returns true, or answers the request itself
// (a 4xx, or 500 on internal failure) and returns false with *rc the handler's result.

// The one channel id of a publish location.
bool publish_channel_id(ngx_http_request_t *r, std::string_view *id, ngx_int_t *rc) {
    ChannelArgs args;
    if (eval_channels(r, loc_conf(r), args) != NGX_OK) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    if (args.error != ListError::none) {
        *rc = send_text(r, NGX_HTTP_BAD_REQUEST, describe(args.error));
        return false;
    }
    if (args.list.count != 1) {
        *rc = send_text(r, NGX_HTTP_BAD_REQUEST, "invalid channel id: publishing takes exactly one channel");
        return false;
    }
    *id = args.list.ids[0];
    return true;
}

// Event type from the Event-Type header or ?event=; an empty value means none.
bool publish_event_type(ngx_http_request_t *r, std::string_view *event, ngx_int_t *rc) {
    ngx_str_t value = find_header(r, "Event-Type");
    if (value.len == 0) {
        bool found;
        if (decoded_arg(r, "event", &value, &found) != NGX_OK) {
            *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return false;
        }
    }
    *event = view(value);
    if (!event->empty() && !is_valid_event_type(*event)) {
        *rc = send_text(r, NGX_HTTP_BAD_REQUEST, "invalid event type: 1-64 bytes without CR, LF or NUL");
        return false;
    }
    return true;
}

bool publish_content_type(ngx_http_request_t *r, std::string_view *type, ngx_int_t *rc) {
    *type = {};
    if (r->headers_in.content_type == nullptr) return true;
    std::string_view value = view(r->headers_in.content_type->value);
    if (value.size() > kMaxContentTypeLen) {
        *rc = send_text(r, NGX_HTTP_BAD_REQUEST, "invalid content type: longer than 255 bytes");
        return false;
    }
    if (value != "text/plain") *type = value;   // the default is stored as nothing
    return true;
}

// The whole request body in one buffer, read back from the temp file when nginx wrote one.
ngx_int_t body_bytes(ngx_http_request_t *r, std::string_view *data) {
    *data = {};
    if (r->request_body == nullptr || r->request_body->bufs == nullptr) return NGX_OK;
    size_t total = 0;
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        total += cl->buf->in_file ? size_t(cl->buf->file_last - cl->buf->file_pos) : size_t(cl->buf->last - cl->buf->pos);
    }
    auto *mem = static_cast<u_char *>(ngx_pnalloc(r->pool, total ? total : 1));
    if (mem == nullptr) return NGX_ERROR;
    u_char *p = mem;
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        if (!b->in_file) {
            if (b->last > b->pos) p = ngx_cpymem(p, b->pos, size_t(b->last - b->pos));
            continue;
        }
        size_t size = size_t(b->file_last - b->file_pos);
        ssize_t n = ngx_read_file(b->file, p, size, b->file_pos);
        if (n != ssize_t(size)) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "channels: reading the buffered request body failed");
            return NGX_ERROR;
        }
        p += size;
    }
    *data = {reinterpret_cast<char *>(mem), total};
    return NGX_OK;
}

ngx_int_t publish(ngx_http_request_t *r) {
    PublishInput in;
    ngx_int_t rc = NGX_OK;
    if (!publish_channel_id(r, &in.channel, &rc) || !publish_event_type(r, &in.event, &rc) ||
        !publish_content_type(r, &in.content_type, &rc)) {
        return rc;
    }
    if (body_bytes(r, &in.data) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    return start_call(r, in, false);
}

void ngx_http_channels_body_read(ngx_http_request_t *r) noexcept {
    ngx_http_finalize_request(r, guarded(r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR),
                                         [r] { return publish(r); }));
}

ngx_int_t channel_info(ngx_http_request_t *r, bool remove) {
    std::string_view channel;
    ngx_int_t rc = NGX_OK;
    if (!publish_channel_id(r, &channel, &rc)) return rc;
    if (remove) return start_call(r, PublishInput{channel, {}, {}, {}}, true);
    ChannelInfo info = zone_of(loc_conf(r))->store->info(channel);
    if (!info.exists) return send_text(r, NGX_HTTP_NOT_FOUND, "channel not found");
    return send_json(r, NGX_HTTP_OK, [&](auto &sink) { put_info(sink, channel, info); });
}

ngx_int_t serve_publish(ngx_http_request_t *r) {
    if (r->method & (NGX_HTTP_POST | NGX_HTTP_PUT)) {
        ngx_int_t rc = ngx_http_read_client_request_body(r, ngx_http_channels_body_read);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
        return NGX_DONE;
    }
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)) return channel_info(r, false);
    if (r->method & NGX_HTTP_DELETE) return channel_info(r, true);
    if (add_header(r, "Allow", kAllow) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    return send_text(r, NGX_HTTP_NOT_ALLOWED, "method not allowed");
}

}  // namespace

ngx_int_t ngx_http_channels_publish_handler(ngx_http_request_t *r) noexcept {
    return guarded(r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [r] { return serve_publish(r); });
}

}  // namespace channels
