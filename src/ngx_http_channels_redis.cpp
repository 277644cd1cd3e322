// channel_redis (see ngx_http_channels_redis.h).
//
// hiredis' async API runs on nginx's event loop through a small adapter: each Redis socket
// is an nginx connection with level-triggered read/write events (hiredis reads once per
// call, so edge-triggered events could strand buffered replies). Two connections per worker
// and zone: one for the publish/delete script, one blocked in XREAD on the shared log.
// Both reconnect with exponential backoff; nothing in a worker ever blocks on Redis.

#include "ngx_http_channels_redis.h"

extern "C" {
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
}

#include <algorithm>
#include <new>
#include <initializer_list>

namespace channels {
namespace {

constexpr ngx_msec_t kMinBackoff = 100;
constexpr ngx_msec_t kMaxBackoff = 5000;
constexpr ngx_msec_t kReplyTimeout = 5000;
constexpr const char *kLogMaxLen = "100000";    // entries kept in the shared log stream
constexpr const char *kReadBatch = "512";            // entries of a catch-up page, at most
constexpr const char *kReadBudget = "4194304";        // data bytes of a catch-up page (but one entry)
constexpr size_t kMaxArgs = 24;
constexpr uint64_t kMaxAheadMs = 3600 * 1000;   // an id further ahead of the clock is invalid
constexpr size_t kMaxReplyBytes = 64 * 1024 * 1024;   // buffered by hiredis for one reply, at most
constexpr size_t kMaxEntryBytes = 32 * 1024 * 1024;   // of one message's fields: larger ones are refused
constexpr const char *kMaxEntryText = "33554432";

// KEYS: channel stream, shared log, last id, floor. ARGV: now ms, history, ttl ms, log max
// length, channel, event, content type, data, kind ("m" message, "d" delete), the
// publishing host's last id (ids never go back, even when Redis lost #last). Ids further
// ahead of the clock than ARGV[11] ms were not written by this script: they are ignored,
// and a stream whose newest entry carries one is started again (else it would refuse every
// id from now on).
constexpr const char kScript[] = R"lua(
local now = tonumber(ARGV[1])
local limit = now + tonumber(ARGV[11])
local function parse(s)
  local a, b = string.match(s or '', '^(%d+)-(%d+)$')
  if a then return tonumber(a), tonumber(b) end
end
local ms, seq = now, 0
local function raise(text)
  local a, b = parse(text)
  if a and a <= limit and (a > ms or (a == ms and b >= seq)) then ms, seq = a, b + 1 end
end
local last = redis.call('GET', KEYS[3])
raise(last)
raise(ARGV[10])
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if top then
    local a = parse(top[1])
    if a and a > limit then redis.call('DEL', key) else raise(top[1]) end
  end
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

// Starts the shared log again when its newest entry is far ahead of the clock (written by
// something else): the tail would otherwise read it over and over. KEYS: log. ARGV: limit.
constexpr const char kRepairScript[] = R"lua(
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local ms = top and tonumber(string.match(top[1], '^(%d+)-'))
if ms and ms > tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) return 1 end
return 0
)lua";

// One catch-up page of the shared log after a cursor: at most ARGV[2] entries and ARGV[3]
// bytes of field values (but one entry), so that a host far behind never takes more than a
// page in one reply. An entry larger than ARGV[4] (not written by this module) comes as
// its id, channel and size only ('z'): it is lost, and its channel's subscribers are told.
// KEYS: log. ARGV: cursor, count, budget, largest entry. Reply: [[id, [field, value...]]...].
constexpr const char kPageScript[] = R"lua(
local rows = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local budget, largest, bytes, out = tonumber(ARGV[3]), tonumber(ARGV[4]), 0, {}
for i, row in ipairs(rows) do
  local size, channel = 0, ''
  for j = 1, #row[2], 2 do
    size = size + #row[2][j + 1]
    if row[2][j] == 'c' then channel = row[2][j + 1] end
  end
  if size > largest then
    row = {row[1], {'c', channel, 'z', tostring(size)}}
    size = 0
  end
  if i > 1 and bytes + size > budget then break end
  bytes = bytes + size
  out[i] = row
