// longpoll_channel: long-poll subscribers, json and raw (SPEC §5).
//
// A request whose cursor has messages after it is answered at once. Otherwise it waits,
// registered like an SSE subscriber, until the delivery pass marks it ready (it then reads
// its answer from the store), its channel is deleted (410), the timeout passes or the
// worker shuts down (204 with its cursor).

#include <algorithm>
#include <new>

#include "channels/json.h"
#include "ngx_http_channels.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_jwt.h"
#include "ngx_http_channels_store.h"

namespace chn {
namespace {

constexpr size_t kMaxJsonMessages = 100;
constexpr ngx_uint_t kHttpGone = 410;   // nginx names no constant for it

void append_message_json(std::string &out, const MessageCopy &m) {
    out += "{\"id\":";
    append_json_id(out, m.id);
    out += ",\"channel\":";
    channels::append_json_string(out, m.channel_id);
    if (!m.event.empty()) {
        out += ",\"event\":";
        channels::append_json_string(out, m.event);
    }
    out += ",\"data\":";
    if (channels::is_valid_utf8(m.data)) {
        channels::append_json_string(out, m.data);
    } else {
        out += '"';
        channels::append_base64(out, m.data);
        out += "\",\"encoding\":\"base64\"";
    }
    out += ",\"content_type\":";
    channels::append_json_string(out, m.content_type.empty() ? "text/plain" : m.content_type);
    out += '}';
}

// What one answer carries: at most answer_limit() messages, oldest first.
struct Answer {
    const MessageCopy *items[kMaxJsonMessages];
    size_t n = 0;
    bool gap = false;
};

Answer answer_of(const Batch &batch, size_t limit) {
    Answer a;
    for (const MessageCopy &m : batch.items) {
        if (a.n == limit) break;
        a.items[a.n++] = &m;
    }
    a.gap = !batch.gaps.empty();
    return a;
}

std::string answer_json(const Answer &a) {
    std::string out = "{\"messages\":[";
    for (size_t i = 0; i < a.n; i++) {
        if (i) out += ',';
        append_message_json(out, *a.items[i]);
    }
    out += "],\"last_event_id\":";
    append_json_id(out, a.items[a.n - 1]->id);
    if (a.gap) out += ",\"gap\":true";
    out += "}\n";
    return out;
}

ngx_int_t common_headers(ngx_http_request_t *r, MessageId cursor) {
    if (add_header(r, "Cache-Control", "no-cache") != NGX_OK || add_cursor_header(r, cursor) != NGX_OK) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

// 200 with what the answer holds (never empty).
ngx_int_t answer_messages(ngx_http_request_t *r, const Answer &a) {
    LocConf *lcf = loc_conf(r);
    if (!lcf->longpoll_raw) {
        if (common_headers(r, a.items[a.n - 1]->id) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        return send_body(r, NGX_HTTP_OK, "application/json", answer_json(a));
    }
    const MessageCopy &m = *a.items[0];
    if (common_headers(r, m.id) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (!m.event.empty() && add_header(r, "Event-Type", m.event) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_int_t rc = send_body(r, NGX_HTTP_OK, m.content_type.empty() ? "text/plain" : m.content_type, m.data);
    return rc;
}

ngx_int_t answer_empty(ngx_http_request_t *r, ngx_uint_t status, MessageId cursor) {
    if (common_headers(r, cursor) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (status == kHttpGone) return send_text(r, status, "channel deleted");
    return send_body(r, status, "text/plain", {});
}

size_t answer_limit(LocConf *lcf) { return lcf->longpoll_raw ? 1 : kMaxJsonMessages; }

class LongpollSubscriber final : public Subscriber {
public:
    LongpollSubscriber(ngx_http_request_t *r, WorkerZone *zone) {
        request = r;
        wz = zone;
        links_pool = r->pool;   // it ends with its request
    }

    // Collects the pass's messages: the first pass that reaches a waiting request holds
    // everything after its cursor, so the answer needs no second look at the zone.
    void on_message(const MessageCopy &m, Link &, MessageFrames &) override {
        cursor = m.id;
        if (m.kind == EntryKind::deleted) {
            deleted = true;
            return;
        }
        if (answer == nullptr) {
            answer = static_cast<Answer *>(ngx_palloc(request->pool, sizeof(Answer)));
            if (answer == nullptr) throw std::bad_alloc();
            answer->n = 0;
            answer->gap = false;
        }
        if (answer->n < answer_limit(loc_conf(request))) answer->items[answer->n++] = &m;
        if (m.channel_dropped > reply_cursor) answer->gap = true;
    }

    void on_flush() override {
        if (deleted && (answer == nullptr || answer->n == 0)) {
            finish(answer_empty(request, kHttpGone, reply_cursor));
        } else if (answer != nullptr && answer->n > 0) {
            finish(answer_messages(request, *answer));
        }
    }

    void on_shutdown() override { finish(answer_empty(request, NGX_HTTP_NO_CONTENT, reply_cursor)); }

    void on_timeout() { finish(answer_empty(request, NGX_HTTP_NO_CONTENT, reply_cursor)); }

    void stop() {
        delivery_detach(this);
        if (timeout.timer_set) ngx_del_timer(&timeout);
    }

    ngx_event_t timeout{};
    MessageId   reply_cursor;    // the cursor the client sent, or where it started waiting
    bool        answered = false;

private:
    void finish(ngx_int_t rc) {
        ngx_http_request_t *r = request;
        ngx_connection_t *c = r->connection;
        answered = true;
        stop();
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }

    Answer *answer = nullptr;
    bool    deleted = false;
};

void cleanup(void *data) noexcept {
    auto *sub = static_cast<LongpollSubscriber *>(data);
    sub->stop();
    sub->~LongpollSubscriber();
}

void timeout_handler(ngx_event_t *ev) noexcept {
    auto *sub = static_cast<LongpollSubscriber *>(ev->data);
    sub->on_timeout();
}

MessageId current_position(ZoneConf *zone) { return store_stats(zone).last_id; }

ngx_int_t handle(ngx_http_request_t *r) {
    ChannelArgs args;
    ngx_int_t rc = NGX_OK;
    if (!subscriber_prelude(r, args, &rc)) return rc;
    LocConf *lcf = loc_conf(r);
    ZoneConf *zone = zone_of(lcf);
    MessageId client_cursor;
    bool has_cursor = request_cursor(r, &client_cursor);

    if (r->method & NGX_HTTP_HEAD) {   // the headers a GET would carry, at once
        if (common_headers(r, has_cursor ? client_cursor : current_position(zone)) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return send_body(r, NGX_HTTP_OK, lcf->longpoll_raw ? "text/plain" : "application/json", {});
    }
    if (delivery_exiting() || zone->worker == nullptr) {
        return answer_empty(r, NGX_HTTP_NO_CONTENT, has_cursor ? client_cursor : current_position(zone));
    }

    void *mem = ngx_palloc(r->pool, sizeof(LongpollSubscriber));
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (mem == nullptr || cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto *sub = new (mem) LongpollSubscriber(r, zone->worker);
    cln->handler = cleanup;
    cln->data = sub;

    SubscribeQuery q;
    q.list = &args.list;
    q.has_cursor = has_cursor;
    q.cursor = client_cursor;
    q.first_message = lcf->first_message;
    q.limit = answer_limit(lcf);
    q.attach_only_if_empty = true;
    SubscribeResult res = store_subscribe(zone, zone->worker->record, q);
    if (!res.replay.items.empty()) return answer_messages(r, answer_of(res.replay, q.limit));
    if ((rc = delivery_attach_request(sub, res, args.list.count)) != NGX_OK) return rc;
    // Never below the client's own cursor: a host still mirroring Redis may get older ids.
    sub->cursor = has_cursor ? std::max(res.replay.position, client_cursor) : res.replay.position;
    sub->reply_cursor = has_cursor ? client_cursor : res.replay.position;

    sub->timeout.handler = timeout_handler;
    sub->timeout.data = sub;
    sub->timeout.log = r->connection->log;
    ngx_add_timer(&sub->timeout, auth_bounded_wait(r, lcf->longpoll_timeout));   // SPEC §10: not past exp
    r->write_event_handler = ngx_http_request_empty_handler;
    watch_client_close(r);
    r->main->count++;
    return NGX_DONE;
}

}  // namespace

ngx_int_t longpoll_handler(ngx_http_request_t *r) {
    return guarded(r->connection->log, [r] { return handle(r); });
}

}  // namespace chn
