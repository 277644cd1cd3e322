// Parked long-poll requests (see ngx_http_channels_longpoll_park.h).
//
// The image is one heap block: fixed fields, then its parts back to back (the request and
// header lines, the final URI, args and extension, the virtual server's name, the regex
// captures, the evaluated variables, the pipelined bytes). Strings and variable values
// that lie in the request line or a header value ($args, $http_x, $arg_x, captures of the
// URI, ...) are not copied again: they are kept as offsets into the saved lines, so a
// parked request never holds its (client-sized) header bytes twice. Re-creating copies
// the parts into the new request's pool (nginx keeps pointers into the header lines), so
// the image is freed as soon as the request exists again.

#include "ngx_http_channels_longpoll_park.h"


#include <algorithm>
#include <cstdlib>

namespace channels {
namespace {

constexpr ngx_msec_t kDefaultParkAfter = 1000;
constexpr uint64_t kTrimAfter = 256;               // parks since the heap was last trimmed

enum Part : unsigned { text, uri, args, exten, server, captures, captures_data, variables, pipelined, nparts };

// One evaluated variable in the image (then its bytes, unless in_lines: its value lies in
// the saved request line or a header value, at offset in the text part).
struct VariableRecord {
    uint32_t index;
    uint32_t len;
    uint32_t offset;
    uint8_t  valid : 1, no_cacheable : 1, not_found : 1, escape : 1, in_lines : 1;
};

}  // namespace

struct ParkedRequest {
    ngx_connection_t      *connection;
    ngx_http_connection_t *http_connection;
    void                  *owner;
    ParkGone               gone;
    void                 **main_conf;
    void                 **srv_conf;
    void                 **loc_conf;
    time_t                 start_sec;
    ngx_msec_t             start_msec;
    off_t                  request_length;
    off_t                  content_length_n;
    time_t                 keep_alive_n;
    size_t                 limit_rate;
    size_t                 limit_rate_after;
    uint32_t               lens[nparts];
    uint32_t               nvariables;
    uint16_t               port;
    uint16_t               absent;   // bit k: part k (a string) had no data pointer (not even empty)
    uint16_t               in_lines; // bit k: part k is not copied, it lies in the text part at
    uint32_t               line_offset[nparts];   // this offset, with this length
    uint32_t               line_len[nparts];
    unsigned               keepalive : 1;
    unsigned               lingering_close : 1;
    unsigned               pipeline : 1;
    unsigned               internal : 1;
    unsigned               error_page : 1;
    unsigned               expect_tested : 1;
    unsigned               limit_rate_set : 1;
    unsigned               limit_rate_after_set : 1;
    unsigned               limit_conn_status : 2;
    unsigned               limit_req_status : 3;
    unsigned               uri_changes : 4;
    unsigned               host_in_line : 1;   // the request line named the host (absolute URI)
    u_char                 data[1];

