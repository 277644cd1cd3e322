// Process hooks of ngx_http_channels_module: zone set-up in the master, the worker runtime.
#pragma once

#include "ngx_http_channels.h"

namespace channels {

ngx_int_t ngx_http_channels_init_zone(ngx_shm_zone_t *shm_zone, void *old_data) noexcept;
ngx_int_t ngx_http_channels_init_module(ngx_cycle_t *cycle) noexcept;
ngx_int_t ngx_http_channels_init_process(ngx_cycle_t *cycle) noexcept;
void ngx_http_channels_exit_process(ngx_cycle_t *cycle) noexcept;
void ngx_http_channels_exit_master(ngx_cycle_t *cycle) noexcept;

}  // namespace channels
