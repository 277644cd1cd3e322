// channel_redis for a module built without hiredis (see `config`): the directive is refused
// at configuration time, saying why, so no zone is ever put behind a Redis store.

#include "ngx_http_channels_redis.h"

namespace channels {

char *redis_directive(ngx_conf_t *, ngx_command_t *, void *) noexcept {
    return const_cast<char *>(
        "is not available: ngx_http_channels_module was built without "
        "hiredis (install libhiredis-dev, then rebuild the module)");
}

ngx_int_t redis_bind_zones(ngx_conf_t *, MainConf *) { return NGX_OK; }

}  // namespace channels