    size_t offset(Part k) const {
        size_t off = 0;
        for (unsigned i = 0; i < k; i++) off += lens[i];
        return off;
    }
    u_char *part(Part k) { return data + offset(k); }
    size_t size() const { return offset(nparts); }
};

namespace {

struct Settings {
    bool       read = false;
    bool       verbose = false;   // a test set the delay: tell each park and re-creation
    ngx_msec_t after = kDefaultParkAfter;
};

Settings settings;
ngx_event_handler_pt request_handler;   // nginx's (static) handler of a request's events
uint64_t parks_since_trim;

const Settings &configured() {
    if (!settings.read) {
        settings.read = true;
        if (const char *env = getenv("CHANNELS_PARK_AFTER"); env != nullptr && *env != '\0') {
            settings.after = ngx_msec_t(strtoul(env, nullptr, 10));
            settings.verbose = true;
        }
    }
    return settings;
}

// A saved string as it was: $args of a request without arguments is "not found", not "".
// memcpy() must not be given a null pointer, even for no bytes.
u_char *put(u_char *dst, const void *src, size_t n) { return n == 0 ? dst : ngx_cpymem(dst, src, n); }

u_char *part_data(ParkedRequest *p, Part k, u_char *base) {
    return (p->in_lines & (1u << k)) ? base + p->offset(text) + p->line_offset[k] : base + p->offset(k);
}

ngx_str_t saved(ParkedRequest *p, Part k, u_char *base) {
    size_t len = (p->in_lines & (1u << k)) ? p->line_len[k] : p->lens[k];
    return {len, (p->absent & (1u << k)) ? nullptr : part_data(p, k, base)};
}

uint16_t absent_bit(const ngx_str_t &s, Part k) { return s.data == nullptr ? uint16_t(1u << k) : 0; }

// ---- what may park ----

bool only_owner_cleanup(ngx_http_request_t *r, void *owner) {
    for (ngx_http_cleanup_t *cln = r->cleanup; cln != nullptr; cln = cln->next) {
        if (cln->handler != nullptr && cln->data != owner) return false;
    }
    return true;
}

// The context a request is created with: Debian's nginx counts header lines in a module's
// context made by ngx_http_alloc_request() (a re-created request gets its own).
ngx_uint_t creation_context(ngx_cycle_t *cycle) {
    static ngx_cycle_t *seen;
    static ngx_uint_t index;
    if (seen != cycle) {
        seen = cycle;
        index = NGX_CONF_UNSET_UINT;
        for (ngx_uint_t i = 0; cycle->modules[i] != nullptr; i++) {
            ngx_module_t *m = cycle->modules[i];
            if (m->type == NGX_HTTP_MODULE && ngx_strcmp(m->name, "ngx_http_header_count_module") == 0) {
                index = m->ctx_index;
            }
        }
    }
    return index;
}

bool no_module_context(ngx_http_request_t *r) {
    ngx_uint_t created = creation_context(const_cast<ngx_cycle_t *>(ngx_cycle));
    for (ngx_uint_t i = 0; i < ngx_http_max_module; i++) {
        if (r->ctx[i] != nullptr && i != created) return false;
    }
    return true;
}

// The request is idle (nothing on its way in or out, no timer of nginx's armed), plain
// HTTP/1.x, and nothing but the waiter holds state in it that a re-created request would
// not have.
bool may_park(ngx_http_request_t *r, void *owner) {
    ngx_connection_t *c = r->connection;
    if (r != r->main || r->count != 1 || r->http_version < NGX_HTTP_VERSION_10 ||
        r->http_version > NGX_HTTP_VERSION_11) {
        return false;
    }
#if (NGX_HTTP_V2)
    if (r->stream != nullptr) return false;
#endif
    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked || r->discard_body || r->blocked ||
        r->buffered || r->postponed != nullptr || r->posted_requests != nullptr || c->buffered || c->error) {
        return false;
    }
    if (r->pool->cleanup != nullptr || !only_owner_cleanup(r, owner) || !no_module_context(r)) return false;
    if (c->read->timer_set || c->write->timer_set || c->write->delayed || c->buffer == nullptr) return false;
    if (c->read->handler != c->write->handler ||
        (request_handler != nullptr && request_handler != c->read->handler)) {
        return false;
    }
    if (r->header_in->last - r->header_in->pos > c->buffer->end - c->buffer->start) return false;
#if (NGX_HTTP_SSL) && defined(OPENSSL_VERSION_NUMBER) && OPENSSL_VERSION_NUMBER >= 0x10100000L
    if (c->ssl != nullptr && SSL_has_pending(c->ssl->connection)) return false;
#endif
    return true;
}

// ---- the image ----

size_t lines_size(ngx_http_request_t *r) {
    size_t n = r->request_line.len + 2 + 2;
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part != nullptr; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) n += h[i].key.len + 2 + h[i].value.len + 2;
    }
    return n;
}

