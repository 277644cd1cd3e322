// ngx_http_channels_jwt_module: who may subscribe and publish (README "Authorization (JWT)").
//
// A second nginx module in the same .so (config: ngx_module_name lists both), with its own
// directives and location configuration. It runs in the ACCESS phase, where nginx's own
// access modules (allow/deny, auth_basic, auth_request) run, so it composes with them:
// `satisfy any` lets another access module grant a request, and nothing of a channel
// location's content handler runs for a request it refuses.
//
// It answers a refusal itself (one text line, RFC 6750 WWW-Authenticate) and ends the
// request there, as a content handler would, rather than returning the status to nginx,
// whose error page would be HTML. Under `satisfy any` it does return the status (nginx
// must be able to try the other access modules), and the body is nginx's error page.
//
// Verified tokens are kept in a per-worker cache keyed by their SHA-256, so a long-poll
// loop or a reconnecting stream costs a hash and a lookup, not a signature check.

#include "ngx_http_channels_jwt.h"

#include <algorithm>
#include <memory>
#include <new>

#include "channels/jwt.h"
#include "channels/jwt_cache.h"
#include "channels/jwt_keys.h"
#include "ngx_http_channels_request.h"

namespace channels {
namespace {

constexpr ngx_uint_t kAuthOff = 0;
constexpr ngx_uint_t kAuthJwt = 1;
constexpr size_t kMaxKeyFile = 1024 * 1024;
constexpr size_t kCacheEntries = 4096;           // per worker
constexpr size_t kCacheBytes = 4 * 1024 * 1024;  // per worker
constexpr std::string_view kRealm = "Bearer realm=\"channels\"";

// The keys of one configuration level; `id` names it in the cache (never reused).
struct KeySetConf {
    channels::JwtKeySet set;
    uint64_t            id = 0;
};

struct JwtLocConf {
    ngx_uint_t   auth = NGX_CONF_UNSET_UINT;
    KeySetConf  *keys = static_cast<KeySetConf *>(NGX_CONF_UNSET_PTR);
    ngx_str_t    cookie{};
    ngx_str_t    audience{};
    ngx_str_t    issuer{};
};

struct JwtMainConf {
    bool used = false;   // some location has channel_auth jwt: the access handler is installed
};

// What a request that was let in carries on (for $channel_jwt_sub and the transports).
struct JwtCtx {
    uint64_t  expiry_ms = 0;
    ngx_str_t sub{};
    bool      has_sub = false;
};

void *create_main_conf(ngx_conf_t *cf) noexcept;
void *create_loc_conf(ngx_conf_t *cf) noexcept;
char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept;
ngx_int_t preconfiguration(ngx_conf_t *cf) noexcept;
ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept;
char *key_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
ngx_int_t access_handler(ngx_http_request_t *r) noexcept;
ngx_int_t sub_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data) noexcept;

constexpr ngx_uint_t kAnyLevel = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

ngx_conf_enum_t auth_modes[] = {
    {ngx_string("off"), kAuthOff},
    {ngx_string("jwt"), kAuthJwt},
    {ngx_null_string, 0},
};

ngx_command_t commands[] = {
    {ngx_string("channel_auth"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_enum_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(JwtLocConf, auth), auth_modes},
    {ngx_string("channel_jwt_key"), kAnyLevel | NGX_CONF_TAKE1, key_directive, NGX_HTTP_LOC_CONF_OFFSET, 0,
     nullptr},
    {ngx_string("channel_jwt_cookie"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(JwtLocConf, cookie), nullptr},
    {ngx_string("channel_jwt_audience"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(JwtLocConf, audience), nullptr},
    {ngx_string("channel_jwt_issuer"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(JwtLocConf, issuer), nullptr},
    ngx_null_command};

ngx_http_module_t module_ctx = {
    preconfiguration,     // preconfiguration
    postconfiguration,    // postconfiguration
    create_main_conf,     // create main configuration
    nullptr,              // init main configuration
    nullptr,              // create server configuration
    nullptr,              // merge server configuration
    create_loc_conf,      // create location configuration
    merge_loc_conf,       // merge location configuration
};

}  // namespace
}  // namespace channels

extern "C" {
ngx_module_t ngx_http_channels_jwt_module = {
    NGX_MODULE_V1,
    &channels::module_ctx,     // module context
    channels::commands,        // module directives
    NGX_HTTP_MODULE,      // module type
    nullptr,              // init master
    nullptr,              // init module
    nullptr,              // init process
    nullptr,              // init thread
    nullptr,              // exit thread
    nullptr,              // exit process
    nullptr,              // exit master
    NGX_MODULE_V1_PADDING};
}

namespace channels {
namespace {

// ---- configuration ----

template <typename T>
T *pool_new(ngx_pool_t *pool) {
    void *mem = ngx_pcalloc(pool, sizeof(T));
    return mem == nullptr ? nullptr : new (mem) T();
}

// A C++ object in a pool, destroyed with the pool (the key set owns OpenSSL keys).
template <typename T>
T *pool_new_owned(ngx_pool_t *pool) {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, 0);
    T *obj = cln == nullptr ? nullptr : pool_new<T>(pool);
    if (obj == nullptr) return nullptr;
    cln->handler = [](void *data) noexcept { static_cast<T *>(data)->~T(); };
    cln->data = obj;
    return obj;
}

template <typename T>
T *main_conf(ngx_conf_t *cf, ngx_module_t &module) {
    return static_cast<T *>(ngx_http_conf_get_module_main_conf(cf, module));
}

void *create_main_conf(ngx_conf_t *cf) noexcept { return pool_new<JwtMainConf>(cf->pool); }

void *create_loc_conf(ngx_conf_t *cf) noexcept { return pool_new<JwtLocConf>(cf->pool); }

char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept {
    auto *prev = static_cast<JwtLocConf *>(parent);
    auto *conf = static_cast<JwtLocConf *>(child);
    ngx_conf_merge_uint_value(conf->auth, prev->auth, kAuthOff);
    ngx_conf_merge_ptr_value(conf->keys, prev->keys, nullptr);
    ngx_conf_merge_str_value(conf->cookie, prev->cookie, "channels_jwt");
    ngx_conf_merge_str_value(conf->audience, prev->audience, "");
    ngx_conf_merge_str_value(conf->issuer, prev->issuer, "");
    if (conf->auth != kAuthJwt) return NGX_CONF_OK;
    if (conf->keys == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"channel_auth jwt\" needs a \"channel_jwt_key\"");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    main_conf<JwtMainConf>(cf, ngx_http_channels_jwt_module)->used = true;
    return NGX_CONF_OK;
}

// Reads a whole (small) file into out; false with errno-style reason logged by the caller.
bool read_small_file(const ngx_str_t &path, std::string &out, ngx_err_t *err, const char **what) {
    ngx_fd_t fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        *err = ngx_errno;
        *what = "cannot open it";
        return false;
    }
    ngx_file_info_t fi;
    bool ok = ngx_fd_info(fd, &fi) != NGX_FILE_ERROR;
    *err = ok ? 0 : ngx_errno;
    *what = "cannot stat it";
    if (ok && size_t(ngx_file_size(&fi)) > kMaxKeyFile) {
        ok = false;
        *what = "larger than 1 MiB";
    }
    if (ok) {
        out.resize(size_t(ngx_file_size(&fi)));
        size_t got = 0;
        while (got < out.size()) {
            ssize_t n = ngx_read_fd(fd, &out[got], out.size() - got);
            if (n <= 0) {
                *err = n < 0 ? ngx_errno : 0;
                *what = "cannot read it";
                ok = false;
                break;
            }
            got += size_t(n);
        }
    }
    ngx_close_file(fd);
    return ok;
}

// channel_jwt_key FILE;  (repeatable: every key of the level may sign)
char *key_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *lcf = static_cast<JwtLocConf *>(conf);
    static uint64_t next_id = 0;
    try {
        if (lcf->keys == NGX_CONF_UNSET_PTR) {
            lcf->keys = pool_new_owned<KeySetConf>(cf->pool);
            if (lcf->keys == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
            lcf->keys->id = ++next_id;
        }
        ngx_str_t path = static_cast<ngx_str_t *>(cf->args->elts)[1];
        if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) return static_cast<char *>(NGX_CONF_ERROR);
        std::string contents, error;
        ngx_err_t err = 0;
        const char *what = nullptr;
        if (!read_small_file(path, contents, &err, &what)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, err, "%V \"%V\": %s", &cmd->name, &path, what);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
        if (!lcf->keys->set.add_file(contents, error)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V \"%V\": %s", &cmd->name, &path, error.c_str());
            return static_cast<char *>(NGX_CONF_ERROR);
        }
        return NGX_CONF_OK;
    } catch (...) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: out of memory", &cmd->name);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
}

ngx_int_t preconfiguration(ngx_conf_t *cf) noexcept {
    ngx_str_t name = ngx_string("channel_jwt_sub");
    ngx_http_variable_t *var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == nullptr) return NGX_ERROR;
    var->get_handler = sub_variable;
    return NGX_OK;
}

