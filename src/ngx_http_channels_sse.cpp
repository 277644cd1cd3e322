// sse_channel: the content handler of EventSource subscribers (README "SSE"). The stream itself
// is ngx_http_channels_sse_stream.h.

#include <new>

#include "ngx_http_channels_jwt.h"
#include "ngx_http_channels_request.h"
#include "ngx_http_channels_sse_stream.h"

namespace channels {
namespace {

ngx_int_t send_stream_header(ngx_http_request_t *r) {
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;
    if (add_header(r, "Cache-Control", "no-cache") != NGX_OK || add_header(r, "X-Accel-Buffering", "no") != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_send_header(r);
}

// A stream that ends at once (HEAD, or a worker on its way out: the client reconnects).
ngx_int_t empty_stream(ngx_http_request_t *r) {
    ngx_int_t rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    return ngx_http_send_special(r, NGX_HTTP_LAST);
}

// Request cleanup of a stream still in request mode (a detached one disarms it).
void ngx_http_channels_sse_cleanup(void *data) noexcept {
    auto *sub = static_cast<SseStream *>(data);
    sub->release_request_mode();
    sub->~SseStream();
    ngx_free(sub);
}

void ngx_http_channels_sse_write(ngx_http_request_t *r) noexcept {
    auto *sub = static_cast<SseStream *>(ngx_http_get_module_ctx(r, ngx_http_channels_module));
    if (sub != nullptr && !sub->finished()) sub->on_write_event();
}

// Subscribes the stream and queues its first bytes. The stream object exists (and its
// cleanup is registered) before the store counts it, so any return below releases it.
ngx_int_t subscribe(ngx_http_request_t *r, SseStream *sub, const ChannelArgs &args, ngx_http_cleanup_t *cln) {
    WorkerZone *wz = sub->wz;
    size_t n = args.list.count;
    LocalChannel *locals[kMaxChannels];
    if (!delivery_alloc_links(sub, n, nullptr) || !delivery_prepare(wz, args.list, locals)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    Batch *page = batch_take(wz, kPageBytes);
    if (page == nullptr) {
        delivery_discard(wz, locals, n);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    LocConf *lcf = loc_conf(r);
    SubscribeQuery q;
    q.list = &args.list;
    q.locals = locals;
    q.has_cursor = request_cursor(r, &q.cursor);
    q.first = first_message(lcf);
    q.existing_only = lcf->existing_only;
    SubscribeResult res = wz->store->subscribe(wz->session, q, sub->positions, *page);
    if (res.status != SubscribeStatus::ok || !res.attached) {
        delivery_discard(wz, locals, n);
        batch_give(wz, page);
        return send_refusal(r, res.status, args.list.ids[res.failed_index]);
    }
    delivery_attach(sub, locals, n);
    sub->news_after = q.has_cursor ? std::min(q.cursor, res.attached_at) : res.attached_at;
    sub->cursor = q.has_cursor ? q.cursor : MessageId{};
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0, "channels: sse subscriber of %uz channels, replay %uz",
                   n, page->items.size());
    ngx_int_t rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        batch_give(wz, page);
        return rc;
    }
    r->write_event_handler = ngx_http_channels_sse_write;
    watch_client_close(r);
    rc = sub->start(cln, *page, page->more);
    batch_give(wz, page);
    if (rc != NGX_OK) return NGX_ERROR;
    sub->end_at(auth_expiry_ms(r));
    r->main->count++;
    return NGX_DONE;
}

ngx_int_t serve_sse(ngx_http_request_t *r) {
    ChannelArgs args;
    ngx_int_t rc = NGX_OK;
    if (!subscriber_prelude(r, args, &rc)) return rc;
    WorkerZone *wz = worker_zone(zone_of(loc_conf(r)));
    if (r->method & NGX_HTTP_HEAD) {   // what a GET would be answered, at once
        const std::string_view *missing = missing_channel(r, args);
        return missing != nullptr ? send_refusal(r, SubscribeStatus::not_found, *missing) : empty_stream(r);
    }
    if (delivery_exiting() || wz == nullptr) return empty_stream(r);

    void *mem = ngx_alloc(sizeof(SseStream), r->connection->log);
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (mem == nullptr || cln == nullptr) {
        ngx_free(mem);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *sub = new (mem) SseStream(r, wz, args.list.count > 1);
    cln->handler = ngx_http_channels_sse_cleanup;
    cln->data = sub;
    ngx_http_set_ctx(r, sub, ngx_http_channels_module);
    return subscribe(r, sub, args, cln);
}

}  // namespace

ngx_int_t ngx_http_channels_sse_handler(ngx_http_request_t *r) noexcept {
    return guarded(r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [r] { return serve_sse(r); });
}

}  // namespace channels
