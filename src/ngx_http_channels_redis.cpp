// channel_redis (see ngx_http_channels_redis.h).
//
// hiredis' async API runs on nginx's event loop through a small adapter: each Redis
// socket is an nginx connection with level-triggered read/write events (hiredis reads once
// per call, so edge-triggered events could strand buffered replies). Two connections per
// worker and zone: one for publish/delete scripts, one blocked in XREAD on the shared log.
// Both reconnect with exponential backoff; nothing in a worker ever blocks on Redis.

#include "ngx_http_channels_redis.h"

extern "C" {
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
}

#include <algorithm>
#include <new>
#include <vector>

#include "channels/json.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_publish.h"

namespace chn {
namespace {

constexpr ngx_msec_t kMinBackoff = 100;
constexpr ngx_msec_t kMaxBackoff = 5000;
constexpr ngx_msec_t kReplyTimeout = 5000;
constexpr const char *kLogMaxLen = "100000";   // entries kept in the shared log stream
constexpr const char *kReadBatch = "512";

// KEYS: channel stream, shared log, last id, floor. ARGV: now ms, history, ttl ms, log max length,
// channel, event, content type, data, kind ("m" message, "d" delete), the publishing host's
// last id (so ids never go back, even when Redis lost #last and a clock is behind).
constexpr const char kScript[] = R"lua(
local now = tonumber(ARGV[1])
local ms, seq = now, 0
local last = redis.call('GET', KEYS[3])
for _, seen in ipairs({last or '0-0', ARGV[10]}) do
  local lms, lseq = string.match(seen, '^(%d+)-(%d+)$')
  lms, lseq = tonumber(lms), tonumber(lseq)
  if lms and (lms > ms or (lms == ms and lseq >= seq)) then ms, seq = lms, lseq + 1 end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', KEYS[3], id)
if not last then redis.call('SET', KEYS[4], id) end
if ARGV[9] == 'd' then
  local existed = redis.call('DEL', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id, 'c', ARGV[5], 'x', '1')
  return {id, existed}
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'e', ARGV[6], 't', ARGV[7], 'd', ARGV[8])
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', now - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id, 'c', ARGV[5], 'e', ARGV[6], 't', ARGV[7], 'd', ARGV[8])
return {id, redis.call('XLEN', KEYS[1])}
)lua";

struct RedisLink {
    RedisWorker       *owner = nullptr;
    redisAsyncContext *ac = nullptr;
    ngx_connection_t  *conn = nullptr;
    ngx_event_t        retry{};
    ngx_msec_t         backoff = kMinBackoff;
    bool               ready = false;
    bool               tail = false;   // the XREAD connection
};

}  // namespace

struct RedisWorker {
    ZoneConf   *zone = nullptr;
    RedisLink   cmd, log;
    bool        stopping = false;
    uint64_t    latency_us = 0;        // of the last publish round trip
    uint64_t    failures = 0;
    ngx_queue_t awaiting{};            // publishes stored in Redis, not yet mirrored here
};

namespace {

// ---- the hiredis <-> nginx event adapter ----

void on_socket_read(ngx_event_t *ev) noexcept {
    auto *link = static_cast<RedisLink *>(static_cast<ngx_connection_t *>(ev->data)->data);
    if (link->ac != nullptr) redisAsyncHandleRead(link->ac);
}

void on_socket_write(ngx_event_t *ev) noexcept {
    auto *link = static_cast<RedisLink *>(static_cast<ngx_connection_t *>(ev->data)->data);
    if (link->ac != nullptr) redisAsyncHandleWrite(link->ac);
}

void add_read(void *p) {
    auto *c = static_cast<ngx_connection_t *>(p);
    if (!c->read->active) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
}

void del_read(void *p) {
    auto *c = static_cast<ngx_connection_t *>(p);
    if (c->read->active) ngx_del_event(c->read, NGX_READ_EVENT, 0);
}

void add_write(void *p) {
    auto *c = static_cast<ngx_connection_t *>(p);
    if (!c->write->active) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
}

void del_write(void *p) {
    auto *c = static_cast<ngx_connection_t *>(p);
    if (c->write->active) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
}

// hiredis frees its context (and closes the socket) right after this.
void cleanup_socket(void *p) {
    auto *c = static_cast<ngx_connection_t *>(p);
    del_read(c);
    del_write(c);
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);   // a two-statement macro: keep the braces
    }
    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }
    auto *link = static_cast<RedisLink *>(c->data);
    link->conn = nullptr;
    link->ac = nullptr;
    link->ready = false;
    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}