// Runs after every location was merged: the handler is installed only when it is used.
ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept {
    if (!main_conf<JwtMainConf>(cf, ngx_http_channels_jwt_module)->used) return NGX_OK;
    auto *cmcf = main_conf<ngx_http_core_main_conf_t>(cf, ngx_http_core_module);
    ngx_array_t *handlers = &cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers;
    auto *h = static_cast<ngx_http_handler_pt *>(ngx_array_push(handlers));
    if (h == nullptr) return NGX_ERROR;
    *h = access_handler;
    return NGX_OK;
}

// ---- the token ----

JwtLocConf *jwt_conf(ngx_http_request_t *r) {
    return static_cast<JwtLocConf *>(ngx_http_get_module_loc_conf(r, ngx_http_channels_jwt_module));
}

channels::TokenCache &cache() {
    static channels::TokenCache *c = new channels::TokenCache(kCacheEntries, kCacheBytes);
    return *c;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// "Bearer <token>" (the scheme is case-insensitive, RFC 7235); other schemes carry none.
std::string_view bearer_token(ngx_http_request_t *r) {
    if (r->headers_in.authorization == nullptr) return {};
    std::string_view value = trim(view(r->headers_in.authorization->value));
    constexpr std::string_view scheme = "bearer";
    if (value.size() <= scheme.size() || (value[scheme.size()] != ' ' && value[scheme.size()] != '\t') ||
        ngx_strncasecmp(reinterpret_cast<u_char *>(const_cast<char *>(value.data())),
                        reinterpret_cast<u_char *>(const_cast<char *>(scheme.data())), scheme.size()) != 0) {
        return {};
    }
    return trim(value.substr(scheme.size()));
}

std::string_view cookie_token(ngx_http_request_t *r, JwtLocConf *lcf) {
    ngx_str_t value{};
#if defined(nginx_version) && nginx_version >= 1023000
    bool found = ngx_http_parse_cookie_lines(r, r->headers_in.cookie, &lcf->cookie, &value) != nullptr;
#else
    ngx_array_t *cookies = &r->headers_in.cookies;
    bool found = ngx_http_parse_multi_header_lines(cookies, &lcf->cookie, &value) != NGX_DECLINED;
#endif
    return found ? view(value) : std::string_view{};
}

// The first source present (README "Authorization (JWT)"): Authorization: Bearer, the cookie, access_token.
// An empty value counts as absent.
bool find_token(ngx_http_request_t *r, JwtLocConf *lcf, std::string_view *token) {
    *token = bearer_token(r);
    if (token->empty()) *token = cookie_token(r, lcf);
    if (!token->empty()) return true;
    ngx_str_t value{};
    bool found = false;
    if (decoded_arg(r, "access_token", &value, &found) != NGX_OK) throw std::bad_alloc();
    *token = found ? view(value) : std::string_view{};
    return !token->empty();
}

// The claims of a token whose signature verified with the location's keys: from the
// cache when it was seen before, else verified now and kept in the cache (or, when the
// cache does not keep them, in *scratch). nullptr with *err set when it does not verify.
const channels::Claims *verified_claims(ngx_log_t *log, std::string_view token, KeySetConf *keys,
                                        uint64_t now, channels::Claims *scratch, channels::TokenError *err) {
    channels::TokenCache::Digest digest;
    if (!channels::sha256(token, digest.data())) throw std::bad_alloc();
    if (const channels::Claims *hit = cache().find(digest, keys->id, now)) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0, "channels jwt: token from the cache");
        return hit;
    }
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0, "channels jwt: verifying the token");
    channels::Jws jws;
    if ((*err = channels::parse_jws(token, jws)) != channels::TokenError::none ||
        (*err = keys->set.verify(jws)) != channels::TokenError::none ||
        (*err = channels::parse_claims(jws.payload_b64, *scratch)) != channels::TokenError::none) {
        return nullptr;
    }
    const channels::Claims *kept = cache().insert(digest, keys->id, std::move(*scratch), now);
    return kept != nullptr ? kept : scratch;
}