end
return out
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

// A publish or delete sent to Redis.
struct Pending {
    PublishCall *call;                 // nullptr once cancelled
    RedisWorker *worker;
    ngx_event_t  timer;
    uint64_t     started_us;
    // A publish is acknowledged only once this host mirrored it, so a 201 is never lost
    // with Redis: this host's subscribers get it whatever happens to Redis after.
    ngx_queue_t  in_awaiting;
    bool         awaiting;
    bool         replied;
};

}  // namespace

struct RedisWorker {
    RedisStore    *store = nullptr;
    StoreListener *listener = nullptr;
    RedisLink      cmd, log;
    bool           stopping = false;
    uint64_t       latency_us = 0;     // of the last publish round trip
    uint64_t       failures = 0;
    uint64_t       invalid = 0;        // entries of the shared log skipped as invalid
    MessageId      skipped;            // newest id read and skipped: the tail goes on after it
    bool           catching_up = true; // reading pages (kPageScript); else waiting (XREAD BLOCK)
    ngx_queue_t    awaiting{};
};

namespace {

uint64_t now_us() {
    struct timeval tv;
    ngx_gettimeofday(&tv);
    return uint64_t(tv.tv_sec) * 1000000 + uint64_t(tv.tv_usec);
}

std::string key(const RedisConf &conf, std::string_view name) {
    std::string k = conf.prefix;
    k += name;
    return k;
}

std::string_view reply_text(const redisReply *r) {
    if (r == nullptr || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)) return {};
    return {r->str, size_t(r->len)};
}

// ---- the hiredis <-> nginx event adapter ----

void on_socket_read(ngx_event_t *ev) noexcept {
    auto *link = static_cast<RedisLink *>(static_cast<ngx_connection_t *>(ev->data)->data);
    if (link->ac == nullptr) return;
    // Reply sizes are bounded: a server that sends more than this for one reply is dropped at
    // once (a disconnect would wait for the reply). The tail reconnects reading pages, which
    // hand an oversized entry over as a loss.
    if (link->ac->c.reader != nullptr && link->ac->c.reader->len > kMaxReplyBytes) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "channels: redis reply larger than %uz bytes, disconnecting",
                      kMaxReplyBytes);
        redisAsyncFree(link->ac);
        return;
    }
    redisAsyncHandleRead(link->ac);
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
        ngx_delete_posted_event(c->read);
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

std::string_view zone_name(const RedisWorker *w) { return w->store->name(); }

void log_zone(ngx_uint_t level, const RedisWorker *w, const char *what, const char *detail) {
    std::string_view name = zone_name(w);
    ngx_str_t z{name.size(), reinterpret_cast<u_char *>(const_cast<char *>(name.data()))};
    ngx_log_error(level, ngx_cycle->log, 0, "channels: zone \"%V\" %s%s%s", &z, what, detail ? ": " : "",
                  detail ? detail : "");
}

void on_connect(const redisAsyncContext *ac, int status) {
    auto *link = static_cast<RedisLink *>(ac->data);
    if (status != REDIS_OK) {
        log_zone(NGX_LOG_WARN, link->owner, "redis connect failed", ac->errstr);
        link->owner->failures++;
        schedule_retry(link);   // hiredis frees the context after this callback
        return;
    }
    log_zone(NGX_LOG_NOTICE, link->owner, "connected to redis", nullptr);
    link->ready = true;
    link->backoff = kMinBackoff;
}

void on_disconnect(const redisAsyncContext *ac, int status) {
    auto *link = static_cast<RedisLink *>(ac->data);
    link->ready = false;
    if (link->owner->stopping) return;
    log_zone(NGX_LOG_WARN, link->owner, "lost its redis connection", status == REDIS_OK ? nullptr : ac->errstr);
    link->owner->failures++;
    schedule_retry(link);
}