// The request line and header lines as nginx parsed them (so they parse the same again).
u_char *write_lines(ngx_http_request_t *r, u_char *p) {
    p = ngx_cpymem(p, r->request_line.data, r->request_line.len);
    *p++ = CR;
    *p++ = LF;
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part != nullptr; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            p = ngx_cpymem(p, h[i].key.data, h[i].key.len);
            *p++ = ':';
            *p++ = ' ';
            p = put(p, h[i].value.data, h[i].value.len);
            *p++ = CR;
            *p++ = LF;
        }
    }
    *p++ = CR;
    *p++ = LF;
    return p;
}

// Where bytes of the request line or of a header value are in the lines write_lines()
// writes; -1: elsewhere. Variables such as $http_x, $arg_x or $cookie_x point there: the
// image keeps them as references, not as copies of (attacker-sized) header bytes.
int64_t offset_in_lines(ngx_http_request_t *r, const u_char *data, size_t len) {
    auto within = [data, len](const ngx_str_t &s) {
        auto at = uintptr_t(data), from = uintptr_t(s.data);
        return s.data != nullptr && data != nullptr && at >= from && at + len <= from + s.len;
    };
    if (within(r->request_line)) return int64_t(data - r->request_line.data);
    size_t at = r->request_line.len + 2;
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part != nullptr; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            at += h[i].key.len + 2;
            if (within(h[i].value)) return int64_t(at + size_t(data - h[i].value.data));
            at += h[i].value.len + 2;
        }
    }
    return -1;
}

ngx_uint_t nvariables(ngx_http_request_t *r) {
    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_http_core_module));
    return cmcf->variables.nelts;
}

// Variables already evaluated (cached, set, or regex captures): a re-created request
// must see the values the request saw, not evaluate them again.
size_t variables_size(ngx_http_request_t *r, uint32_t *count) {
    size_t n = 0;
    *count = 0;
    for (ngx_uint_t i = 0, end = nvariables(r); i < end; i++) {
        const ngx_http_variable_value_t &v = r->variables[i];
        if (!v.valid && !v.not_found) continue;
        n += sizeof(VariableRecord) + (offset_in_lines(r, v.data, v.len) < 0 ? v.len : 0);
        (*count)++;
    }
    return n;
}

void write_variables(ngx_http_request_t *r, u_char *p) {
    for (ngx_uint_t i = 0, end = nvariables(r); i < end; i++) {
        const ngx_http_variable_value_t &v = r->variables[i];
        if (!v.valid && !v.not_found) continue;
        VariableRecord rec{};
        rec.index = uint32_t(i);
        rec.len = v.len;
        rec.valid = v.valid;
        rec.no_cacheable = v.no_cacheable;
        rec.not_found = v.not_found;
        rec.escape = v.escape;
        int64_t at = offset_in_lines(r, v.data, v.len);
        rec.in_lines = at >= 0;
        rec.offset = at >= 0 ? uint32_t(at) : 0;
        p = ngx_cpymem(p, &rec, sizeof(rec));
        if (at < 0) p = put(p, v.data, v.len);
    }
}

// Bytes of the subject the captures point into (they are offsets; -1: a group that did
// not match).
size_t captured_bytes(ngx_http_request_t *r) {
    int end = 0;
    for (ngx_uint_t i = 0; i < r->ncaptures; i++) end = std::max(end, r->captures[i]);
    return size_t(end);
}

