// channel_redis for a module built without hiredis (see `config`): the directive is refused
// at configuration time, saying why, so no zone is ever joined to Redis and the other entry
// points of ngx_http_channels_redis.h have nothing to do.

#include "ngx_http_channels_redis.h"

namespace chn {

char *redis_directive(ngx_conf_t *, ngx_command_t *, void *) noexcept {
    return const_cast<char *>(
        "is not available: ngx_http_channels_module was built without "
        "hiredis (install libhiredis-dev, then rebuild the module)");
}

ngx_int_t redis_bind_zones(ngx_conf_t *, MainConf *) { return NGX_OK; }

ngx_int_t redis_init_worker(ngx_cycle_t *, ZoneConf *) { return NGX_OK; }

void redis_stop_worker(ZoneConf *) {}

// Unreachable: transports call these only for a zone with zone->redis set.
ngx_int_t redis_publish(ngx_http_request_t *, ZoneConf *, const PublishInput &) {
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

ngx_int_t redis_delete(ngx_http_request_t *, ZoneConf *, std::string_view) {
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

void redis_append_stats(std::string &, ZoneConf *) {}

}  // namespace chn
