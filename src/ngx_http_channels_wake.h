// Wake-ups between worker processes. Each worker listens on a datagram socket in Linux's
// abstract namespace, named after its master and its own pid, so any worker of the same
// master can wake any other by pid — including workers of another configuration
// generation: a publish finished by an old worker after a reload wakes the new workers.
// (Descriptors made before fork, like eventfds, exist only for the workers of one cycle.)
//
// A wake-up carries the zone it is about; wake-ups asked for during one event-loop turn
// are sent once, at its end. Anyone on the host may send such a datagram: all it can do is
// start a delivery pass that finds nothing new.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include "ngx_http_channels_store.h"

namespace channels {

struct WakeHandlers {
    void (*woken)(uintptr_t zone_key);   // a wake-up for this zone arrived
    void (*shutdown)();                   // the worker starts a graceful shutdown
};

ngx_int_t wake_init_worker(ngx_cycle_t *cycle, WakeHandlers handlers);
// The nonce this worker's socket name ends with (0: the plain name), for its worker records.
uint32_t wake_nonce();
void wake_exit_worker();
// Asks to wake the workers holding any of `bits` in the zone (zone_key identifies it in
// every process: the address of its shared memory).
void wake_others(uintptr_t zone_key, Store *store, uint64_t bits);
// Sends what was asked for so far now (a delivery pass starts: the others first).
void wake_flush_now();
// Wakes every other worker of this master, whatever the zone knows of them (after the
// zone was rebuilt, its worker records are gone): the master's children, from /proc.
void wake_siblings(uintptr_t zone_key);

}  // namespace channels