void send_argv(RedisLink *link, redisCallbackFn *fn, void *data, std::initializer_list<std::string_view> args) {
    const char *argv[kMaxArgs];
    size_t lens[kMaxArgs];
    int n = 0;
    for (std::string_view a : args) {
        if (n == int(kMaxArgs)) break;
        argv[n] = a.data();
        lens[n++] = a.size();
    }
    redisAsyncCommandArgv(link->ac, fn, data, n, argv, lens);
}

// hiredis calls back from C: no exception may leave (std::string may throw). What fails
// drops the connection; the reconnect starts over from this host's last id.
template <void (*Fn)(redisAsyncContext *, void *, void *)>
void guarded_reply(redisAsyncContext *ac, void *reply, void *data) {
    try {
        Fn(ac, reply, data);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "channels: out of memory handling a redis reply");
        if (ac != nullptr) redisAsyncDisconnect(ac);
    }
}

void connect_link(RedisLink *link) {
    RedisWorker *w = link->owner;
    if (w->stopping || link->ac != nullptr) return;
    const RedisConf &conf = w->store->conf();
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
    if (conf.db != 0) {
        std::string db = std::to_string(conf.db);
        send_argv(link, nullptr, nullptr, {"SELECT", db});
    }
    if (link->tail) start_tail(w);
}

// ---- the shared log: XREAD BLOCK, validated, mirrored into the local zone ----

struct LogEntry {
    MessageId id;
    EntryKind kind = EntryKind::message;
    PublishInput in;
    bool oversized = false;   // larger than kMaxEntryBytes: its channel lost it
};

bool valid_content_type(std::string_view t) {
    if (t.size() > kMaxContentTypeLen) return false;
    for (char c : t) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
    }
    return true;
}

// What is wrong with an entry of the shared log (nullptr: nothing). [id, [field, value, ...]]
const char *check_entry(const redisReply *entry, uint64_t now, LogEntry *out) {
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2) return "not an entry";
    std::optional<MessageId> id = parse_id(reply_text(entry->element[0]));
    if (!id) return "malformed id";
    out->id = *id;
    if (id->ms > now + kMaxAheadMs) return "id far ahead of the clock";
    const redisReply *fields = entry->element[1];
    if (fields->type != REDIS_REPLY_ARRAY || fields->elements % 2 != 0) return "malformed fields";
    unsigned seen = 0;
    for (size_t i = 0; i < fields->elements; i += 2) {
        std::string_view name = reply_text(fields->element[i]);
        const redisReply *value = fields->element[i + 1];
        if (value->type != REDIS_REPLY_STRING) return "a field that is not a string";
        std::string_view text = reply_text(value);
        unsigned bit = name == "c"   ? 1
                       : name == "e" ? 2
                       : name == "t" ? 4
                       : name == "d" ? 8
                       : name == "x" ? 16
                       : name == "z" ? 32
                                     : 0;
        if (bit == 0 || (seen & bit)) return "unknown or repeated field";
        seen |= bit;
        if (bit == 1) out->in.channel = text;
        if (bit == 2) out->in.event = text;
        if (bit == 4) out->in.content_type = text;
        if (bit == 8) out->in.data = text;
        if (bit == 16) out->kind = EntryKind::deleted;
    }
    if (!(seen & 1) || !is_valid_channel_id(out->in.channel)) return "invalid channel id";
    out->oversized = (seen & 32) || out->in.event.size() + out->in.content_type.size() + out->in.data.size() > kMaxEntryBytes;
    if (out->oversized) return nullptr;
    if (!out->in.event.empty() && !is_valid_event_type(out->in.event)) return "invalid event type";
    if (!valid_content_type(out->in.content_type)) return "invalid content type";
    if (out->in.data.size() > UINT32_MAX) return "data too large";
    return nullptr;
}