bool attach(RedisLink *link, redisAsyncContext *ac) {
    ngx_connection_t *c = ngx_get_connection(ac->c.fd, ngx_cycle->log);
    if (c == nullptr) return false;
    c->data = link;
    c->read->handler = on_socket_read;
    c->write->handler = on_socket_write;
    c->read->log = c->write->log = ngx_cycle->log;
    link->conn = c;
    link->ac = ac;
    ac->data = link;
    ac->ev.data = c;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup_socket;
    return true;
}

// ---- connections ----

void connect_link(RedisLink *link);

void schedule_retry(RedisLink *link) {
    if (link->owner->stopping || link->retry.timer_set) return;
    ngx_add_timer(&link->retry, link->backoff);
    link->backoff = std::min(link->backoff * 2, kMaxBackoff);
}

void retry_handler(ngx_event_t *ev) noexcept { connect_link(static_cast<RedisLink *>(ev->data)); }

void start_tail(RedisWorker *w);

void on_connect(const redisAsyncContext *ac, int status) {
    auto *link = static_cast<RedisLink *>(ac->data);
    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0, "channels: redis connect to zone \"%V\" failed: %s",
                      &link->owner->zone->name, ac->errstr);
        link->owner->failures++;
        schedule_retry(link);   // hiredis frees the context after this callback
        return;
    }
    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0, "channels: zone \"%V\" connected to redis",
                  &link->owner->zone->name);
    link->ready = true;
    link->backoff = kMinBackoff;
}

void on_disconnect(const redisAsyncContext *ac, int status) {
    auto *link = static_cast<RedisLink *>(ac->data);
    link->ready = false;
    if (link->owner->stopping) return;
    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0, "channels: zone \"%V\" lost its redis connection%s%s",
                  &link->owner->zone->name, status == REDIS_OK ? "" : ": ",
                  status == REDIS_OK ? "" : ac->errstr);
    link->owner->failures++;
    schedule_retry(link);
}

void send_argv(RedisLink *link, redisCallbackFn *fn, void *data, const std::vector<std::string_view> &args) {
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (std::string_view a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    redisAsyncCommandArgv(link->ac, fn, data, int(argv.size()), argv.data(), lens.data());
}

void select_db(RedisLink *link) {
    const RedisConf &conf = *link->owner->zone->redis;
    if (conf.db == 0) return;
    std::string db = std::to_string(conf.db);
    send_argv(link, nullptr, nullptr, {"SELECT", db});
}

void connect_link(RedisLink *link) {
    RedisWorker *w = link->owner;
    if (w->stopping || link->ac != nullptr) return;
    const RedisConf &conf = *w->zone->redis;
    redisAsyncContext *ac = redisAsyncConnect(conf.host.c_str(), conf.port);
    if (ac == nullptr || ac->err) {
        if (ac != nullptr) redisAsyncFree(ac);
        w->failures++;
        schedule_retry(link);
        return;
    }
    if (!attach(link, ac)) {
        redisAsyncFree(ac);
        schedule_retry(link);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    select_db(link);
    if (link->tail) start_tail(w);
}

std::string key(const RedisConf &conf, std::string_view name) {
    std::string k = conf.prefix;
    k += name;
    return k;
}

// ---- the shared log: XREAD BLOCK, mirrored into the local zone ----

std::string_view reply_text(const redisReply *r) {
    if (r == nullptr || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)) return {};
    return {r->str, size_t(r->len)};
}

// One log entry: [id, [field, value, ...]].
uint64_t ingest_entry(RedisWorker *w, const redisReply *entry) {
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2) return 0;
    std::optional<MessageId> id = channels::parse_id(reply_text(entry->element[0]));
    const redisReply *fields = entry->element[1];
    if (!id || fields->type != REDIS_REPLY_ARRAY) return 0;
    PublishInput in;
    EntryKind kind = EntryKind::message;
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        std::string_view name = reply_text(fields->element[i]);
        std::string_view value = reply_text(fields->element[i + 1]);
        if (name == "c") in.channel = value;
        else if (name == "e") in.event = value;
        else if (name == "t") in.content_type = value;
        else if (name == "d") in.data = value;
        else if (name == "x") kind = EntryKind::deleted;
    }
    if (!channels::is_valid_channel_id(in.channel)) return 0;
    return store_ingest(w->zone, kind, *id, in);
}

