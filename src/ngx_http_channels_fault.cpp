// Fault injection for tests (see ngx_http_channels_fault.h).

#include "ngx_http_channels_fault.h"

#include <cstdlib>
#include <string_view>

namespace channels::fault {

bool enabled;

namespace {

constexpr std::string_view kNames[] = {"sse_queue",         "longpoll_answer",  "delivery_read",
                                       "replay_read",       "detach_read_event", "zone_update_kill"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == size_t(Site::count), "a name per site");

struct Counter {
    unsigned long every = 0;   // 0: never
    unsigned long seen = 0;
};
Counter counters[size_t(Site::count)];

}  // namespace

void configure(ngx_log_t *log) {
    const char *spec = getenv("CHANNELS_FAULTS");
    enabled = false;
    for (Counter &c : counters) c = Counter{};
    if (spec == nullptr || *spec == '\0') return;
    std::string_view rest{spec};
    while (!rest.empty()) {
        std::string_view item = rest.substr(0, rest.find(','));
        rest.remove_prefix(item.size() < rest.size() ? item.size() + 1 : rest.size());
        size_t eq = item.find('=');
        std::string_view name = item.substr(0, eq);
        unsigned long every = eq == std::string_view::npos ? 1 : strtoul(item.substr(eq + 1).data(), nullptr, 10);
        for (size_t i = 0; i < size_t(Site::count); i++) {
            if (kNames[i] == name && every > 0) {
                counters[i].every = every;
                enabled = true;
            }
        }
    }
    if (enabled) ngx_log_error(NGX_LOG_NOTICE, log, 0, "channels: fault injection on: \"%s\"", spec);
}

bool hit_slow(Site site) {
    Counter &c = counters[size_t(site)];
    return c.every != 0 && ++c.seen % c.every == 0;
}

}  // namespace channels::fault