// Mirrors one entry; returns the wake bits of its channel. An invalid entry is skipped
// with one error line: never delivered, never in the way of the next ones.
uint64_t ingest_entry(RedisWorker *w, const redisReply *entry, bool *far_ahead) {
    LogEntry e;
    const char *problem = check_entry(entry, now_ms(), &e);
    if (problem != nullptr) {
        w->invalid++;
        if (e.id.ms > now_ms() + kMaxAheadMs) {
            *far_ahead = true;   // the log is started again (kRepairScript)
        } else {
            w->skipped = std::max(w->skipped, e.id);
        }
        std::string_view id = entry->type == REDIS_REPLY_ARRAY && entry->elements > 0 ? reply_text(entry->element[0])
                                                                                       : std::string_view{};
        ngx_str_t text{std::min<size_t>(id.size(), 64), reinterpret_cast<u_char *>(const_cast<char *>(id.data()))};
        std::string_view name = zone_name(w);
        ngx_str_t z{name.size(), reinterpret_cast<u_char *>(const_cast<char *>(name.data()))};
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "channels: zone \"%V\": skipping redis log entry \"%V\": %s", &z,
                      &text, problem);
        return 0;
    }
    if (e.oversized) {
        w->invalid++;
        log_zone(NGX_LOG_ERR, w, "redis log entry larger than 32 MiB lost; its subscribers get channel-gap", nullptr);
        return w->store->local()->ingest_lost(e.in.channel, e.id);
    }
    if (e.kind == EntryKind::deleted) e.in = PublishInput{e.in.channel, {}, {}, {}};
    return w->store->local()->ingest(e.kind, e.id, e.in);
}

void read_log(RedisWorker *w);
void acknowledge_mirrored(RedisWorker *w);

void on_repaired(redisAsyncContext *, void *, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    if (!w->stopping) read_log(w);
}

void on_log_reply(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    if (reply == nullptr || w->stopping) return;   // disconnected: the reconnect reads again
    if (reply->type == REDIS_REPLY_ERROR) {
        log_zone(NGX_LOG_ERR, w, "redis XREAD failed", reply->str);
        if (w->log.ac != nullptr) redisAsyncDisconnect(w->log.ac);
        return;
    }
    bool far_ahead = false;
    size_t read = 0;
    if (reply->type == REDIS_REPLY_ARRAY) {
        uint64_t wake = 0;
        auto ingest_all = [&](const redisReply *entries) {
            for (size_t i = 0; i < entries->elements; i++) wake |= ingest_entry(w, entries->element[i], &far_ahead);
            read += entries->elements;
        };
        if (w->catching_up) {   // a page: [entry...]
            ingest_all(reply);
        } else {                // XREAD: [[key, [entry...]]]
            for (size_t s = 0; s < reply->elements; s++) {
                const redisReply *stream = reply->element[s];
                if (stream->type == REDIS_REPLY_ARRAY && stream->elements == 2 &&
                    stream->element[1]->type == REDIS_REPLY_ARRAY) {
                    ingest_all(stream->element[1]);
                }
            }
        }
        if (w->listener != nullptr) w->listener->on_appended(wake);
        acknowledge_mirrored(w);
    }
    // News: read on in pages until there is none, then wait for one entry.
    w->catching_up = read > 0;
    if (far_ahead) {   // the log would give it back every time: start the log again first
        std::string log_key = key(w->store->conf(), "#log"), limit = std::to_string(now_ms() + kMaxAheadMs);
        send_argv(&w->log, guarded_reply<on_repaired>, w, {"EVAL", kRepairScript, "1", log_key, limit});
        return;
    }
    read_log(w);
}

