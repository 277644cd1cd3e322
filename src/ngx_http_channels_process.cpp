// Process hooks (see ngx_http_channels_process.h).
//
// master: creates or adopts each zone (init_zone), opens the files that keep ids across
//         restarts (init_module), saves the exact last id when it exits (exit_master)
// worker: starts its runtime of every zone — a worker record, the wake-up socket, the
//         delivery (init_process) — and stops it (exit_process)

#include "ngx_http_channels_process.h"

#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_shm.h"

namespace channels {
namespace {

MainConf *cycle_main_conf(ngx_cycle_t *cycle) {
    if (cycle->conf_ctx[ngx_http_module.index] == nullptr) return nullptr;
    return static_cast<MainConf *>(ngx_http_cycle_get_module_main_conf(cycle, ngx_http_channels_module));
}

bool is_worker() { return ngx_process == NGX_PROCESS_WORKER || ngx_process == NGX_PROCESS_SINGLE; }

template <typename Fn>
void for_each_zone(MainConf *mcf, Fn &&fn) {
    auto **zones = static_cast<ZoneConf **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) fn(zones[i]);
}

}  // namespace

ngx_int_t ngx_http_channels_init_zone(ngx_shm_zone_t *shm_zone, void *old_data) noexcept {
    auto *zone = static_cast<ZoneConf *>(shm_zone->data);
    zone->shm->redis_ids = zone->redis != nullptr;
    return zone->shm->init(old_data != nullptr || shm_zone->shm.exists);
}

ngx_int_t ngx_http_channels_init_module(ngx_cycle_t *cycle) noexcept {
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr) return NGX_OK;
    ngx_int_t rc = NGX_OK;
    for_each_zone(mcf, [&](ZoneConf *zone) {
        if (zone->shm->open_id_file(cycle) != NGX_OK) rc = NGX_ERROR;
    });
    return rc;
}

ngx_int_t ngx_http_channels_init_process(ngx_cycle_t *cycle) noexcept {
    if (!is_worker()) return NGX_OK;
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr || mcf->zones.nelts == 0) return NGX_OK;
    return delivery_init_worker(cycle, mcf);
}

void ngx_http_channels_exit_process(ngx_cycle_t *) noexcept {
    if (is_worker()) delivery_exit_worker();
}

void ngx_http_channels_exit_master(ngx_cycle_t *cycle) noexcept {
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf != nullptr) for_each_zone(mcf, [](ZoneConf *zone) { zone->shm->save_id_file(); });
}

}  // namespace channels
