// ngx_http_channels_module: directives, configuration, process hooks, request helpers.

#include "ngx_http_channels.h"

#include <sys/eventfd.h>

#include <new>

#include "channels/ids.h"
#include "ngx_http_channels_delivery.h"
#include "ngx_http_channels_redis.h"
#include "ngx_http_channels_store.h"

namespace chn {
namespace {

void *create_main_conf(ngx_conf_t *cf) noexcept;
char *init_main_conf(ngx_conf_t *cf, void *conf) noexcept;
void *create_loc_conf(ngx_conf_t *cf) noexcept;
char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept;
ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept;
ngx_int_t init_module(ngx_cycle_t *cycle) noexcept;
ngx_int_t init_process(ngx_cycle_t *cycle) noexcept;
void exit_process(ngx_cycle_t *cycle) noexcept;
void exit_master(ngx_cycle_t *cycle) noexcept;

char *channel_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *subscriber_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *publish_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *stats_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *first_message_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;

constexpr ngx_uint_t kLocationConf = NGX_HTTP_LOC_CONF | NGX_HTTP_LIF_CONF;
constexpr ngx_uint_t kAnyLevel = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

ngx_command_t commands[] = {
    {ngx_string("channel_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, channel_zone_directive,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("channel_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, redis_directive,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_channel"), kLocationConf | NGX_CONF_1MORE, subscriber_directive,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("longpoll_channel"), kLocationConf | NGX_CONF_1MORE, subscriber_directive,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("publish_channel"), kLocationConf | NGX_CONF_TAKE12, publish_directive,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("channel_stats"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
     stats_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_ping"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, sse_ping), nullptr},
    {ngx_string("sse_retry"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, sse_retry), nullptr},
    {ngx_string("longpoll_timeout"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, longpoll_timeout), nullptr},
    {ngx_string("channel_first_message"), kAnyLevel | NGX_CONF_TAKE1, first_message_directive,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    ngx_null_command};

ngx_http_module_t module_ctx = {
    nullptr,              // preconfiguration
    postconfiguration,    // postconfiguration
    create_main_conf,     // create main configuration
    init_main_conf,       // init main configuration
    nullptr,              // create server configuration
    nullptr,              // merge server configuration
    create_loc_conf,      // create location configuration
    merge_loc_conf,       // merge location configuration
};

}  // namespace
}  // namespace chn

extern "C" {
ngx_module_t ngx_http_channels_module = {
    NGX_MODULE_V1,
    &chn::module_ctx,     // module context
    chn::commands,        // module directives
    NGX_HTTP_MODULE,      // module type
    nullptr,              // init master
    chn::init_module,     // init module
    chn::init_process,    // init process
    nullptr,              // init thread
    nullptr,              // exit thread
    chn::exit_process,    // exit process
    chn::exit_master,     // exit master
    NGX_MODULE_V1_PADDING};
}

namespace chn {
namespace {

// ---- configuration ----

template <typename T>
T *pool_new(ngx_pool_t *pool) {
    void *mem = ngx_pcalloc(pool, sizeof(T));
    return mem == nullptr ? nullptr : new (mem) T();
}

void *create_main_conf(ngx_conf_t *cf) noexcept {
    auto *mcf = pool_new<MainConf>(cf->pool);
    if (mcf == nullptr) return nullptr;
    if (ngx_array_init(&mcf->zones, cf->pool, 2, sizeof(ZoneConf *)) != NGX_OK ||
        ngx_array_init(&mcf->locations, cf->pool, 4, sizeof(LocConf *)) != NGX_OK ||
        ngx_array_init(&mcf->redis, cf->pool, 1, sizeof(RedisConf *)) != NGX_OK) {
        return nullptr;
    }
    return mcf;
}

char *init_main_conf(ngx_conf_t *, void *) noexcept { return NGX_CONF_OK; }

void *create_loc_conf(ngx_conf_t *cf) noexcept { return pool_new<LocConf>(cf->pool); }

char *merge_loc_conf(ngx_conf_t *, void *parent, void *child) noexcept {
    auto *prev = static_cast<LocConf *>(parent);
    auto *conf = static_cast<LocConf *>(child);
    ngx_conf_merge_msec_value(conf->sse_ping, prev->sse_ping, 30000);
    ngx_conf_merge_msec_value(conf->sse_retry, prev->sse_retry, 0);
    ngx_conf_merge_msec_value(conf->longpoll_timeout, prev->longpoll_timeout, 30000);
    ngx_conf_merge_value(conf->first_message, prev->first_message, kFirstNewest);
    ngx_conf_merge_value(conf->longpoll_raw, prev->longpoll_raw, 0);
    return NGX_CONF_OK;
}

bool starts_with(const ngx_str_t &s, std::string_view prefix) {
    return view(s).substr(0, prefix.size()) == prefix;
}

ngx_str_t after_prefix(const ngx_str_t &s, size_t n) { return {s.len - n, s.data + n}; }

// channel_zone zone=NAME:SIZE [history=N] [ttl=TIME];
char *channel_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *mcf = static_cast<MainConf *>(conf);
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    auto *zone = pool_new<ZoneConf>(cf->pool);
    if (zone == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    ssize_t size = 0;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (starts_with(args[i], "zone=")) {
            ngx_str_t value = after_prefix(args[i], 5);
            u_char *colon = static_cast<u_char *>(ngx_strlchr(value.data, value.data + value.len, ':'));
            if (colon == nullptr || colon == value.data) goto invalid;
            zone->name = {size_t(colon - value.data), value.data};
            ngx_str_t sz{size_t(value.data + value.len - colon - 1), colon + 1};
            size = ngx_parse_size(&sz);
            if (size == NGX_ERROR) goto invalid;
            if (size < ssize_t(8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small", &value);
                return static_cast<char *>(NGX_CONF_ERROR);
            }
        } else if (starts_with(args[i], "history=")) {
            ngx_str_t value = after_prefix(args[i], 8);
            ngx_int_t n = ngx_atoi(value.data, value.len);
            if (n <= 0) goto invalid;
            zone->history = ngx_uint_t(n);
        } else if (starts_with(args[i], "ttl=")) {
            ngx_str_t value = after_prefix(args[i], 4);
            ngx_msec_t ttl = ngx_parse_time(&value, 0);
            if (ttl == ngx_msec_t(NGX_ERROR) || ttl == 0) goto invalid;
            zone->ttl = ttl;
        } else {
            goto invalid;
        }
        continue;
    invalid:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &args[i]);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (zone->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    zone->shm_zone = ngx_shared_memory_add(cf, &zone->name, size, &ngx_http_channels_module);
    if (zone->shm_zone == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    if (zone->shm_zone->data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate channel_zone \"%V\"", &zone->name);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    zone->shm_zone->init = store_init_zone;
    zone->shm_zone->data = zone;
    auto **slot = static_cast<ZoneConf **>(ngx_array_push(&mcf->zones));
    if (slot == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    *slot = zone;
    return NGX_CONF_OK;
}

// Parses "zone=NAME" into the location's zone reference.
bool parse_zone_arg(ngx_conf_t *cf, const ngx_str_t &arg, LocConf *lcf) {
    if (!starts_with(arg, "zone=")) return false;
    ngx_str_t name = after_prefix(arg, 5);
    lcf->shm_zone = ngx_shared_memory_add(cf, &name, 0, &ngx_http_channels_module);
    return true;
}

char *register_location(ngx_conf_t *cf, LocConf *lcf, Role role, ngx_http_handler_pt handler) {
    if (lcf->role != Role::none) return const_cast<char *>("is duplicate");
    lcf->role = role;
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = handler;
    auto *mcf = static_cast<MainConf *>(ngx_http_conf_get_module_main_conf(cf, ngx_http_channels_module));
    auto **slot = static_cast<LocConf **>(ngx_array_push(&mcf->locations));
    if (slot == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    *slot = lcf;
    return NGX_CONF_OK;
}

char *add_channel_value(ngx_conf_t *cf, LocConf *lcf, ngx_str_t *value) {
    if (lcf->channels == nullptr) {
        lcf->channels = ngx_array_create(cf->pool, 2, sizeof(ngx_http_complex_value_t));
        if (lcf->channels == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    }
    auto *cv = static_cast<ngx_http_complex_value_t *>(ngx_array_push(lcf->channels));
    if (cv == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = cv;
    return ngx_http_compile_complex_value(&ccv) == NGX_OK ? NGX_CONF_OK
                                                           : static_cast<char *>(NGX_CONF_ERROR);
}

// sse_channel CHANNEL... [zone=NAME];  longpoll_channel CHANNEL... [zone=NAME] [format=json|raw];
char *subscriber_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    bool sse = view(cmd->name) == "sse_channel";
    char *rc = register_location(cf, lcf, sse ? Role::sse : Role::longpoll,
                                 sse ? sse_handler : longpoll_handler);
    if (rc != NGX_CONF_OK) return rc;
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (parse_zone_arg(cf, args[i], lcf)) continue;
        if (!sse && starts_with(args[i], "format=")) {
            std::string_view format = view(args[i]).substr(7);
            if (format != "json" && format != "raw") {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &args[i]);
                return static_cast<char *>(NGX_CONF_ERROR);
            }
            lcf->longpoll_raw = format == "raw";
            continue;
        }
        if (add_channel_value(cf, lcf, &args[i]) != NGX_CONF_OK) return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (lcf->channels == nullptr) return const_cast<char *>("needs a channel");
    return NGX_CONF_OK;
}

// publish_channel CHANNEL [zone=NAME];
char *publish_directive(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    char *rc = register_location(cf, lcf, Role::publish, publish_handler);
    if (rc != NGX_CONF_OK) return rc;
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (parse_zone_arg(cf, args[i], lcf)) continue;
        if (lcf->channels != nullptr) return const_cast<char *>("takes one channel");
        if (add_channel_value(cf, lcf, &args[i]) != NGX_CONF_OK) return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (lcf->channels == nullptr) return const_cast<char *>("needs a channel");
    return NGX_CONF_OK;
}

// channel_stats [zone=NAME];
char *stats_directive(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    char *rc = register_location(cf, lcf, Role::stats, stats_handler);
    if (rc != NGX_CONF_OK) return rc;
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    if (cf->args->nelts == 2 && !parse_zone_arg(cf, args[1], lcf)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &args[1]);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}

// channel_first_message newest|oldest|-N;
char *first_message_directive(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    if (lcf->first_message != NGX_CONF_UNSET) return const_cast<char *>("is duplicate");
    auto *value = &static_cast<ngx_str_t *>(cf->args->elts)[1];
    std::string_view v = view(*value);
    if (v == "newest") {
        lcf->first_message = kFirstNewest;
    } else if (v == "oldest") {
        lcf->first_message = kFirstOldest;
    } else if (v.size() > 1 && v[0] == '-') {
        ngx_int_t n = ngx_atoi(value->data + 1, value->len - 1);
        if (n <= 0) goto invalid;
        lcf->first_message = n;
    } else {
        goto invalid;
    }
    return NGX_CONF_OK;
invalid:
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid value \"%V\", expected newest, oldest or -N",
                       value);
    return static_cast<char *>(NGX_CONF_ERROR);
}

// Gives locations without zone= the only zone, and checks every named zone exists.
ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept {
    auto *mcf = static_cast<MainConf *>(ngx_http_conf_get_module_main_conf(cf, ngx_http_channels_module));
    if (redis_bind_zones(cf, mcf) != NGX_OK) return NGX_ERROR;
    auto **locs = static_cast<LocConf **>(mcf->locations.elts);
    auto **zs = static_cast<ZoneConf **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->locations.nelts; i++) {
        LocConf *lcf = locs[i];
        if (lcf->shm_zone == nullptr) {
            if (lcf->role == Role::stats) continue;   // all zones
            if (mcf->zones.nelts != 1) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              mcf->zones.nelts == 0
                                  ? "channels: no \"channel_zone\" is defined"
                                  : "channels: several channel_zones exist; name one with zone=");
                return NGX_ERROR;
            }
            lcf->shm_zone = zs[0]->shm_zone;
        }
        if (lcf->shm_zone->data == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "channels: unknown channel_zone \"%V\"",
                          &lcf->shm_zone->shm.name);
            return NGX_ERROR;
        }
    }
    return NGX_OK;
}

// ---- process hooks ----

MainConf *cycle_main_conf(ngx_cycle_t *cycle) {
    if (cycle->conf_ctx[ngx_http_module.index] == nullptr) return nullptr;
    return static_cast<MainConf *>(ngx_http_cycle_get_module_main_conf(cycle, ngx_http_channels_module));
}

void close_wake_fds(void *data) noexcept {
    auto *mcf = static_cast<MainConf *>(data);
    for (ngx_uint_t i = 0; i < mcf->nwake_fds; i++) {
        if (mcf->wake_fds[i] != NGX_INVALID_FILE) close(mcf->wake_fds[i]);
    }
    mcf->nwake_fds = 0;
}

// "channels-NAME.id" beside nginx's pid file: a place the master can always write.
ngx_int_t last_id_path(ngx_cycle_t *cycle, ZoneConf *zone, ngx_str_t *path) {
    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(ngx_get_conf(cycle->conf_ctx, ngx_core_module));
    size_t dir = ccf->pid.len;
    while (dir > 0 && ccf->pid.data[dir - 1] != '/') dir--;
    path->len = dir + sizeof("channels-.id") - 1 + zone->name.len;
    path->data = static_cast<u_char *>(ngx_pnalloc(cycle->pool, path->len + 1));
    if (path->data == nullptr) return NGX_ERROR;
    ngx_sprintf(path->data, "%*schannels-%V.id%Z", dir, ccf->pid.data, &zone->name);
    return NGX_OK;
}

void exit_master(ngx_cycle_t *cycle) noexcept {
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr) return;
    auto **zs = static_cast<ZoneConf **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
        ngx_str_t path;
        if (last_id_path(cycle, zs[i], &path) == NGX_OK) store_save_last_id(zs[i], path, cycle->log);
    }
}

// In the master, before workers fork: restore ids of new zones, and make one eventfd per
// worker to wake it.
ngx_int_t init_module(ngx_cycle_t *cycle) noexcept {
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr || mcf->zones.nelts == 0) return NGX_OK;
    auto **zs = static_cast<ZoneConf **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
        ngx_str_t path;
        if (!zs[i]->fresh || zs[i]->redis != nullptr) continue;   // Redis zones take Redis' ids
        if (last_id_path(cycle, zs[i], &path) != NGX_OK) return NGX_ERROR;
        store_load_last_id(zs[i], path, cycle->log);
    }
    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(ngx_get_conf(cycle->conf_ctx, ngx_core_module));
    ngx_uint_t n = ccf->worker_processes > 0 ? ngx_uint_t(ccf->worker_processes) : 1;
    mcf->wake_fds = static_cast<ngx_fd_t *>(ngx_palloc(cycle->pool, n * sizeof(ngx_fd_t)));
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (mcf->wake_fds == nullptr || cln == nullptr) return NGX_ERROR;
    cln->handler = close_wake_fds;
    cln->data = mcf;
    for (ngx_uint_t i = 0; i < n; i++) {
        mcf->wake_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (mcf->wake_fds[i] == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno, "channels: eventfd() failed");
            return NGX_ERROR;
        }
        mcf->nwake_fds = i + 1;
    }
    return NGX_OK;
}

