// Request helpers (see ngx_http_channels_request.h).

#include "ngx_http_channels_request.h"

namespace channels {
namespace {

u_char *bytes_of(std::string_view s) { return reinterpret_cast<u_char *>(const_cast<char *>(s.data())); }

}  // namespace

ngx_int_t eval_channels(ngx_http_request_t *r, const LocConf *lcf, ChannelArgs &args) {
    auto *values = static_cast<ChannelValue *>(lcf->channels->elts);
    for (ngx_uint_t i = 0; i < lcf->channels->nelts; i++) {
        ngx_str_t value;
        if (ngx_http_complex_value(r, &values[i].value, &value) != NGX_OK) return NGX_ERROR;
        auto *decoded = static_cast<char *>(ngx_pnalloc(r->pool, value.len + 1));
        if (decoded == nullptr) return NGX_ERROR;
        std::string_view text{decoded, percent_decode(view(value), decoded)};
        args.error = values[i].list ? args.list.append(text) : args.list.append_one(text);
        if (args.error != ListError::none) return NGX_OK;
    }
    args.error = args.list.finish();
    if (args.error == ListError::none && args.list.count > lcf->max_per_request) args.error = ListError::too_many;
    return NGX_OK;
}

bool subscriber_prelude(ngx_http_request_t *r, ChannelArgs &args, ngx_int_t *rc, const MessageId *cursor) {
    // A refusal is of this request only (no cache keeps it); a long-poll one carries the
    // cursor like every long-poll answer.
    auto refuse = [&](ngx_uint_t status, std::string_view text) {
        bool headers = add_header(r, "Cache-Control", "no-cache") == NGX_OK &&
                       (cursor == nullptr || add_cursor_header(r, *cursor) == NGX_OK);
        *rc = headers ? send_text(r, status, text) : NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    };
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        if (add_header(r, "Allow", "GET, HEAD") != NGX_OK) {
            *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return false;
        }
        return refuse(NGX_HTTP_NOT_ALLOWED, "method not allowed");
    }
    LocConf *lcf = loc_conf(r);
    if (ngx_http_discard_request_body(r) != NGX_OK || eval_channels(r, lcf, args) != NGX_OK) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    if (args.error == ListError::too_many) {
        u_char line[64];
        u_char *end = ngx_snprintf(line, sizeof(line), "too many channels: at most %ui per subscriber",
                                   lcf->max_per_request);
        return refuse(NGX_HTTP_BAD_REQUEST, {reinterpret_cast<char *>(line), size_t(end - line)});
    }
    if (args.error != ListError::none) return refuse(NGX_HTTP_BAD_REQUEST, describe(args.error));
    return true;
}

void watch_client_close(ngx_http_request_t *r) {
    r->read_event_handler = ngx_http_test_reading;
    ngx_event_t *rev = r->connection->read;
    if (r == r->main && rev->ready) {
        ngx_post_event(rev, &ngx_posted_events);
    }
}

bool has_arg(ngx_http_request_t *r, std::string_view name) {
    std::string_view args = view(r->args);
    while (!args.empty()) {
        size_t amp = args.find('&');
        std::string_view item = args.substr(0, amp);
        if (item.substr(0, item.find('=')) == name) return true;
        if (amp == std::string_view::npos) break;
        args.remove_prefix(amp + 1);
    }
    return false;
}

ngx_str_t find_header(ngx_http_request_t *r, std::string_view name) {
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part != nullptr; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].key.len == name.size() && ngx_strncasecmp(h[i].key.data, bytes_of(name), name.size()) == 0) {
                return h[i].value;
            }
        }
    }
    return ngx_str_t{0, nullptr};
}

ngx_int_t decoded_arg(ngx_http_request_t *r, std::string_view name, ngx_str_t *value, bool *found) {
    ngx_str_t raw;
    *found = ngx_http_arg(r, bytes_of(name), name.size(), &raw) == NGX_OK;
    if (!*found) return NGX_OK;
    auto *out = static_cast<char *>(ngx_pnalloc(r->pool, raw.len + 1));
    if (out == nullptr) return NGX_ERROR;
    value->len = percent_decode(view(raw), out);
    value->data = reinterpret_cast<u_char *>(out);
    return NGX_OK;
}

bool request_cursor(ngx_http_request_t *r, MessageId *cursor) {
    ngx_str_t text = find_header(r, "Last-Event-ID");
    if (text.len == 0) {
        bool found = false;
        if (decoded_arg(r, "last_event_id", &text, &found) != NGX_OK || !found) return false;
    }
    std::optional<MessageId> id = parse_id(view(text));
    if (!id) return false;
    *cursor = *id;
    return true;
}

