// ngx_http_channels_jwt_module: channel grants in JSON Web Tokens (README "Authorization (JWT)").
// What the subscriber transports need from it.
#pragma once

#include "ngx_http_channels.h"

extern "C" {
extern ngx_module_t ngx_http_channels_jwt_module;
}

namespace channels {

// When the token that let this request in expires, in ms since the epoch; 0 when no
// token was checked (channel_auth off) or the token has no exp.
uint64_t auth_expiry_ms(ngx_http_request_t *r);

// A wait (long-poll) cut short so that it ends no later than the token's exp.
ngx_msec_t auth_bounded_wait(ngx_http_request_t *r, ngx_msec_t wait);

}  // namespace channels