ngx_int_t init_process(ngx_cycle_t *cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return NGX_OK;
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr || mcf->zones.nelts == 0) return NGX_OK;
    return delivery_init_worker(cycle, mcf);
}

void exit_process(ngx_cycle_t *cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return;
    MainConf *mcf = cycle_main_conf(cycle);
    if (mcf != nullptr && mcf->zones.nelts > 0) delivery_exit_worker(mcf);
}

}  // namespace

// ---- request helpers ----

ZoneConf *zone_of(LocConf *lcf) {
    return lcf->shm_zone == nullptr ? nullptr : static_cast<ZoneConf *>(lcf->shm_zone->data);
}

uint64_t now_ms() {
    ngx_time_t *tp = ngx_timeofday();
    return uint64_t(tp->sec) * 1000 + tp->msec;
}

ngx_int_t eval_channels(ngx_http_request_t *r, LocConf *lcf, ChannelArgs &args) {
    auto *cvs = static_cast<ngx_http_complex_value_t *>(lcf->channels->elts);
    for (ngx_uint_t i = 0; i < lcf->channels->nelts; i++) {
        ngx_str_t value;
        if (ngx_http_complex_value(r, &cvs[i], &value) != NGX_OK) return NGX_ERROR;
        auto *decoded = static_cast<char *>(ngx_pnalloc(r->pool, value.len + 1));
        if (decoded == nullptr) return NGX_ERROR;
        size_t len = channels::percent_decode(view(value), decoded);
        args.error = args.list.append({decoded, len});
        if (args.error != channels::ListError::none) return NGX_OK;
    }
    args.error = args.list.finish();
    return NGX_OK;
}

