// ngx_http_channels_module's configuration, shared by its nginx-facing files.
//
// Three kinds of state, as nginx's limit_req keeps them apart: the configuration of a
// cycle (below, in the configuration pool), the zone's shared root (in shared memory,
// reached only through the store), and each worker's runtime of a zone (WorkerZone, in
// the worker's own memory, ngx_http_channels_delivery.h).
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <cstdint>
#include <string_view>

#include "channels/channel_list.h"
#include "channels/ids.h"
#include "ngx_http_channels_store.h"

extern "C" {
extern ngx_module_t ngx_http_channels_module;
}

namespace channels {

class ShmStore;
struct RedisConf;

// One channel_zone.
struct ZoneConf {
    ngx_str_t        name{};
    ngx_uint_t       history = 100;
    ngx_msec_t       ttl = 3600 * 1000;
    ngx_uint_t       index = 0;            // in MainConf::zones, and in a worker's runtime
    ngx_shm_zone_t  *shm_zone = nullptr;
    ShmStore        *shm = nullptr;        // the shared-memory store of the zone
    Store           *store = nullptr;      // what transports use: shm, or Redis in front of it
    RedisConf       *redis = nullptr;      // channel_redis joined the zone to Redis
};

enum class Role : uint8_t { none, sse, longpoll, publish, stats };

// A CHANNEL argument: `list` when it is exactly one variable (may hold a comma-separated
// list); otherwise composed text is always one channel id (README "Directives").
struct ChannelValue {
    ngx_http_complex_value_t value;
    bool list;
};

struct LocConf {
    Role             role = Role::none;
    ngx_array_t     *channels = nullptr;   // of ChannelValue
    ngx_shm_zone_t  *shm_zone = nullptr;   // zone= or the only zone (stats: nullptr shows all)
    ngx_flag_t       longpoll_raw = NGX_CONF_UNSET;
    ngx_msec_t       sse_ping = NGX_CONF_UNSET_MSEC;
    ngx_msec_t       sse_retry = NGX_CONF_UNSET_MSEC;
    ngx_msec_t       longpoll_timeout = NGX_CONF_UNSET_MSEC;
    ngx_int_t        first_message = NGX_CONF_UNSET;   // FirstMessage, encoded (first_message())
    ngx_uint_t       max_per_request = NGX_CONF_UNSET_UINT;
    ngx_flag_t       existing_only = NGX_CONF_UNSET;
    ngx_uint_t       refusal_log_level = NGX_CONF_UNSET_UINT;
};

struct MainConf {
    ngx_array_t      zones;                // of ZoneConf *
    ngx_array_t      locations;            // of LocConf * with a channels directive
    ngx_array_t      redis;                // of RedisConf *
};

// channel_first_message as stored in LocConf::first_message.
inline constexpr ngx_int_t kFirstNewest = 0;
inline constexpr ngx_int_t kFirstOldest = -2;   // (-1 is NGX_CONF_UNSET); positive: the last N
FirstMessage first_message(const LocConf *lcf);

inline LocConf *loc_conf(ngx_http_request_t *r) {
    return static_cast<LocConf *>(ngx_http_get_module_loc_conf(r, ngx_http_channels_module));
}

inline MainConf *main_conf(ngx_http_request_t *r) {
    return static_cast<MainConf *>(ngx_http_get_module_main_conf(r, ngx_http_channels_module));
}

// The zone a location uses (nullptr: a channel_stats location showing all zones).
ZoneConf *zone_of(const LocConf *lcf);

inline std::string_view view(const ngx_str_t &s) { return {reinterpret_cast<const char *>(s.data), s.len}; }

// Copies bytes and returns the end; an empty view may have no pointer at all, which
// memcpy must not be given.
inline u_char *copy_bytes(u_char *dst, std::string_view bytes) {
    return bytes.empty() ? dst : ngx_cpymem(dst, bytes.data(), bytes.size());
}

// Content handlers (one file each).
ngx_int_t ngx_http_channels_publish_handler(ngx_http_request_t *r) noexcept;
ngx_int_t ngx_http_channels_sse_handler(ngx_http_request_t *r) noexcept;
ngx_int_t ngx_http_channels_longpoll_handler(ngx_http_request_t *r) noexcept;
ngx_int_t ngx_http_channels_stats_handler(ngx_http_request_t *r) noexcept;

// Runs fn, turning any C++ exception into `failed` with an error line: nothing may throw
// across nginx's C frames. Used at every entry point from nginx that can throw.
template <typename R, typename Fn>
R guarded(ngx_log_t *log, R failed, Fn &&fn) noexcept {
    try {
        return fn();
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "channels: request failed (out of memory?)");
        return failed;
    }
}

}  // namespace channels