void read_log(RedisWorker *w);
void acknowledge_mirrored(RedisWorker *w);

void on_log_reply(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    if (reply == nullptr || w->stopping) return;   // disconnected: the reconnect reads again
    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "channels: redis XREAD failed: %s", reply->str);
        if (w->log.ac != nullptr) redisAsyncDisconnect(w->log.ac);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY) {
        uint64_t wake = 0;
        for (size_t s = 0; s < reply->elements; s++) {
            const redisReply *stream = reply->element[s];
            if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2) continue;
            const redisReply *entries = stream->element[1];
            for (size_t i = 0; i < entries->elements; i++) wake |= ingest_entry(w, entries->element[i]);
        }
        // Itself, and the workers with subscribers of what it mirrored first (their own
        // tail may be down or behind).
        delivery_notify(w->zone, wake | (uint64_t(1) << (ngx_worker & 63)));
        acknowledge_mirrored(w);
    }
    read_log(w);
}

void read_log(RedisWorker *w) {
    if (w->log.ac == nullptr) return;
    char cursor[channels::kMaxIdText];
    size_t len = channels::format_id(store_last_id(w->zone), cursor);
    std::string log_key = key(*w->zone->redis, "#log");
    send_argv(&w->log, on_log_reply, w,
              {"XREAD", "COUNT", kReadBatch, "BLOCK", "0", "STREAMS", log_key, {cursor, len}});
}

// Redis restarted without its data if its last id is older than ours: what it lost can
// no longer be replayed, so resuming clients are told (channel-gap).
void on_last_id(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    if (reply == nullptr || w->stopping) return;
    MessageId local = store_last_id(w->zone);
    std::optional<MessageId> remote = channels::parse_id(reply_text(reply));
    if (local != MessageId{} && (!remote || *remote < local)) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "channels: redis of zone \"%V\" lost messages; resuming clients get channel-gap",
                      &w->zone->name);
        store_mark_gap(w->zone);
    }
}

// PREFIX#floor is the first id after Redis last started empty: older cursors may point
// into history nobody holds any more.
void on_floor(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    if (reply == nullptr || w->stopping) return;
    if (std::optional<MessageId> floor = channels::parse_id(reply_text(reply))) store_raise_floor(w->zone, *floor);
}

void start_tail(RedisWorker *w) {
    std::string last_key = key(*w->zone->redis, "#last"), floor_key = key(*w->zone->redis, "#floor");
    send_argv(&w->log, on_last_id, w, {"GET", last_key});
    send_argv(&w->log, on_floor, w, {"GET", floor_key});
    read_log(w);
}

// ---- publish and delete through the script ----

struct PendingRequest {
    ngx_http_request_t *r;
    ngx_http_cleanup_t *cleanup;   // disarmed once answered: p may be freed before r
    ZoneConf           *zone;
    ngx_event_t         timer;
    uint64_t            started_us;
    bool                remove;
    ChannelInfo         before;   // DELETE: the local state it answers with
    std::string         channel;
    // A publish is acknowledged only once this host mirrors it, so that a 201 is never
    // lost with Redis: this host's subscribers get it whatever happens to Redis after.
    ngx_queue_t         in_awaiting{};
    bool                awaiting = false;
    MessageId           id;
    uint32_t            messages = 0;
};