ngx_int_t add_header(ngx_http_request_t *r, std::string_view name, std::string_view value) {
    auto *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    auto *mem = static_cast<u_char *>(ngx_pnalloc(r->pool, name.size() + value.size()));
    if (h == nullptr || mem == nullptr) return NGX_ERROR;
    h->hash = 1;
#if defined(nginx_version) && nginx_version >= 1023000
    h->next = nullptr;   // header chains exist from nginx 1.23 on
#endif
    h->key = {name.size(), mem};
    h->value = {value.size(), copy_bytes(mem, name)};
    copy_bytes(h->value.data, value);
    return NGX_OK;
}

ngx_int_t add_cursor_header(ngx_http_request_t *r, MessageId id) {
    char text[kMaxIdText];
    return add_header(r, "Last-Event-ID", {text, format_id(id, text)});
}

namespace {

ngx_int_t set_content_type(ngx_http_request_t *r, std::string_view content_type) {
    auto *ct = static_cast<u_char *>(ngx_pnalloc(r->pool, content_type.size()));
    if (ct == nullptr && !content_type.empty()) return NGX_ERROR;
    copy_bytes(ct, content_type);
    r->headers_out.content_type = {content_type.size(), ct};
    r->headers_out.content_type_len = content_type.size();
    r->headers_out.content_type_lowcase = nullptr;
    return NGX_OK;
}

}  // namespace

ngx_int_t send_buffer(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type, ngx_buf_t *b) {
    r->headers_out.status = status;
    r->headers_out.content_length_n = b == nullptr ? 0 : off_t(b->last - b->pos);
    if (set_content_type(r, content_type) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (b == nullptr || b->last == b->pos) r->header_only = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out{b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_int_t send_body(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type, std::string_view body) {
    if (body.empty()) return send_buffer(r, status, content_type, nullptr);
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, body.size());
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    b->last = copy_bytes(b->pos, body);
    return send_buffer(r, status, content_type, b);
}

ngx_int_t send_text(ngx_http_request_t *r, ngx_uint_t status, std::string_view line) {
    if (status >= 400 && status < 500) {
        ngx_str_t reason{line.size(), bytes_of(line)};
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "channels: %ui: %V", status, &reason);
    }
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, line.size() + 1);
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    b->last = copy_bytes(b->pos, line);
    *b->last++ = '\n';
    return send_buffer(r, status, "text/plain", b);
}

ngx_int_t send_unavailable(ngx_http_request_t *r, std::string_view reason) {
    ngx_str_t text{reason.size(), bytes_of(reason)};
    ngx_log_error(loc_conf(r)->refusal_log_level, r->connection->log, 0, "channels: 503: %V", &text);
    u_char seconds[NGX_INT_T_LEN];
    u_char *end = ngx_sprintf(seconds, "%M", kRetryAfterSeconds);
    if (add_header(r, "Retry-After", {reinterpret_cast<char *>(seconds), size_t(end - seconds)}) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, reason.size() + 1);
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    b->last = copy_bytes(b->pos, reason);
    *b->last++ = '\n';
    return send_buffer(r, NGX_HTTP_SERVICE_UNAVAILABLE, "text/plain", b);
}

const std::string_view *missing_channel(ngx_http_request_t *r, const ChannelArgs &args) {
    const LocConf *lcf = loc_conf(r);
    if (!lcf->existing_only) return nullptr;
    Store *store = zone_of(lcf)->store;
    for (size_t i = 0; i < args.list.count; i++) {
        if (!store->info(args.list.ids[i]).published) return &args.list.ids[i];
    }
    return nullptr;
}

ngx_int_t send_refusal(ngx_http_request_t *r, SubscribeStatus status, std::string_view channel) {
    // A refusal is of this moment: no cache may keep it for the next attempt.
    if (add_header(r, "Cache-Control", "no-cache") != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    switch (status) {
    case SubscribeStatus::not_found: {
        std::string_view prefix = "channel not found: ";
        auto *line = static_cast<char *>(ngx_pnalloc(r->pool, prefix.size() + channel.size()));
        if (line == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        copy_bytes(copy_bytes(reinterpret_cast<u_char *>(line), prefix), channel);
        return send_text(r, NGX_HTTP_NOT_FOUND, {line, prefix.size() + channel.size()});
    }
    case SubscribeStatus::over_cap:
        return send_unavailable(r, "too many channels are waited on: try again later");
    case SubscribeStatus::no_memory:
        return send_unavailable(r, "channel zone is full: try again later");
    case SubscribeStatus::ok:
        break;
    }
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

}  // namespace channels
