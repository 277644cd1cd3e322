// publish_channel: POST/PUT publish, GET channel info, DELETE (SPEC §3).

#include "channels/json.h"
#include "ngx_http_channels.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_publish.h"
#include "ngx_http_channels_redis.h"
#include "ngx_http_channels_store.h"

namespace chn {

std::string info_json(std::string_view channel, const ChannelInfo &info) {
    std::string out;
    out += "{\"channel\":";
    channels::append_json_string(out, channel);
    out += ",\"messages\":";
    channels::append_uint(out, info.messages);
    out += ",\"subscribers\":";
    channels::append_uint(out, info.subscribers);
    out += ",\"last_event_id\":";
    append_json_id(out, info.newest);
    out += ",\"oldest_event_id\":";
    append_json_id(out, info.oldest);
    out += "}\n";
    return out;
}

std::string published_json(std::string_view channel, const PublishResult &res) {
    std::string out;
    out += "{\"channel\":";
    channels::append_json_string(out, channel);
    out += ",\"id\":";
    append_json_id(out, res.id);
    out += ",\"subscribers\":";
    channels::append_uint(out, res.subscribers);
    out += ",\"messages\":";
    channels::append_uint(out, res.messages);
    out += "}\n";
    return out;
}

namespace {

constexpr std::string_view kAllow = "GET, HEAD, POST, PUT, DELETE";

// Each check either fills in its value and returns true, or answers the request itself
// (a 4xx, or 500 on internal failure) and returns false with *rc the handler's result.

// The one channel id of a publish location.
bool publish_channel_id(ngx_http_request_t *r, std::string_view *id, ngx_int_t *rc) {
    ChannelArgs args;
    if (eval_channels(r, loc_conf(r), args) != NGX_OK) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    if (args.error != channels::ListError::none) {
        *rc = send_text(r, NGX_HTTP_BAD_REQUEST, channels::describe(args.error));
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
    if (!event->empty() && !channels::is_valid_event_type(*event)) {
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
        total += cl->buf->in_file ? size_t(cl->buf->file_last - cl->buf->file_pos)
                                  : size_t(cl->buf->last - cl->buf->pos);
    }
    auto *mem = static_cast<u_char *>(ngx_pnalloc(r->pool, total ? total : 1));
    if (mem == nullptr) return NGX_ERROR;
    u_char *p = mem;
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        if (!b->in_file) {
            p = copy_bytes(p, {reinterpret_cast<char *>(b->pos), size_t(b->last - b->pos)});
            continue;
        }
        size_t size = size_t(b->file_last - b->file_pos);
        ssize_t n = ngx_read_file(b->file, p, size, b->file_pos);
        if (n != ssize_t(size)) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "channels: reading the buffered request body failed");
            return NGX_ERROR;
        }
        p += size;
    }
    *data = {reinterpret_cast<char *>(mem), total};
    return NGX_OK;
}

ngx_int_t publish(ngx_http_request_t *r) {
    ZoneConf *zone = zone_of(loc_conf(r));
    PublishInput in;
    ngx_int_t rc = NGX_OK;
    if (!publish_channel_id(r, &in.channel, &rc) || !publish_event_type(r, &in.event, &rc) ||
        !publish_content_type(r, &in.content_type, &rc)) {
        return rc;
    }
    if (body_bytes(r, &in.data) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (zone->redis != nullptr) return redis_publish(r, zone, in);

    PublishResult res = store_publish(zone, in);
    if (res.status != PublishStatus::ok) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "channels: 507: message of %uz bytes does not fit in zone \"%V\"",
                      in.data.size(), &zone->name);
        return send_body(r, NGX_HTTP_INSUFFICIENT_STORAGE, "text/plain",
                         "message too large for zone\n");
    }
    delivery_notify(zone, res.wake_mask);
    return send_body(r, NGX_HTTP_CREATED, "application/json", published_json(in.channel, res));
}

void body_read_handler(ngx_http_request_t *r) noexcept {
    ngx_http_finalize_request(r, guarded(r->connection->log, [r] { return publish(r); }));
}

ngx_int_t channel_info(ngx_http_request_t *r, bool remove) {
    std::string_view channel;
    ngx_int_t rc = NGX_OK;
    if (!publish_channel_id(r, &channel, &rc)) return rc;
    ZoneConf *zone = zone_of(loc_conf(r));
    if (remove && zone->redis != nullptr) return redis_delete(r, zone, channel);
    uint64_t wake_mask = 0;
    ChannelInfo info = remove ? store_delete(zone, channel, &wake_mask) : store_info(zone, channel);
    if (!info.exists) return send_text(r, NGX_HTTP_NOT_FOUND, "channel not found");
    delivery_notify(zone, wake_mask);
    return send_body(r, NGX_HTTP_OK, "application/json", info_json(channel, info));
}

ngx_int_t handle(ngx_http_request_t *r) {
    if (r->method & (NGX_HTTP_POST | NGX_HTTP_PUT)) {
        ngx_int_t rc = ngx_http_read_client_request_body(r, body_read_handler);
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

ngx_int_t publish_handler(ngx_http_request_t *r) {
    return guarded(r->connection->log, [r] { return handle(r); });
}

}  // namespace chn
