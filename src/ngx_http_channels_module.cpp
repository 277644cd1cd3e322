// ngx_http_channels_module: directives, configuration and the module itself. Process hooks
// are in ngx_http_channels_process.cpp.

#include <new>

#include "ngx_http_channels.h"
#include "ngx_http_channels_process.h"
#include "ngx_http_channels_redis.h"
#include "ngx_http_channels_shm.h"

namespace channels {
namespace {

void *ngx_http_channels_create_main_conf(ngx_conf_t *cf) noexcept;
void *ngx_http_channels_create_loc_conf(ngx_conf_t *cf) noexcept;
char *ngx_http_channels_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept;
ngx_int_t ngx_http_channels_postconfiguration(ngx_conf_t *cf) noexcept;

char *ngx_http_channels_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *ngx_http_channels_subscriber(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *ngx_http_channels_publisher(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *ngx_http_channels_stats(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *ngx_http_channels_first_message(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *ngx_http_channels_max_per_request(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;

constexpr ngx_uint_t kLocationConf = NGX_HTTP_LOC_CONF | NGX_HTTP_LIF_CONF;
constexpr ngx_uint_t kAnyLevel = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

ngx_conf_enum_t refusal_log_levels[] = {
    {ngx_string("info"), NGX_LOG_INFO},
    {ngx_string("notice"), NGX_LOG_NOTICE},
    {ngx_string("warn"), NGX_LOG_WARN},
    {ngx_string("error"), NGX_LOG_ERR},
    {ngx_null_string, 0}};

ngx_command_t ngx_http_channels_commands[] = {
    {ngx_string("channel_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, ngx_http_channels_zone,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("channel_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, redis_directive, NGX_HTTP_MAIN_CONF_OFFSET,
     0, nullptr},
    {ngx_string("sse_channel"), kLocationConf | NGX_CONF_1MORE, ngx_http_channels_subscriber,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("longpoll_channel"), kLocationConf | NGX_CONF_1MORE, ngx_http_channels_subscriber,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("publish_channel"), kLocationConf | NGX_CONF_TAKE12, ngx_http_channels_publisher,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("channel_stats"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1, ngx_http_channels_stats,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_ping"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, sse_ping), nullptr},
    {ngx_string("sse_retry"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, sse_retry), nullptr},
    {ngx_string("longpoll_timeout"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(LocConf, longpoll_timeout), nullptr},
    {ngx_string("channel_first_message"), kAnyLevel | NGX_CONF_TAKE1, ngx_http_channels_first_message,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("channel_max_per_request"), kAnyLevel | NGX_CONF_TAKE1, ngx_http_channels_max_per_request,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, max_per_request), nullptr},
    {ngx_string("channel_existing_only"), kAnyLevel | NGX_CONF_FLAG, ngx_conf_set_flag_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, existing_only), nullptr},
    {ngx_string("channel_refusal_log_level"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_enum_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, refusal_log_level), refusal_log_levels},
    ngx_null_command};

ngx_http_module_t ngx_http_channels_module_ctx = {
    nullptr,                                 // preconfiguration
    ngx_http_channels_postconfiguration,     // postconfiguration
    ngx_http_channels_create_main_conf,      // create main configuration
    nullptr,                                 // init main configuration
    nullptr,                                 // create server configuration
    nullptr,                                 // merge server configuration
    ngx_http_channels_create_loc_conf,       // create location configuration
    ngx_http_channels_merge_loc_conf,        // merge location configuration
};

}  // namespace
}  // namespace channels

extern "C" {
ngx_module_t ngx_http_channels_module = {
    NGX_MODULE_V1,
    &channels::ngx_http_channels_module_ctx,   // module context
    channels::ngx_http_channels_commands,      // module directives
    NGX_HTTP_MODULE,                           // module type
    nullptr,                                   // init master
    channels::ngx_http_channels_init_module,   // init module
    channels::ngx_http_channels_init_process,  // init process
    nullptr,                                   // init thread
    nullptr,                                   // exit thread
    channels::ngx_http_channels_exit_process,  // exit process
    channels::ngx_http_channels_exit_master,   // exit master
    NGX_MODULE_V1_PADDING};
}

namespace channels {

FirstMessage first_message(const LocConf *lcf) {
    FirstMessage f;
    if (lcf->first_message == kFirstOldest) {
        f.mode = FirstMessage::Mode::oldest;
    } else if (lcf->first_message > 0) {
        f.mode = FirstMessage::Mode::last;
        f.last = uint32_t(std::min<ngx_int_t>(lcf->first_message, UINT32_MAX));
    }
    return f;
}

ZoneConf *zone_of(const LocConf *lcf) {
    return lcf->shm_zone == nullptr ? nullptr : static_cast<ZoneConf *>(lcf->shm_zone->data);
}

namespace {

// ---- configuration ----

// Objects with C++ members live in the configuration pool; a pool cleanup runs their
// destructor when the cycle goes.
template <typename T, typename... Args>
T *pool_new(ngx_pool_t *pool, Args &&...args) {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, sizeof(T));
    if (cln == nullptr) return nullptr;
    T *obj = new (cln->data) T(std::forward<Args>(args)...);
    cln->handler = [](void *data) noexcept { static_cast<T *>(data)->~T(); };
    return obj;
}

void *ngx_http_channels_create_main_conf(ngx_conf_t *cf) noexcept {
    auto *mcf = pool_new<MainConf>(cf->pool);
    if (mcf == nullptr) return nullptr;
    if (ngx_array_init(&mcf->zones, cf->pool, 2, sizeof(ZoneConf *)) != NGX_OK ||
        ngx_array_init(&mcf->locations, cf->pool, 4, sizeof(LocConf *)) != NGX_OK ||
        ngx_array_init(&mcf->redis, cf->pool, 1, sizeof(RedisConf *)) != NGX_OK) {
        return nullptr;
    }
    return mcf;
}

void *ngx_http_channels_create_loc_conf(ngx_conf_t *cf) noexcept { return pool_new<LocConf>(cf->pool); }

char *ngx_http_channels_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept {
    auto *prev = static_cast<LocConf *>(parent);
    auto *conf = static_cast<LocConf *>(child);
    // An `if` or limit_except block inside a channel location is the same endpoint: a
    // request whose `if` matched runs the outer location's handler with this configuration,
    // and the JWT access check reads its role. (Nested locations are other endpoints.)
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    if (clcf->noname && conf->role == Role::none && prev->role != Role::none) {
        conf->role = prev->role;
        conf->channels = prev->channels;
        conf->shm_zone = prev->shm_zone;
        auto *mcf = static_cast<MainConf *>(ngx_http_conf_get_module_main_conf(cf, ngx_http_channels_module));
        auto **slot = static_cast<LocConf **>(ngx_array_push(&mcf->locations));   // (its zone, if none is named)
        if (slot == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
        *slot = conf;
    }
    ngx_conf_merge_msec_value(conf->sse_ping, prev->sse_ping, 30000);
    ngx_conf_merge_msec_value(conf->sse_retry, prev->sse_retry, 0);
    ngx_conf_merge_msec_value(conf->longpoll_timeout, prev->longpoll_timeout, 30000);
    ngx_conf_merge_value(conf->first_message, prev->first_message, kFirstNewest);
    ngx_conf_merge_value(conf->longpoll_raw, prev->longpoll_raw, 0);
    ngx_conf_merge_uint_value(conf->max_per_request, prev->max_per_request, kMaxChannels);
    ngx_conf_merge_value(conf->existing_only, prev->existing_only, 0);
    ngx_conf_merge_uint_value(conf->refusal_log_level, prev->refusal_log_level, NGX_LOG_ERR);
    return NGX_CONF_OK;
}

char *conf_error() { return static_cast<char *>(NGX_CONF_ERROR); }

bool starts_with(const ngx_str_t &s, std::string_view prefix) { return view(s).substr(0, prefix.size()) == prefix; }

ngx_str_t after_prefix(const ngx_str_t &s, size_t n) { return {s.len - n, s.data + n}; }

char *invalid(ngx_conf_t *cf, ngx_str_t *arg) {
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", arg);
    return conf_error();
}

// channel_zone zone=NAME:SIZE [history=N] [ttl=TIME];
char *ngx_http_channels_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *mcf = static_cast<MainConf *>(conf);
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    auto *zone = pool_new<ZoneConf>(cf->pool);
    if (zone == nullptr) return conf_error();
    ssize_t size = 0;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (starts_with(args[i], "zone=")) {
            ngx_str_t value = after_prefix(args[i], 5);
            auto *colon = static_cast<u_char *>(ngx_strlchr(value.data, value.data + value.len, ':'));
            if (colon == nullptr || colon == value.data) return invalid(cf, &args[i]);
            zone->name = {size_t(colon - value.data), value.data};
            ngx_str_t sz{size_t(value.data + value.len - colon - 1), colon + 1};
            size = ngx_parse_size(&sz);
            if (size == NGX_ERROR) return invalid(cf, &args[i]);
            if (size < ssize_t(8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small", &value);
                return conf_error();
            }
        } else if (starts_with(args[i], "history=")) {
            ngx_str_t value = after_prefix(args[i], 8);
            ngx_int_t n = ngx_atoi(value.data, value.len);
            if (n <= 0) return invalid(cf, &args[i]);
            zone->history = ngx_uint_t(n);
        } else if (starts_with(args[i], "ttl=")) {
            ngx_str_t value = after_prefix(args[i], 4);
            ngx_msec_t ttl = ngx_parse_time(&value, 0);
            if (ttl == ngx_msec_t(NGX_ERROR) || ttl == 0) return invalid(cf, &args[i]);
            zone->ttl = ttl;
        } else {
            return invalid(cf, &args[i]);
        }
    }
    if (zone->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"zone\" parameter", &cmd->name);
        return conf_error();
    }
    zone->shm_zone = ngx_shared_memory_add(cf, &zone->name, size, &ngx_http_channels_module);
    if (zone->shm_zone == nullptr) return conf_error();
    if (zone->shm_zone->data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate channel_zone \"%V\"", &zone->name);
        return conf_error();
    }
    zone->shm = pool_new<ShmStore>(cf->pool, zone->shm_zone, zone->name, zone->history, zone->ttl);
    if (zone->shm == nullptr) return conf_error();
    zone->store = zone->shm;
    zone->index = mcf->zones.nelts;
    zone->shm_zone->init = ngx_http_channels_init_zone;
    zone->shm_zone->data = zone;
    auto **slot = static_cast<ZoneConf **>(ngx_array_push(&mcf->zones));
    if (slot == nullptr) return conf_error();
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
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = handler;
    auto *mcf = static_cast<MainConf *>(ngx_http_conf_get_module_main_conf(cf, ngx_http_channels_module));
    auto **slot = static_cast<LocConf **>(ngx_array_push(&mcf->locations));
    if (slot == nullptr) return conf_error();
    *slot = lcf;
    return NGX_CONF_OK;
}

// "$name" or "${name}": the whole argument is one variable, which may hold a list.
bool is_one_variable(std::string_view arg) {
    if (arg.size() < 2 || arg[0] != '$') return false;
    arg.remove_prefix(1);
    if (arg.front() == '{') {
        if (arg.size() < 3 || arg.back() != '}') return false;
        arg = arg.substr(1, arg.size() - 2);
    }
    for (char c : arg) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
    }
    return true;
}

char *add_channel_value(ngx_conf_t *cf, LocConf *lcf, ngx_str_t *value) {
    if (lcf->channels == nullptr) {
        lcf->channels = ngx_array_create(cf->pool, 2, sizeof(ChannelValue));
        if (lcf->channels == nullptr) return conf_error();
    }
    auto *cv = static_cast<ChannelValue *>(ngx_array_push(lcf->channels));
    if (cv == nullptr) return conf_error();
    cv->list = is_one_variable(view(*value));
    if (ngx_strlchr(value->data, value->data + value->len, '$') == nullptr) {
        ChannelList check;   // a literal is one channel id: checked now, not per request
        if (check.append_one(view(*value)) != ListError::none) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid channel id \"%V\"", value);
            return conf_error();
        }
    }
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = &cv->value;
    return ngx_http_compile_complex_value(&ccv) == NGX_OK ? NGX_CONF_OK : conf_error();
}

// sse_channel CHANNEL... [zone=NAME];  longpoll_channel CHANNEL... [zone=NAME] [format=json|raw];
char *ngx_http_channels_subscriber(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    bool sse = view(cmd->name) == "sse_channel";
    char *rc = register_location(cf, lcf, sse ? Role::sse : Role::longpoll,
                                 sse ? ngx_http_channels_sse_handler : ngx_http_channels_longpoll_handler);
    if (rc != NGX_CONF_OK) return rc;
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (parse_zone_arg(cf, args[i], lcf)) continue;
        if (!sse && starts_with(args[i], "format=")) {
            std::string_view format = view(args[i]).substr(7);
            if (format != "json" && format != "raw") return invalid(cf, &args[i]);
            lcf->longpoll_raw = format == "raw";
            continue;
        }
        if (add_channel_value(cf, lcf, &args[i]) != NGX_CONF_OK) return conf_error();
    }
    if (lcf->channels == nullptr) return const_cast<char *>("needs a channel");
    return NGX_CONF_OK;
}

// publish_channel CHANNEL [zone=NAME];
char *ngx_http_channels_publisher(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    char *rc = register_location(cf, lcf, Role::publish, ngx_http_channels_publish_handler);
    if (rc != NGX_CONF_OK) return rc;
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (parse_zone_arg(cf, args[i], lcf)) continue;
        if (lcf->channels != nullptr) return const_cast<char *>("takes one channel");
        if (add_channel_value(cf, lcf, &args[i]) != NGX_CONF_OK) return conf_error();
    }
    if (lcf->channels == nullptr) return const_cast<char *>("needs a channel");
    return NGX_CONF_OK;
}

// channel_stats [zone=NAME];
char *ngx_http_channels_stats(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    char *rc = register_location(cf, lcf, Role::stats, ngx_http_channels_stats_handler);
    if (rc != NGX_CONF_OK) return rc;
    auto *args = static_cast<ngx_str_t *>(cf->args->elts);
    if (cf->args->nelts == 2 && !parse_zone_arg(cf, args[1], lcf)) return invalid(cf, &args[1]);
    return NGX_CONF_OK;
}

// channel_first_message newest|oldest|-N;
char *ngx_http_channels_first_message(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<LocConf *>(conf);
    if (lcf->first_message != NGX_CONF_UNSET) return const_cast<char *>("is duplicate");
    auto *value = &static_cast<ngx_str_t *>(cf->args->elts)[1];
    std::string_view v = view(*value);
    if (v == "newest") {
        lcf->first_message = kFirstNewest;
    } else if (v == "oldest") {
        lcf->first_message = kFirstOldest;
    } else if (v.size() > 1 && v[0] == '-' && ngx_atoi(value->data + 1, value->len - 1) > 0) {
        lcf->first_message = ngx_atoi(value->data + 1, value->len - 1);
    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid value \"%V\", expected newest, oldest or -N", value);
        return conf_error();
    }
    return NGX_CONF_OK;
}