ParkedRequest *build_image(ngx_http_request_t *r) {
    uint32_t lens[nparts];
    int64_t at[nparts];
    uint32_t nvars = 0;
    // The strings: copied, or (most often: the URI, its arguments, the captures) where
    // they lie in the request line or a header value.
    const u_char *from[nparts] = {};
    auto string_part = [&](Part k, const u_char *data, size_t len) {
        from[k] = data;
        at[k] = len > 0 ? offset_in_lines(r, data, len) : -1;
        lens[k] = uint32_t(at[k] >= 0 ? 0 : len);
        return uint32_t(len);
    };
    uint32_t string_len[nparts] = {};
    lens[text] = uint32_t(lines_size(r));
    string_len[uri] = string_part(uri, r->uri.data, r->uri.len);
    string_len[args] = string_part(args, r->args.data, r->args.len);
    string_len[exten] = string_part(exten, r->exten.data, r->exten.len);
    string_len[server] = string_part(server, r->headers_in.server.data, r->headers_in.server.len);
    // A regex without groups leaves ncaptures set and no captures.
    ngx_uint_t ncaptures = r->captures != nullptr ? r->ncaptures : 0;
    lens[captures] = uint32_t(ncaptures * sizeof(int));
    string_len[captures_data] = string_part(captures_data, r->captures_data, ncaptures > 0 ? captured_bytes(r) : 0);
    lens[variables] = uint32_t(variables_size(r, &nvars));
    lens[pipelined] = uint32_t(r->header_in->last - r->header_in->pos);
    size_t total = 0;
    for (uint32_t len : lens) total += len;
    auto *p = static_cast<ParkedRequest *>(ngx_alloc(offsetof(ParkedRequest, data) + total, r->connection->log));
    if (p == nullptr) return nullptr;
    ngx_memzero(p, offsetof(ParkedRequest, data));
    ngx_memcpy(p->lens, lens, sizeof(lens));
    p->nvariables = nvars;
    write_lines(r, p->part(text));
    p->absent = absent_bit(r->uri, uri) | absent_bit(r->args, args) | absent_bit(r->exten, exten) |
                absent_bit(r->headers_in.server, server);
    for (Part k : {uri, args, exten, server, captures_data}) {
        if (at[k] >= 0) {
            p->in_lines |= uint16_t(1u << k);
            p->line_offset[k] = uint32_t(at[k]);
            p->line_len[k] = string_len[k];
        } else {
            put(p->part(k), from[k], lens[k]);
        }
    }
    put(p->part(captures), r->captures, lens[captures]);
    write_variables(r, p->part(variables));
    put(p->part(pipelined), r->header_in->pos, lens[pipelined]);
    return p;
}

// The request's own state that its configuration does not give back.
void save_state(ngx_http_request_t *r, ParkedRequest *p) {
    p->connection = r->connection;
    p->http_connection = static_cast<ngx_http_connection_t *>(r->http_connection);
    p->main_conf = r->main_conf;
    p->srv_conf = r->srv_conf;
    p->loc_conf = r->loc_conf;
    p->start_sec = r->start_sec;
    p->start_msec = r->start_msec;
    p->request_length = r->request_length;
    p->content_length_n = r->headers_in.content_length_n;
    p->keep_alive_n = r->headers_in.keep_alive_n;
    p->limit_rate = r->limit_rate;
    p->limit_rate_after = r->limit_rate_after;
#if defined(nginx_version) && nginx_version >= 1029003
    p->port = r->port;
#endif
    p->keepalive = r->keepalive;
    p->lingering_close = r->lingering_close;
    p->pipeline = r->pipeline;
    p->internal = r->internal;
    p->error_page = r->error_page;
    p->expect_tested = r->expect_tested;
    p->limit_rate_set = r->limit_rate_set;
    p->limit_rate_after_set = r->limit_rate_after_set;
    p->limit_conn_status = r->limit_conn_status;
    p->limit_req_status = r->limit_req_status;
    p->uri_changes = r->uri_changes;
    p->host_in_line = r->host_end != nullptr;
}