bool subscriber_prelude(ngx_http_request_t *r, ChannelArgs &args, ngx_int_t *rc) {
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        *rc = add_header(r, "Allow", "GET, HEAD") == NGX_OK
                  ? send_text(r, NGX_HTTP_NOT_ALLOWED, "method not allowed")
                  : NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    if (ngx_http_discard_request_body(r) != NGX_OK || eval_channels(r, loc_conf(r), args) != NGX_OK) {
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    if (args.error != channels::ListError::none) {
        *rc = send_text(r, NGX_HTTP_BAD_REQUEST, channels::describe(args.error));
        return false;
    }
    return true;
}

void watch_client_close(ngx_http_request_t *r) {
    r->read_event_handler = ngx_http_test_reading;
    ngx_event_t *rev = r->connection->read;
    if (r == r->main && rev->ready) {
        ngx_post_event(rev, &ngx_posted_events);
    }
}

bool has_arg(ngx_http_request_t *r, std::string_view name) {
    std::string_view args = view(r->args);
    while (!args.empty()) {
        size_t amp = args.find('&');
        std::string_view item = args.substr(0, amp);
        if (item.substr(0, item.find('=')) == name) return true;
        if (amp == std::string_view::npos) break;
        args.remove_prefix(amp + 1);
    }
    return false;
}

ngx_str_t find_header(ngx_http_request_t *r, std::string_view name) {
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part != nullptr; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].key.len == name.size() &&
                ngx_strncasecmp(h[i].key.data, reinterpret_cast<u_char *>(const_cast<char *>(name.data())),
                                name.size()) == 0) {
                return h[i].value;
            }
        }
    }
    return ngx_str_t{0, nullptr};
}