// channel_max_per_request N;  (1..64)
char *ngx_http_channels_max_per_request(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    char *rc = ngx_conf_set_num_slot(cf, cmd, conf);
    if (rc != NGX_CONF_OK) return rc;
    ngx_uint_t n = static_cast<LocConf *>(conf)->max_per_request;
    if (n < 1 || n > kMaxChannels) return const_cast<char *>("must be between 1 and 64");
    return NGX_CONF_OK;
}

// Gives locations without zone= the only zone, checks every named zone exists, and puts
// Redis in front of the zones joined to it.
ngx_int_t ngx_http_channels_postconfiguration(ngx_conf_t *cf) noexcept {
    auto *mcf = static_cast<MainConf *>(ngx_http_conf_get_module_main_conf(cf, ngx_http_channels_module));
    if (redis_bind_zones(cf, mcf) != NGX_OK) return NGX_ERROR;
    auto **locs = static_cast<LocConf **>(mcf->locations.elts);
    auto **zones = static_cast<ZoneConf **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->locations.nelts; i++) {
        LocConf *lcf = locs[i];
        if (lcf->shm_zone == nullptr) {
            if (lcf->role == Role::stats) continue;   // all zones
            if (mcf->zones.nelts != 1) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              mcf->zones.nelts == 0 ? "channels: no \"channel_zone\" is defined"
                                                    : "channels: several channel_zones exist; name one with zone=");
                return NGX_ERROR;
            }
            lcf->shm_zone = zones[0]->shm_zone;
        }
        if (lcf->shm_zone->data == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "channels: unknown channel_zone \"%V\"", &lcf->shm_zone->shm.name);
            return NGX_ERROR;
        }
    }
    return NGX_OK;
}

}  // namespace
}  // namespace channels