// ---- answers ----

ngx_int_t set_www_authenticate(ngx_http_request_t *r, const char *error) {
    std::string value(kRealm);
    if (error != nullptr) {
        value += ", error=\"";
        value += error;
        value += '"';
    }
    auto *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    auto *mem = static_cast<u_char *>(ngx_pnalloc(r->pool, value.size()));
    if (h == nullptr || mem == nullptr) return NGX_ERROR;
    h->hash = 1;
#if defined(nginx_version) && nginx_version >= 1023000
    h->next = nullptr;
#endif
    ngx_str_set(&h->key, "WWW-Authenticate");
    h->value = {value.size(), mem};
    ngx_memcpy(mem, value.data(), value.size());
    r->headers_out.www_authenticate = h;
    return NGX_OK;
}

// 401 (error nullptr: no token; "invalid_token") or 403 ("insufficient_scope"), one line.
ngx_int_t refuse(ngx_http_request_t *r, ngx_uint_t status, const char *error, std::string_view line) {
    if (set_www_authenticate(r, error) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto *core = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    if (core->satisfy != NGX_HTTP_SATISFY_ALL) {
        ngx_str_t reason{line.size(), reinterpret_cast<u_char *>(const_cast<char *>(line.data()))};
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "channels: %ui: %V", status, &reason);
        return ngx_int_t(status);   // nginx tries the other access modules (satisfy any)
    }
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_http_finalize_request(r, send_text(r, status, line));
    return NGX_DONE;
}