void restore_state(ngx_http_request_t *r, const ParkedRequest *p) {
    r->start_sec = p->start_sec;
    r->start_msec = p->start_msec;
    r->request_length = p->request_length;
    r->headers_in.content_length_n = p->content_length_n;
    r->headers_in.keep_alive_n = p->keep_alive_n;
    r->limit_rate = p->limit_rate;
    r->limit_rate_after = p->limit_rate_after;
#if defined(nginx_version) && nginx_version >= 1029003
    r->port = p->port;
#endif
    r->keepalive = p->keepalive;
    r->lingering_close = p->lingering_close;
    r->pipeline = p->pipeline;
    r->internal = p->internal;
    r->error_page = p->error_page;
    r->expect_tested = p->expect_tested;
    r->limit_rate_set = p->limit_rate_set;
    r->limit_rate_after_set = p->limit_rate_after_set;
    r->limit_conn_status = p->limit_conn_status;
    r->limit_req_status = p->limit_req_status;
    r->uri_changes = p->uri_changes;
    r->valid_location = 1;
    r->http_state = NGX_HTTP_PROCESS_REQUEST_STATE;
}

// ---- parking ----

void replace_node(ngx_queue_t *old, ngx_queue_t *node) {
    ngx_queue_insert_after(old, node);
    ngx_queue_remove(old);
}

// As for an idle keep-alive connection: the header buffers go (c->buffer keeps its size
// in start and end, pos == nullptr telling it was freed), and TLS's send buffer.
void release_buffers(ngx_connection_t *c, ngx_http_connection_t *hc) {
    for (ngx_chain_t **list : {&hc->free, &hc->busy}) {
        for (ngx_chain_t *cl = *list; cl != nullptr;) {
            ngx_chain_t *ln = cl;
            cl = cl->next;
            ngx_pfree(c->pool, ln->buf->start);
            ngx_free_chain(c->pool, ln);
        }
        *list = nullptr;
    }
    hc->nbusy = 0;
    ngx_buf_t *b = c->buffer;
    if (ngx_pfree(c->pool, b->start) == NGX_OK) {
        b->pos = nullptr;
    } else {
        b->pos = b->last = b->start;
    }
#if (NGX_HTTP_SSL)
    if (c->ssl != nullptr) ngx_ssl_free_buffer(c);
#endif
}

// Freed requests leave holes in the heap that glibc does not give back by itself.
void count_park() {
    if (++parks_since_trim < kTrimAfter) return;
    parks_since_trim = 0;
    delivery_trim_heap_later();
}

void parked_read(ngx_event_t *rev) noexcept;

// ---- re-creating ----

void close_parked(ngx_connection_t *c) {
#if (NGX_STAT_STUB)
    (void) ngx_atomic_fetch_add(ngx_stat_writing, -1);   // it was counted while parked
#endif
    ngx_http_close_connection(c);
}

// c->buffer back, as the keep-alive handler gets it back, with the pipelined bytes.
bool restore_buffer(ngx_connection_t *c, ParkedRequest *p) {
    ngx_buf_t *b = c->buffer;
    if (b->pos == nullptr) {
        size_t size = size_t(b->end - b->start);
        auto *mem = static_cast<u_char *>(ngx_palloc(c->pool, size));
        if (mem == nullptr) return false;
        b->start = mem;
        b->end = mem + size;
    }
    b->pos = b->start;
    b->last = put(b->start, p->part(pipelined), p->lens[pipelined]);
    return true;
}

ngx_http_request_t *recreate(ParkedRequest *p) {
    ngx_connection_t *c = p->connection;
    if (!restore_buffer(c, p)) {
        close_parked(c);
        return nullptr;
    }
    c->data = p->http_connection;
    ngx_http_request_t *r = ngx_http_create_request(c);
    if (r == nullptr) {
        close_parked(c);
        return nullptr;
    }
    // Counted once already: as a request of the connection, and as writing while parked.
    c->requests--;
#if (NGX_STAT_STUB)
    (void) ngx_atomic_fetch_add(ngx_stat_reading, -1);
    (void) ngx_atomic_fetch_add(ngx_stat_requests, -1);
#endif
    r->stat_reading = 0;
    r->stat_writing = 1;
    c->data = r;
    c->read->handler = request_handler;
    c->write->handler = request_handler;
    c->log->action = nullptr;
    return r;
}

