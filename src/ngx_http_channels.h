// Declarations shared by the nginx-facing files of ngx_http_channels_module.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <cstdint>
#include <string>
#include <string_view>

#include "channels/channel_list.h"
#include "channels/ids.h"

extern "C" {
extern ngx_module_t ngx_http_channels_module;
}

namespace chn {

using channels::MessageId;

struct Shared;       // the zone's root, in shared memory (ngx_http_channels_store.h)
struct WorkerZone;   // per-worker delivery state of one zone (ngx_http_channels_delivery.h)
struct RedisConf;    // channel_redis (ngx_http_channels_redis.h)
struct RedisWorker;

// One channel_zone: lives in the configuration pool; the worker copy of it holds the
// worker-local delivery state.
struct ZoneConf {
    ngx_shm_zone_t  *shm_zone = nullptr;
    ngx_str_t        name{};
    ngx_uint_t       history = 100;
    ngx_msec_t       ttl = 3600 * 1000;
    ngx_slab_pool_t *shpool = nullptr;
    Shared          *sh = nullptr;
    WorkerZone      *worker = nullptr;
    bool             fresh = false;        // the zone was created (not inherited) by this cycle
    RedisConf       *redis = nullptr;      // channel_redis joined this zone to Redis
    RedisWorker     *redis_worker = nullptr;
};

enum class Role : uint8_t { none, sse, longpoll, publish, stats };

// channel_first_message: newest (0), oldest (kFirstOldest) or the last N.
inline constexpr ngx_int_t kFirstNewest = 0;
inline constexpr ngx_int_t kFirstOldest = NGX_MAX_INT_T_VALUE;

struct LocConf {
    Role             role = Role::none;
    ngx_array_t     *channels = nullptr;   // of ngx_http_complex_value_t
    ngx_shm_zone_t  *shm_zone = nullptr;   // set by zone= or postconfiguration (stats: all zones)
    ngx_flag_t       longpoll_raw = NGX_CONF_UNSET;
    ngx_msec_t       sse_ping = NGX_CONF_UNSET_MSEC;
    ngx_msec_t       sse_retry = NGX_CONF_UNSET_MSEC;
    ngx_msec_t       longpoll_timeout = NGX_CONF_UNSET_MSEC;
    ngx_int_t        first_message = NGX_CONF_UNSET;
};

struct MainConf {
    ngx_array_t      zones;                // of ZoneConf *
    ngx_array_t      locations;            // of LocConf * with a channels directive
    ngx_array_t      redis;                // of RedisConf *
    ngx_fd_t        *wake_fds = nullptr;   // one eventfd per worker number, made in the master
    ngx_uint_t       nwake_fds = 0;
};

inline LocConf *loc_conf(ngx_http_request_t *r) {
    return static_cast<LocConf *>(ngx_http_get_module_loc_conf(r, ngx_http_channels_module));
}

inline std::string_view view(const ngx_str_t &s) {
    return {reinterpret_cast<const char *>(s.data), s.len};
}

// Request helpers (ngx_http_channels_module.cpp).
// The zone a location uses (nullptr: a channel_stats location showing all zones).
ZoneConf *zone_of(LocConf *lcf);
struct ChannelArgs {
    channels::ChannelList list;
    channels::ListError error = channels::ListError::none;
};
// Evaluates the location's CHANNEL values, percent-decodes and validates them.
// Returns NGX_ERROR on an internal failure; args.error tells a client error.
ngx_int_t eval_channels(ngx_http_request_t *r, LocConf *lcf, ChannelArgs &args);
// Common start of subscriber requests: GET/HEAD only (405 otherwise), body discarded,
// channels evaluated (400 when bad). true: go on; false: answered, return *rc.
bool subscriber_prelude(ngx_http_request_t *r, ChannelArgs &args, ngx_int_t *rc);
// Watches a parked request for the client's close (ngx_http_test_reading). A close that
// arrived while the request was being read raised no new edge-triggered event, so a read
// event already ready is run once, posted.
void watch_client_close(ngx_http_request_t *r);
// Whether the query string has an argument of that name (with or without a value).
bool has_arg(ngx_http_request_t *r, std::string_view name);
// A request header's value by name (case-insensitive), or an empty string.
ngx_str_t find_header(ngx_http_request_t *r, std::string_view name);
// A percent-decoded query argument (allocated from r->pool); found == false when absent.
ngx_int_t decoded_arg(ngx_http_request_t *r, std::string_view name, ngx_str_t *value,
                      bool *found);
// The cursor a subscriber sent (Last-Event-ID header or last_event_id argument), if valid.
bool request_cursor(ngx_http_request_t *r, MessageId *cursor);
// Sends a short text/plain answer with one line; for 4xx, also logs it at info.
ngx_int_t send_text(ngx_http_request_t *r, ngx_uint_t status, std::string_view line);
// Sends a complete in-memory body with the given content type.
ngx_int_t send_body(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type,
                    std::string_view body);
// Adds a response header (name and value copied into r->pool).
ngx_int_t add_header(ngx_http_request_t *r, std::string_view name, std::string_view value);
ngx_int_t add_cursor_header(ngx_http_request_t *r, MessageId id);
// Wall clock in milliseconds (nginx's cached time).
uint64_t now_ms();

// Copies bytes and returns the end; an empty view may have no pointer at all, which
// memcpy must not be given.
inline u_char *copy_bytes(u_char *dst, std::string_view bytes) {
    return bytes.empty() ? dst : ngx_cpymem(dst, bytes.data(), bytes.size());
}

inline void append_id(std::string &out, MessageId id) {
    char text[channels::kMaxIdText];
    out.append(text, channels::format_id(id, text));
}

// A JSON string with the id, or null for the zero id (nothing there).
inline void append_json_id(std::string &out, MessageId id) {
    if (id == MessageId{}) {
        out += "null";
        return;
    }
    out += '"';
    append_id(out, id);
    out += '"';
}

// Content handlers (one file each).
ngx_int_t publish_handler(ngx_http_request_t *r);
ngx_int_t sse_handler(ngx_http_request_t *r);
ngx_int_t longpoll_handler(ngx_http_request_t *r);
ngx_int_t stats_handler(ngx_http_request_t *r);

// Runs fn, turning any C++ exception into NGX_ERROR with an alert: nothing may throw
// across nginx's C frames.
template <typename Fn>
ngx_int_t guarded(ngx_log_t *log, Fn &&fn) noexcept {
    try {
        return fn();
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "channels: unexpected failure (out of memory?)");
        return NGX_ERROR;
    }
}

}  // namespace chn
