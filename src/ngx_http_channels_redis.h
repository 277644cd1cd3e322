// channel_redis: share a zone's channels across nginx hosts through Redis Streams (SPEC §8).
//
// One Lua script assigns every message id (the larger of the clock and the last id under
// the prefix) and appends the message to its channel's stream and to the prefix's shared
// log stream, atomically. Every worker of every host tails the shared log with
// XREAD BLOCK on its own connection and mirrors it into the local zone (idempotently, by
// id), so fan-out, replay and gap detection stay the local store's job.
#pragma once

#include <string>

#include "ngx_http_channels.h"
#include "ngx_http_channels_store.h"

namespace chn {

struct RedisConf {
    ngx_str_t   zone_name{};
    ngx_str_t   url{};
    std::string host;      // numeric address, resolved at configuration time
    int         port = 6379;
    int         db = 0;
    std::string prefix = "channels:";
};

struct RedisWorker;

// channel_redis zone=NAME url=redis://HOST:PORT[/DB] [prefix=STR];
char *redis_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
// Binds each channel_redis to its zone (postconfiguration).
ngx_int_t redis_bind_zones(ngx_conf_t *cf, MainConf *mcf);

ngx_int_t redis_init_worker(ngx_cycle_t *cycle, ZoneConf *zone);
// Closes the zone's Redis connections (graceful shutdown, worker exit).
void redis_stop_worker(ZoneConf *zone);

// Publishes (or deletes) through Redis; the request is answered when Redis replies.
ngx_int_t redis_publish(ngx_http_request_t *r, ZoneConf *zone, const PublishInput &in);
ngx_int_t redis_delete(ngx_http_request_t *r, ZoneConf *zone, std::string_view channel);

// ,"redis":{...} for the stats JSON.
void redis_append_stats(std::string &out, ZoneConf *zone);

}  // namespace chn