void read_log(RedisWorker *w) {
    if (w->log.ac == nullptr) return;
    char cursor[kMaxIdText];
    size_t len = format_id(std::max(w->store->local()->last_id(), w->skipped), cursor);
    std::string log_key = key(w->store->conf(), "#log");
    if (w->catching_up) {
        send_argv(&w->log, guarded_reply<on_log_reply>, w,
                  {"EVAL", kPageScript, "1", log_key, {cursor, len}, kReadBatch, kReadBudget, kMaxEntryText});
    } else {   // one entry: a reply holds at most one message
        send_argv(&w->log, guarded_reply<on_log_reply>, w,
                  {"XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", log_key, {cursor, len}});
    }
}

// Redis restarted without its data if its last id is older than ours: what it lost can no
// longer be replayed, so resuming clients are told (channel-gap).
void on_last_id(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    if (reply == nullptr || w->stopping) return;
    MessageId local = w->store->local()->last_id();
    std::optional<MessageId> remote = parse_id(reply_text(reply));
    if (local != MessageId{} && (!remote || *remote < local)) {
        log_zone(NGX_LOG_WARN, w, "redis lost messages; resuming clients get channel-gap", nullptr);
        w->store->local()->mark_gap();
    }
}

// PREFIX#floor is the first id after Redis last started empty: older cursors may point into
// history nobody holds any more.
void on_floor(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *w = static_cast<RedisWorker *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    if (reply == nullptr || w->stopping) return;
    std::optional<MessageId> floor = parse_id(reply_text(reply));
    if (floor && floor->ms <= now_ms() + kMaxAheadMs) w->store->local()->raise_floor(*floor);
}

void start_tail(RedisWorker *w) {
    w->catching_up = true;
    const RedisConf &conf = w->store->conf();
    std::string last_key = key(conf, "#last"), floor_key = key(conf, "#floor");
    send_argv(&w->log, guarded_reply<on_last_id>, w, {"GET", last_key});
    send_argv(&w->log, guarded_reply<on_floor>, w, {"GET", floor_key});
    read_log(w);
}

// ---- publish and delete through the script ----

bool mirrored(const Pending *p) { return p->worker->store->local()->last_id() >= p->call->id; }

void free_pending(Pending *p) {
    if (p->awaiting) {
        ngx_queue_remove(&p->in_awaiting);
        p->awaiting = false;
    }
    if (p->timer.timer_set) ngx_del_timer(&p->timer);
    ngx_free(p);
}

// Answers the call (unless cancelled) and lets go of it.
void answer(Pending *p, PublishCall::Status status) {
    PublishCall *call = p->call;
    p->call = nullptr;
    if (p->timer.timer_set) ngx_del_timer(&p->timer);
    if (call == nullptr) return;
    call->status = status;
    call->store_data = nullptr;
    if (status == PublishCall::Status::ok && !call->remove) {
        call->subscribers = p->worker->store->local()->info(call->in.channel).subscribers;   // this host's own
    }
    call->done(call);
}

// The script's reply: an answer, or (a publish) stored and to be acknowledged once mirrored.
void on_script_reply(redisAsyncContext *, void *reply_ptr, void *data) {
    auto *p = static_cast<Pending *>(data);
    auto *reply = static_cast<redisReply *>(reply_ptr);
    p->replied = true;
    RedisWorker *w = p->worker;
    if (p->call == nullptr) {   // cancelled, or timed out
        free_pending(p);
        return;
    }
    w->latency_us = now_us() - p->started_us;
    std::optional<MessageId> id;
    if (reply != nullptr && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_INTEGER) {
        id = parse_id(reply_text(reply->element[0]));
    } else if (reply != nullptr && reply->type == REDIS_REPLY_ERROR) {
        log_zone(NGX_LOG_ERR, w, "redis script failed", reply->str);
    }
    if (!id) {
        answer(p, PublishCall::Status::unavailable);
        free_pending(p);
        return;
    }
    PublishCall *call = p->call;
    auto count = uint32_t(reply->element[1]->integer);
    if (call->remove) {
        answer(p, !call->info.exists && count == 0 ? PublishCall::Status::not_found : PublishCall::Status::ok);
        free_pending(p);
        return;
    }
    call->id = *id;
    call->messages = count;
    if (mirrored(p) || w->stopping) {
        answer(p, mirrored(p) ? PublishCall::Status::ok : PublishCall::Status::unavailable);
        free_pending(p);
        return;
    }
    p->awaiting = true;   // the timer still runs: see reply_timeout()
    ngx_queue_insert_tail(&w->awaiting, &p->in_awaiting);
}