ngx_int_t refuse_token(ngx_http_request_t *r, channels::TokenError err) {
    std::string line = "invalid token: ";
    line.append(channels::describe(err));
    return refuse(r, NGX_HTTP_UNAUTHORIZED, "invalid_token", line);
}

ngx_int_t refuse_channel(ngx_http_request_t *r, std::string_view channel) {
    std::string line = "channel ";
    line.append(channel);
    line += " is not granted by the token";
    return refuse(r, NGX_HTTP_FORBIDDEN, "insufficient_scope", line);
}

// ---- grants ----

// Which grant the location needs (README "Authorization (JWT)"): subscribe for every channel a subscriber
// names, publish for the channel of a publish location (whatever the method), the
// pattern "*" for channel_stats (it lists every channel); other locations only need a
// valid token. A channel list the content handler will refuse (400) is left to it.
ngx_int_t check_grants(ngx_http_request_t *r, const channels::Claims &claims) {
    LocConf *clcf = loc_conf(r);
    if (clcf->role == Role::none) return NGX_OK;
    if (clcf->role == Role::stats) {
        bool all = std::find(claims.subscribe.begin(), claims.subscribe.end(), "*") != claims.subscribe.end();
        return all ? NGX_OK : refuse_channel(r, "*");
    }
    ChannelArgs args;
    if (eval_channels(r, clcf, args) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (args.error != channels::ListError::none) return NGX_OK;
    const std::vector<std::string> &grants = clcf->role == Role::publish ? claims.publish : claims.subscribe;
    for (size_t i = 0; i < args.list.count; i++) {
        if (!channels::is_granted(grants, args.list.ids[i])) return refuse_channel(r, args.list.ids[i]);
    }
    return NGX_OK;
}

ngx_int_t remember(ngx_http_request_t *r, const channels::Claims &claims) {
    auto *ctx = static_cast<JwtCtx *>(ngx_pcalloc(r->pool, sizeof(JwtCtx)));
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->expiry_ms = claims.has_exp ? std::max<uint64_t>(claims.exp_ms, 1) : 0;
    if (claims.has_sub) {
        ctx->sub.len = claims.sub.size();
        ctx->sub.data = static_cast<u_char *>(ngx_pnalloc(r->pool, claims.sub.size() + 1));
        if (ctx->sub.data == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        copy_bytes(ctx->sub.data, claims.sub);
        ctx->has_sub = true;
    }
    ngx_http_set_ctx(r, ctx, ngx_http_channels_jwt_module);
    return NGX_OK;
}

ngx_int_t check_request(ngx_http_request_t *r) {
    JwtLocConf *lcf = jwt_conf(r);
    if (lcf->auth != kAuthJwt) return NGX_DECLINED;
    std::string_view token;
    if (!find_token(r, lcf, &token)) return refuse(r, NGX_HTTP_UNAUTHORIZED, nullptr, "token required");
    if (token.size() > channels::kMaxTokenLen) {
        return refuse(r, NGX_HTTP_UNAUTHORIZED, "invalid_token", "invalid token: longer than 8 KiB");
    }
    uint64_t now = now_ms();
    channels::TokenError err = channels::TokenError::none;
    channels::Claims scratch;
    const channels::Claims *claims =
        verified_claims(r->connection->log, token, lcf->keys, now, &scratch, &err);
    if (claims == nullptr) return refuse_token(r, err);
    channels::ClaimPolicy policy{view(lcf->audience), view(lcf->issuer)};
    if ((err = channels::check_claims(*claims, policy, now)) != channels::TokenError::none) {
        return refuse_token(r, err);
    }
    // The claims live in the cache, which a later request may change: copy what stays.
    if (remember(r, *claims) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    return check_grants(r, *claims);
}

ngx_int_t access_handler(ngx_http_request_t *r) noexcept {
    return guarded(r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [r] { return check_request(r); });
}

JwtCtx *request_ctx(ngx_http_request_t *r) {
    return static_cast<JwtCtx *>(ngx_http_get_module_ctx(r, ngx_http_channels_jwt_module));
}

ngx_int_t sub_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t) noexcept {
    JwtCtx *ctx = request_ctx(r);
    if (ctx == nullptr || !ctx->has_sub) {
        v->not_found = 1;
        return NGX_OK;
    }
    v->data = ctx->sub.data;
    v->len = unsigned(ctx->sub.len);
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    return NGX_OK;
}

}  // namespace

uint64_t auth_expiry_ms(ngx_http_request_t *r) {
    JwtCtx *ctx = request_ctx(r);
    return ctx == nullptr ? 0 : ctx->expiry_ms;
}

ngx_msec_t auth_bounded_wait(ngx_http_request_t *r, ngx_msec_t wait) {
    uint64_t expiry = auth_expiry_ms(r), now = now_ms();
    if (expiry == 0) return wait;
    return expiry <= now ? 0 : ngx_msec_t(std::min<uint64_t>(wait, expiry - now));
}

}  // namespace channels