// Parses the saved lines as ngx_http_process_request_line() and _headers() parsed them.
// NGX_ERROR: nginx finalized the request itself (it cannot, for lines it accepted once),
// or memory was short.
ngx_int_t reparse(ngx_http_request_t *r, u_char *lines, size_t len) {
    ngx_buf_t b;
    ngx_memzero(&b, sizeof(b));
    b.start = b.pos = lines;
    b.last = b.end = lines + len;
    b.temporary = 1;
    if (ngx_http_parse_request_line(r, &b) != NGX_OK) return NGX_DECLINED;
    r->request_line.len = size_t(r->request_end - r->request_start);
    r->request_line.data = r->request_start;
    r->method_name.len = size_t(r->method_end - r->request_start + 1);
    r->method_name.data = r->request_line.data;
    if (r->http_protocol.data != nullptr) r->http_protocol.len = size_t(r->request_end - r->http_protocol.data);
    if (ngx_http_process_request_uri(r) != NGX_OK) return NGX_ERROR;
    if (r->schema_end != nullptr) {
        r->schema.len = size_t(r->schema_end - r->schema_start);
        r->schema.data = r->schema_start;
    }
    if (ngx_list_init(&r->headers_in.headers, r->pool, 20, sizeof(ngx_table_elt_t)) != NGX_OK) return NGX_DECLINED;
    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_http_core_module));
    for (;;) {
        // The Host header may have changed the server configuration, as when first read.
        auto *cscf = static_cast<ngx_http_core_srv_conf_t *>(ngx_http_get_module_srv_conf(r, ngx_http_core_module));
        ngx_int_t rc = ngx_http_parse_header_line(r, &b, cscf->underscores_in_headers);
        if (rc == NGX_HTTP_PARSE_HEADER_DONE) return NGX_OK;
        if (rc != NGX_OK) return NGX_DECLINED;
        if (r->invalid_header && cscf->ignore_invalid_headers) continue;
        auto *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_in.headers));
        if (h == nullptr) return NGX_DECLINED;
        h->hash = r->header_hash;
        h->key.len = size_t(r->header_name_end - r->header_name_start);
        h->key.data = r->header_name_start;
        h->key.data[h->key.len] = '\0';
        h->value.len = size_t(r->header_end - r->header_start);
        h->value.data = r->header_start;
        h->value.data[h->value.len] = '\0';
        h->lowcase_key = static_cast<u_char *>(ngx_pnalloc(r->pool, h->key.len));
        if (h->lowcase_key == nullptr) return NGX_DECLINED;
        if (h->key.len == r->lowcase_index) {
            ngx_memcpy(h->lowcase_key, r->lowcase_header, h->key.len);
        } else {
            ngx_strlow(h->lowcase_key, h->key.data, h->key.len);
        }
        auto *hh = static_cast<ngx_http_header_t *>(
            ngx_hash_find(&cmcf->headers_in_hash, h->hash, h->lowcase_key, h->key.len));
        if (hh != nullptr && hh->handler(r, h, hh->offset) != NGX_OK) return NGX_ERROR;
    }
}

bool restore_captures(ngx_http_request_t *r, ParkedRequest *p, u_char *base) {
    size_t n = p->lens[captures] / sizeof(int);
    if (n == 0) return true;
    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_http_core_module));
    // As large as a later regex match on this request expects.
    r->captures = static_cast<int *>(ngx_palloc(r->pool, std::max(n, size_t(cmcf->ncaptures)) * sizeof(int)));
    if (r->captures == nullptr) return false;
    ngx_memcpy(r->captures, base + p->offset(captures), n * sizeof(int));
    r->ncaptures = n;
    r->captures_data = part_data(p, captures_data, base);
    return true;
}