// After this worker mirrored more of the log: acknowledge what is now here.
void acknowledge_mirrored(RedisWorker *w) {
    ngx_queue_t *q = ngx_queue_head(&w->awaiting);
    while (q != ngx_queue_sentinel(&w->awaiting)) {
        Pending *p = ngx_queue_data(q, Pending, in_awaiting);
        q = ngx_queue_next(q);
        if (p->call != nullptr && !mirrored(p)) continue;
        answer(p, PublishCall::Status::ok);
        free_pending(p);
    }
}

void reply_timeout(ngx_event_t *ev) noexcept {
    auto *p = static_cast<Pending *>(ev->data);
    if (!p->awaiting) {
        log_zone(NGX_LOG_ERR, p->worker, "redis did not answer in time", nullptr);
        answer(p, PublishCall::Status::unavailable);   // p is freed when hiredis gives it back
        return;
    }
    // Stored in Redis but not seen here: acknowledged if another worker mirrored it.
    answer(p, mirrored(p) ? PublishCall::Status::ok : PublishCall::Status::unavailable);
    free_pending(p);
}

// ---- configuration ----

bool parse_url(ngx_conf_t *cf, RedisConf *conf) {
    std::string_view url = view(conf->url);
    if (url.substr(0, 8) != "redis://") return false;
    url.remove_prefix(8);
    size_t slash = url.find('/');
    if (slash != std::string_view::npos) {
        std::string_view db = url.substr(slash + 1);
        ngx_int_t n = db.empty() ? 0 : ngx_atoi(reinterpret_cast<u_char *>(const_cast<char *>(db.data())), db.size());
        if (n == NGX_ERROR) return false;
        conf->db = int(n);
        url = url.substr(0, slash);
    }
    ngx_url_t u;
    ngx_memzero(&u, sizeof(u));
    u.url = {url.size(), reinterpret_cast<u_char *>(const_cast<char *>(url.data()))};
    u.default_port = 6379;
    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) return false;
    u_char text[NGX_SOCKADDR_STRLEN];
    size_t len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, text, sizeof(text), 0);
    conf->host.assign(reinterpret_cast<char *>(text), len);
    conf->port = int(u.port ? u.port : 6379);
    return true;
}

template <typename T, typename... Args>
T *pool_new(ngx_pool_t *pool, Args &&...args) {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, sizeof(T));
    if (cln == nullptr) return nullptr;
    T *obj = new (cln->data) T(std::forward<Args>(args)...);
    cln->handler = [](void *data) noexcept { static_cast<T *>(data)->~T(); };
    return obj;
}

}  // namespace

// ---- the Store ----