ngx_int_t decoded_arg(ngx_http_request_t *r, std::string_view name, ngx_str_t *value, bool *found) {
    ngx_str_t raw;
    *found = ngx_http_arg(r, reinterpret_cast<u_char *>(const_cast<char *>(name.data())), name.size(),
                          &raw) == NGX_OK;
    if (!*found) return NGX_OK;
    auto *out = static_cast<char *>(ngx_pnalloc(r->pool, raw.len + 1));
    if (out == nullptr) return NGX_ERROR;
    value->len = channels::percent_decode(view(raw), out);
    value->data = reinterpret_cast<u_char *>(out);
    return NGX_OK;
}

bool request_cursor(ngx_http_request_t *r, MessageId *cursor) {
    ngx_str_t text = find_header(r, "Last-Event-ID");
    if (text.len == 0) {
        bool found = false;
        if (decoded_arg(r, "last_event_id", &text, &found) != NGX_OK || !found) return false;
    }
    std::optional<MessageId> id = channels::parse_id(view(text));
    if (!id) return false;
    *cursor = *id;
    return true;
}

ngx_int_t add_header(ngx_http_request_t *r, std::string_view name, std::string_view value) {
    auto *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    auto *mem = static_cast<u_char *>(ngx_pnalloc(r->pool, name.size() + value.size()));
    if (h == nullptr || mem == nullptr) return NGX_ERROR;
    h->hash = 1;
#if defined(nginx_version) && nginx_version >= 1023000
    h->next = nullptr;   // header chains exist from nginx 1.23 on
#endif
    h->key = {name.size(), mem};
    h->value = {value.size(), copy_bytes(mem, name)};
    copy_bytes(h->value.data, value);
    return NGX_OK;
}