PendingRequest *awaiting_request(ngx_queue_t *q) {
    return reinterpret_cast<PendingRequest *>(reinterpret_cast<u_char *>(q) -
                                              offsetof(PendingRequest, in_awaiting));
}

uint64_t now_us() {
    struct timeval tv;
    ngx_gettimeofday(&tv);
    return uint64_t(tv.tv_sec) * 1000000 + uint64_t(tv.tv_usec);
}

void finish_request(PendingRequest *p, ngx_int_t rc) {
    ngx_http_request_t *r = p->r;
    if (r == nullptr) return;
    p->r = nullptr;
    p->cleanup->handler = nullptr;
    if (p->timer.timer_set) ngx_del_timer(&p->timer);
    ngx_connection_t *c = r->connection;
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

ngx_int_t unavailable(ngx_http_request_t *r) {
    return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis unavailable");
}

ngx_int_t answer_published(PendingRequest *p) {
    PublishResult res;
    res.id = p->id;
    res.messages = p->messages;
    res.subscribers = store_info(p->zone, p->channel).subscribers;   // this host's own
    return send_body(p->r, NGX_HTTP_CREATED, "application/json", published_json(p->channel, res));
}

bool mirrored(const PendingRequest *p) { return store_last_id(p->zone) >= p->id; }

// The script's answer; NGX_AGAIN: stored, to be acknowledged once mirrored here.
ngx_int_t answer(PendingRequest *p, const redisReply *reply) {
    ngx_http_request_t *r = p->r;
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
        if (reply != nullptr && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "channels: redis script failed: %s", reply->str);
        }
        return unavailable(r);
    }
    std::optional<MessageId> id = channels::parse_id(reply_text(reply->element[0]));
    if (!id) return unavailable(r);
    auto count = uint32_t(reply->element[1]->integer);
    if (p->remove) {
        if (!p->before.exists && count == 0) return send_text(r, NGX_HTTP_NOT_FOUND, "channel not found");
        return send_body(r, NGX_HTTP_OK, "application/json", info_json(p->channel, p->before));
    }
    p->id = *id;
    p->messages = count;
    return mirrored(p) ? answer_published(p) : NGX_AGAIN;
}

void free_request(PendingRequest *p) {
    if (p->awaiting) {
        ngx_queue_remove(&p->in_awaiting);   // a multi-statement macro: keep the braces
    }
    if (p->timer.timer_set) ngx_del_timer(&p->timer);
    p->~PendingRequest();
    ngx_free(p);
}

// After this worker mirrored more of the log: acknowledge what is now here.
void acknowledge_mirrored(RedisWorker *w) {
    ngx_queue_t *q = ngx_queue_head(&w->awaiting);
    while (q != ngx_queue_sentinel(&w->awaiting)) {
        PendingRequest *p = awaiting_request(q);
        q = ngx_queue_next(q);
        if (!mirrored(p)) continue;
        finish_request(p, guarded(ngx_cycle->log, [p] { return answer_published(p); }));
        free_request(p);
    }
}

void on_script_reply(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *p = static_cast<PendingRequest *>(data);
    RedisWorker *w = p->zone->redis_worker;
    if (p->r != nullptr) {
        if (w != nullptr) w->latency_us = now_us() - p->started_us;
        ngx_int_t rc = guarded(ngx_cycle->log, [&] { return answer(p, static_cast<redisReply *>(reply_ptr)); });
        if (rc == NGX_AGAIN && w != nullptr && !w->stopping) {
            p->awaiting = true;   // the timer still runs: see reply_timeout()
            ngx_queue_insert_tail(&w->awaiting, &p->in_awaiting);
            return;
        }
        finish_request(p, rc == NGX_AGAIN ? unavailable(p->r) : rc);
    }
    free_request(p);
}