void restore_variables(ngx_http_request_t *r, ParkedRequest *p, u_char *base) {
    u_char *at = base + p->offset(variables);
    for (uint32_t i = 0; i < p->nvariables; i++) {
        VariableRecord rec;
        ngx_memcpy(&rec, at, sizeof(rec));
        at += sizeof(rec);
        ngx_http_variable_value_t &v = r->variables[rec.index];
        v.len = rec.len;
        v.valid = rec.valid;
        v.no_cacheable = rec.no_cacheable;
        v.not_found = rec.not_found;
        v.escape = rec.escape;
        if (rec.in_lines) {
            v.data = base + p->offset(text) + rec.offset;
        } else {
            v.data = at;
            at += rec.len;
        }
    }
}

// The request as it was when parked; NGX_ERROR: it was finalized (here or by nginx).
ngx_int_t restore(ngx_http_request_t *r, ParkedRequest *p) {
    size_t size = p->offset(pipelined);   // everything but the pipelined bytes (in c->buffer)
    auto *base = static_cast<u_char *>(ngx_pnalloc(r->pool, size));
    if (base == nullptr) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_ERROR;
    }
    ngx_memcpy(base, p->data, size);
    // Header lines are read with the server chosen so far, as when first read: the default
    // one, then Host's; or, from the start, the one an absolute request URI named, which
    // Host does not change (it must not look the server up again: 421 if TLS client
    // verification is on and Host names another server than SNI's).
    if (p->host_in_line) {
        r->headers_in.server = saved(p, server, base);
        r->srv_conf = p->srv_conf;
        r->loc_conf = p->loc_conf;
    }
    ngx_int_t rc = reparse(r, base, p->lens[text]);
    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "channels: a parked request could not be re-created");
        ngx_http_finalize_request(r, NGX_ERROR);
    }
    if (rc != NGX_OK) return NGX_ERROR;
    r->main_conf = p->main_conf;
    r->srv_conf = p->srv_conf;
    r->loc_conf = p->loc_conf;
    r->uri = saved(p, uri, base);
    r->args = saved(p, args, base);
    r->exten = saved(p, exten, base);
    r->headers_in.server = saved(p, server, base);
    ngx_http_update_location_config(r);   // the location's error_log for the connection
    restore_state(r, p);                   // after it: its keep-alive decision was taken then
    restore_variables(r, p, base);
    if (!restore_captures(r, p, base)) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_ERROR;
    }
    r->header_in = r->connection->buffer;
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
    return NGX_OK;
}

// The client went away while parked (or the worker closes the connection): the owner lets
// go, and the request is re-created to be finalized as nginx would have (logged with rc).
void end_parked(ParkedRequest *p, ngx_int_t rc) {
    ngx_connection_t *c = p->connection;
    p->gone(p->owner);
    ngx_http_request_t *r = unpark_request(p);
    if (r != nullptr) ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

// As ngx_http_test_reading() watches a waiting request: true once the client has gone.
// Bytes it sends meanwhile are left in the kernel (the next request, after the answer).
bool client_gone(ngx_connection_t *c, ngx_err_t *err) {
    ngx_event_t *rev = c->read;
#if (NGX_HAVE_KQUEUE)
    if (ngx_event_flags & NGX_USE_KQUEUE_EVENT) {
        if (!rev->pending_eof) return false;
        rev->eof = 1;
        c->error = 1;
        *err = rev->kq_errno;
        return true;
    }
#endif
#if (NGX_HAVE_EPOLLRDHUP)
    if ((ngx_event_flags & NGX_USE_EPOLL_EVENT) && ngx_use_epoll_rdhup) {
        if (!rev->pending_eof) return false;
        rev->eof = 1;
        c->error = 1;
        socklen_t len = sizeof(ngx_err_t);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, static_cast<void *>(err), &len) == -1) *err = ngx_socket_errno;
        return true;
    }
#endif
    char buf[1];
    ssize_t n = recv(c->fd, buf, 1, MSG_PEEK);
    if (n == 0 || (n == -1 && ngx_socket_errno != NGX_EAGAIN)) {
        if (n == -1) *err = ngx_socket_errno;
        rev->eof = 1;
        c->error = 1;
        return true;
    }
    if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && rev->active && ngx_del_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
        c->error = 1;
        return true;
    }
    return false;
}