ngx_int_t add_cursor_header(ngx_http_request_t *r, MessageId id) {
    char text[channels::kMaxIdText];
    size_t len = channels::format_id(id, text);
    return add_header(r, "Last-Event-ID", {text, len});
}

ngx_int_t send_body(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type,
                    std::string_view body) {
    r->headers_out.status = status;
    r->headers_out.content_length_n = off_t(body.size());
    auto *ct = static_cast<u_char *>(ngx_pnalloc(r->pool, content_type.size()));
    if (ct == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_memcpy(ct, content_type.data(), content_type.size());
    r->headers_out.content_type = {content_type.size(), ct};
    r->headers_out.content_type_len = content_type.size();
    r->headers_out.content_type_lowcase = nullptr;
    if (body.empty()) r->header_only = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, body.size());
    if (b == nullptr) return NGX_ERROR;
    b->last = ngx_cpymem(b->pos, body.data(), body.size());
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out{b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_int_t send_text(ngx_http_request_t *r, ngx_uint_t status, std::string_view line) {
    if (status >= 400 && status < 500) {
        ngx_str_t reason{line.size(), reinterpret_cast<u_char *>(const_cast<char *>(line.data()))};
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "channels: %ui: %V", status, &reason);
    }
    auto *text = static_cast<char *>(ngx_pnalloc(r->pool, line.size() + 1));
    if (text == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_memcpy(text, line.data(), line.size());
    text[line.size()] = '\n';
    return send_body(r, status, "text/plain", {text, line.size() + 1});
}

}  // namespace chn