ngx_int_t RedisStore::start(PublishCall *call) {
    RedisWorker *w = worker_;
    const PublishInput &input = call->in;
    if (input.event.size() + input.content_type.size() + input.data.size() > kMaxEntryBytes) {
        call->status = PublishCall::Status::too_large;   // the other hosts would not mirror it
        call->done(call);
        return NGX_OK;
    }
    if (w == nullptr || !w->cmd.ready) {
        call->status = PublishCall::Status::unavailable;
        call->done(call);
        return NGX_OK;
    }
    auto *p = static_cast<Pending *>(ngx_calloc(sizeof(Pending), ngx_cycle->log));
    if (p == nullptr) {
        call->status = PublishCall::Status::failed;
        call->done(call);
        return NGX_OK;
    }
    p->call = call;
    p->worker = w;
    p->started_us = now_us();
    p->timer.handler = reply_timeout;
    p->timer.data = p;
    p->timer.log = ngx_cycle->log;
    call->store_data = p;
    if (call->remove) call->info = local_->info(call->in.channel);
    ngx_add_timer(&p->timer, kReplyTimeout);

    const RedisConf &conf = *conf_;
    std::string stream = key(conf, call->in.channel), log = key(conf, "#log"), last = key(conf, "#last"),
                floor = key(conf, "#floor");
    std::string now = std::to_string(now_ms()), history = std::to_string(local_->history()),
                ttl = std::to_string(local_->ttl_ms()), ahead = std::to_string(kMaxAheadMs);
    char host_last[kMaxIdText];
    size_t host_last_len = format_id(local_->last_id(), host_last);
    const PublishInput &in = call->in;
    send_argv(&w->cmd, guarded_reply<on_script_reply>, p,
              {"EVAL", kScript, "4", stream, log, last, floor, now, history, ttl, kLogMaxLen, in.channel, in.event,
               in.content_type, in.data, call->remove ? "d" : "m", {host_last, host_last_len}, ahead});
    return NGX_AGAIN;
}

void RedisStore::cancel(PublishCall *call) {
    auto *p = static_cast<Pending *>(call->store_data);
    if (p == nullptr) return;
    call->store_data = nullptr;
    p->call = nullptr;
    if (p->awaiting || p->replied) free_pending(p);   // else freed when hiredis gives it back
}

ngx_int_t RedisStore::start_worker(ngx_cycle_t *cycle, ZoneSession *session, StoreListener *listener) {
    if (local_->start_worker(cycle, session, listener) != NGX_OK) return NGX_ERROR;
    auto *w = new (std::nothrow) RedisWorker();
    if (w == nullptr) return NGX_ERROR;
    w->store = this;
    w->listener = listener;
    for (RedisLink *link : {&w->cmd, &w->log}) {
        link->owner = w;
        link->retry.handler = retry_handler;
        link->retry.data = link;
        link->retry.log = cycle->log;
        link->retry.cancelable = 1;
    }
    w->log.tail = true;
    ngx_queue_init(&w->awaiting);
    worker_ = w;
    connect_link(&w->cmd);
    connect_link(&w->log);
    return NGX_OK;
}

void RedisStore::stop_worker(ZoneSession *session) {
    RedisWorker *w = worker_;
    if (w != nullptr && !w->stopping) {
        w->stopping = true;
        while (!ngx_queue_empty(&w->awaiting)) {
            Pending *p = ngx_queue_data(ngx_queue_head(&w->awaiting), Pending, in_awaiting);
            answer(p, p->call != nullptr && mirrored(p) ? PublishCall::Status::ok : PublishCall::Status::unavailable);
            free_pending(p);
        }
        for (RedisLink *link : {&w->cmd, &w->log}) {
            if (link->retry.timer_set) ngx_del_timer(&link->retry);
            if (link->ac != nullptr) redisAsyncFree(link->ac);   // pending callbacks get no reply
        }
    }
    local_->stop_worker(session);
}

void RedisStore::append_stats(JsonWriter<StringSink> &w) {
    RedisWorker *rw = worker_;
    w.key("redis").open_object().key("url").string(view(conf_->url));
    w.key("connected").boolean(rw != nullptr && rw->cmd.ready && rw->log.ready);
    w.key("latency_us").number(rw != nullptr ? rw->latency_us : 0);
    w.key("reconnects").number(rw != nullptr ? rw->failures : 0);
    w.key("invalid_entries").number(rw != nullptr ? rw->invalid : 0);
    w.close_object();
}

// ---- configuration ----

char *redis_directive(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    try {
        auto *mcf = static_cast<MainConf *>(conf);
        auto *rc = pool_new<RedisConf>(cf->pool);
        if (rc == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
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
        found->store = pool_new<RedisStore>(cf->pool, found->shm, confs[i]);
        if (found->store == nullptr) return NGX_ERROR;
    }
    return NGX_OK;
}

}  // namespace channels
