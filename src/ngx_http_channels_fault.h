// Fault injection for tests: `env CHANNELS_FAULTS;` in nginx.conf and
// CHANNELS_FAULTS="site=N[,site=N]" in nginx's environment make every N-th pass through a
// site fail as if memory or the kernel had failed there (zone_update_kill: the worker kills
// itself with SIGKILL in the middle of a zone update, holding the lock). Unset, a site costs
// one predictable branch.
#pragma once

#include <csignal>

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

namespace channels::fault {

enum class Site : unsigned {
    sse_queue,           // queuing an SSE event for a subscriber
    longpoll_answer,     // building a long-poll answer
    delivery_read,       // a delivery pass reading the publish log
    replay_read,         // reading a replay page
    detach_read_event,   // re-arming the read event of a stream being detached
    zone_update_kill,    // die in the middle of a zone update
    count
};

extern bool enabled;

// Reads CHANNELS_FAULTS (worker start).
void configure(ngx_log_t *log);
bool hit_slow(Site site);

inline bool hit(Site site) { return enabled && hit_slow(site); }
inline void kill_point() {
    if (enabled && hit_slow(Site::zone_update_kill)) raise(SIGKILL);
}

}  // namespace channels::fault