void reply_timeout(ngx_event_t *ev) noexcept {
    auto *p = static_cast<PendingRequest *>(ev->data);
    if (!p->awaiting) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "channels: redis did not answer in time");
        finish_request(p, unavailable(p->r));   // p is freed when hiredis gives it back
        return;
    }
    // Stored in Redis but not seen here: acknowledged if another worker mirrored it.
    finish_request(p, mirrored(p) ? answer_published(p) : unavailable(p->r));
    free_request(p);
}

// The request went away first: the reply, when it comes, only frees p.
void request_gone(void *data) noexcept {
    auto *p = static_cast<PendingRequest *>(data);
    p->r = nullptr;
    if (p->awaiting) {
        free_request(p);
    } else if (p->timer.timer_set) {
        ngx_del_timer(&p->timer);
    }
}

ngx_int_t run_script(ngx_http_request_t *r, ZoneConf *zone, const PublishInput &in, bool remove) {
    RedisWorker *w = zone->redis_worker;
    if (w == nullptr || !w->cmd.ready) return unavailable(r);
    void *mem = ngx_alloc(sizeof(PendingRequest), r->connection->log);
    ngx_http_cleanup_t *cln = ngx_http_cleanup_add(r, 0);
    if (mem == nullptr || cln == nullptr) {
        ngx_free(mem);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *p = new (mem) PendingRequest{r, cln, zone, {}, now_us(), remove, {}, std::string(in.channel),
                                       {}, false, {}, 0};
    if (remove) p->before = store_info(zone, in.channel);
    cln->handler = request_gone;
    cln->data = p;
    p->timer.handler = reply_timeout;
    p->timer.data = p;
    p->timer.log = r->connection->log;
    ngx_add_timer(&p->timer, kReplyTimeout);

    const RedisConf &conf = *zone->redis;
    std::string stream = key(conf, in.channel), log = key(conf, "#log"), last = key(conf, "#last"),
                floor = key(conf, "#floor");
    std::string now = std::to_string(now_ms()), history = std::to_string(zone->history),
                ttl = std::to_string(zone->ttl);
    char host_last[channels::kMaxIdText];
    size_t host_last_len = channels::format_id(store_last_id(zone), host_last);
    send_argv(&w->cmd, on_script_reply, p,
              {"EVAL", kScript, "4", stream, log, last, floor, now, history, ttl, kLogMaxLen, in.channel,
               in.event, in.content_type, in.data, remove ? "d" : "m", {host_last, host_last_len}});
    r->main->count++;   // answered from on_script_reply
    return NGX_DONE;
}

// ---- configuration ----

bool parse_url(ngx_conf_t *cf, RedisConf *conf) {
    std::string_view url = view(conf->url);
    if (url.substr(0, 8) != "redis://") return false;
    url.remove_prefix(8);
    size_t slash = url.find('/');
    if (slash != std::string_view::npos) {
        std::string_view db = url.substr(slash + 1);
        ngx_int_t n = db.empty() ? 0 : ngx_atoi((u_char *) db.data(), db.size());
        if (n == NGX_ERROR) return false;
        conf->db = int(n);
        url = url.substr(0, slash);
    }
    ngx_url_t u;
    ngx_memzero(&u, sizeof(u));
    u.url = {url.size(), (u_char *) url.data()};
    u.default_port = 6379;
    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) return false;
    u_char text[NGX_SOCKADDR_STRLEN];
    size_t len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, text, sizeof(text), 0);
    conf->host.assign(reinterpret_cast<char *>(text), len);
    conf->port = int(u.port ? u.port : 6379);
    return true;
}

void destroy_conf(void *data) noexcept { static_cast<RedisConf *>(data)->~RedisConf(); }

}  // namespace