void parked_read(ngx_event_t *rev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(rev->data);
    auto *p = static_cast<ParkedRequest *>(c->data);
    if (c->close) {   // the worker closes every connection (worker_shutdown_timeout)
        end_parked(p, NGX_ERROR);
        return;
    }
    ngx_err_t err = 0;
    if (!client_gone(c, &err)) return;
    if (err != 0) rev->error = 1;
#if (NGX_HTTP_SSL)
    if (c->ssl != nullptr) c->ssl->no_send_shutdown = 1;
#endif
    ngx_log_error(NGX_LOG_INFO, c->log, err, "client prematurely closed connection");
    end_parked(p, NGX_HTTP_CLIENT_CLOSED_REQUEST);
}

}  // namespace

ngx_msec_t park_delay(uint64_t last_news_ms) {
    ngx_msec_t after = configured().after;
    ngx_time_t *tp = ngx_timeofday();
    uint64_t now = uint64_t(tp->sec) * 1000 + tp->msec;
    return now >= last_news_ms + after ? 0 : after;
}

ParkedRequest *park_prepare(ngx_http_request_t *r, void *cleanup_owner) noexcept {
    if (!may_park(r, cleanup_owner)) return nullptr;
    ParkedRequest *p = build_image(r);
    if (p == nullptr) return nullptr;
    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_free(p);
        return nullptr;
    }
    save_state(r, p);
    return p;
}

void park_cancel(ParkedRequest *p) noexcept { ngx_free(p); }

void park_commit(ParkedRequest *p, ngx_http_request_t *r, void *owner, ParkGone gone) noexcept {
    ngx_connection_t *c = r->connection;
    p->owner = owner;
    p->gone = gone;
    request_handler = c->read->handler;
    for (ngx_http_cleanup_t *cln = r->cleanup; cln != nullptr; cln = cln->next) {
        cln->handler = nullptr;   // the owner's (the only one): it lives on
    }
    r->logged = 1;         // logged once, when it is answered
    r->stat_writing = 0;   // the connection stays counted as writing while parked
    ngx_http_free_request(r, 0);
    c->destroyed = 0;
    auto *ctx = static_cast<ngx_http_log_ctx_t *>(c->log->data);
    ctx->request = nullptr;
    ctx->current_request = nullptr;
    release_buffers(c, p->http_connection);
    c->data = p;
    c->read->handler = parked_read;
    c->write->handler = ngx_http_empty_handler;
    c->log->action = const_cast<char *>("waiting for a message");
    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
    if (configured().verbose) ngx_log_error(NGX_LOG_INFO, c->log, 0, "channels: long-poll request parked");
    count_park();
}

bool move_subscriber(Subscriber *from, Subscriber *to) noexcept {
    if (from->touched || !delivery_alloc_links(to, from->nlinks, nullptr)) return false;
    for (size_t i = 0; i < from->nlinks; i++) {
        to->links[i].seen = from->links[i].seen;
        to->positions[i] = from->positions[i];
        if (from->positions[i].channel != nullptr) replace_node(&from->links[i].in_channel, &to->links[i].in_channel);
        from->positions[i].channel = nullptr;
    }
    if (from->in_zone.owner != nullptr) {
        replace_node(&from->in_zone.queue, &to->in_zone.queue);
        to->in_zone.owner = to;
        from->in_zone.owner = nullptr;
    }
    from->attached = false;
    from->nactive = 0;
    delivery_free_links(from);
    return true;
}

ngx_http_request_t *unpark_request(ParkedRequest *p) noexcept {
    ngx_http_request_t *r = recreate(p);
    if (r != nullptr && restore(r, p) != NGX_OK) r = nullptr;
    if (r != nullptr && configured().verbose) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "channels: parked long-poll request re-created");
    }
    ngx_free(p);
    return r;
}

}  // namespace channels