char *redis_directive(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    try {
        auto *mcf = static_cast<MainConf *>(conf);
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, sizeof(RedisConf));
        if (cln == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
        auto *rc = new (cln->data) RedisConf();
        cln->handler = destroy_conf;
        auto *args = static_cast<ngx_str_t *>(cf->args->elts);
        for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
            std::string_view a = view(args[i]);
            if (a.substr(0, 5) == "zone=") {
                rc->zone_name = {args[i].len - 5, args[i].data + 5};
            } else if (a.substr(0, 4) == "url=") {
                rc->url = {args[i].len - 4, args[i].data + 4};
            } else if (a.substr(0, 7) == "prefix=") {
                rc->prefix.assign(a.substr(7));
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &args[i]);
                return static_cast<char *>(NGX_CONF_ERROR);
            }
        }
        if (rc->zone_name.len == 0 || rc->url.len == 0) return const_cast<char *>("needs zone= and url=");
        if (!parse_url(cf, rc)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid redis url \"%V\"", &rc->url);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
        auto **slot = static_cast<RedisConf **>(ngx_array_push(&mcf->redis));
        if (slot == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
        *slot = rc;
        return NGX_CONF_OK;
    } catch (...) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
}

ngx_int_t redis_bind_zones(ngx_conf_t *cf, MainConf *mcf) {
    auto **confs = static_cast<RedisConf **>(mcf->redis.elts);
    auto **zones = static_cast<ZoneConf **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->redis.nelts; i++) {
        ZoneConf *found = nullptr;
        for (ngx_uint_t z = 0; z < mcf->zones.nelts; z++) {
            if (view(zones[z]->name) == view(confs[i]->zone_name)) found = zones[z];
        }
        if (found == nullptr || found->redis != nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          found ? "channels: zone \"%V\" has two channel_redis"
                                : "channels: channel_redis names unknown zone \"%V\"",
                          &confs[i]->zone_name);
            return NGX_ERROR;
        }
        found->redis = confs[i];
    }
    return NGX_OK;
}

ngx_int_t redis_init_worker(ngx_cycle_t *cycle, ZoneConf *zone) {
    if (zone->redis == nullptr) return NGX_OK;
    auto *w = new (std::nothrow) RedisWorker();
    if (w == nullptr) return NGX_ERROR;
    w->zone = zone;
    for (RedisLink *link : {&w->cmd, &w->log}) {
        link->owner = w;
        link->retry.handler = retry_handler;
        link->retry.data = link;
        link->retry.log = cycle->log;
        link->retry.cancelable = 1;
    }
    w->log.tail = true;
    ngx_queue_init(&w->awaiting);
    zone->redis_worker = w;
    connect_link(&w->cmd);
    connect_link(&w->log);
    return NGX_OK;
}

void redis_stop_worker(ZoneConf *zone) {
    RedisWorker *w = zone->redis_worker;
    if (w == nullptr || w->stopping) return;
    w->stopping = true;
    while (!ngx_queue_empty(&w->awaiting)) {
        PendingRequest *p = awaiting_request(ngx_queue_head(&w->awaiting));
        finish_request(p, mirrored(p) ? answer_published(p) : unavailable(p->r));
        free_request(p);
    }
    for (RedisLink *link : {&w->cmd, &w->log}) {
        if (link->retry.timer_set) ngx_del_timer(&link->retry);
        if (link->ac != nullptr) redisAsyncFree(link->ac);   // pending callbacks get no reply
    }
}

ngx_int_t redis_publish(ngx_http_request_t *r, ZoneConf *zone, const PublishInput &in) {
    return run_script(r, zone, in, false);
}

ngx_int_t redis_delete(ngx_http_request_t *r, ZoneConf *zone, std::string_view channel) {
    PublishInput in{channel, {}, {}, {}};
    return run_script(r, zone, in, true);
}

void redis_append_stats(std::string &out, ZoneConf *zone) {
    RedisWorker *w = zone->redis_worker;
    if (zone->redis == nullptr) return;
    out += ",\"redis\":{\"url\":";
    channels::append_json_string(out, view(zone->redis->url));
    out += ",\"connected\":";
    out += (w != nullptr && w->cmd.ready && w->log.ready) ? "true" : "false";
    out += ",\"latency_us\":";
    channels::append_uint(out, w != nullptr ? w->latency_us : 0);
    out += ",\"reconnects\":";
    channels::append_uint(out, w != nullptr ? w->failures : 0);
    out += '}';
}

}  // namespace chn
