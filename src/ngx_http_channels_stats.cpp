// channel_stats: zone statistics as JSON or Prometheus text, and channel listings (SPEC §6).

#include "channels/json.h"
#include "ngx_http_channels.h"
#include "ngx_http_channels_redis.h"
#include "ngx_http_channels_store.h"

namespace chn {
namespace {

constexpr size_t kDefaultListLimit = 100;

void append_field(std::string &out, std::string_view name, uint64_t value) {
    out += ",\"";
    out += name;
    out += "\":";
    channels::append_uint(out, value);
}

void append_zone_json(std::string &out, ZoneConf *zone) {
    ZoneStats st = store_stats(zone);
    out += "{\"name\":";
    channels::append_json_string(out, view(zone->name));
    append_field(out, "size", st.size);
    append_field(out, "used", st.used);
    append_field(out, "channels", st.channels);
    append_field(out, "messages", st.messages);
    append_field(out, "subscribers", st.subscribers);
    append_field(out, "published", st.published);
    append_field(out, "delivered", st.delivered);
    append_field(out, "evicted", st.evicted);
    append_field(out, "dropped_slow", st.dropped_slow);
    append_field(out, "history", zone->history);
    append_field(out, "ttl", zone->ttl / 1000);
    out += ",\"last_event_id\":";
    append_json_id(out, st.last_id);
    out += ",\"workers\":[";
    for (size_t i = 0; i < st.workers.size(); i++) {
        const ZoneStats::Worker &w = st.workers[i];
        out += i ? ",{\"pid\":" : "{\"pid\":";
        channels::append_uint(out, uint64_t(w.pid));
        append_field(out, "subscribers", w.subscribers);
        append_field(out, "wakeups", w.wakeups);
        append_field(out, "entries_read", w.entries_read);
        out += '}';
    }
    out += ']';
    redis_append_stats(out, zone);
    out += '}';
}

struct Metric {
    std::string_view name, type, help;
    uint64_t ZoneStats::*field;
};

constexpr Metric kMetrics[] = {
    {"nginx_channels_channels", "gauge", "Channels in the zone.", &ZoneStats::channels},
    {"nginx_channels_messages", "gauge", "Messages retained in the zone.", &ZoneStats::messages},
    {"nginx_channels_subscribers", "gauge", "Subscriber connections.", &ZoneStats::subscribers},
    {"nginx_channels_published_total", "counter", "Messages published.", &ZoneStats::published},
    {"nginx_channels_delivered_total", "counter", "Messages delivered to subscribers.",
     &ZoneStats::delivered},
    {"nginx_channels_evicted_total", "counter", "Messages evicted because the zone was full.",
     &ZoneStats::evicted},
    {"nginx_channels_dropped_slow_total", "counter", "Subscribers cut off for not reading.",
     &ZoneStats::dropped_slow},
};

void append_sample(std::string &out, std::string_view name, std::string_view zone, uint64_t value) {
    out += name;
    out += "{zone=\"";
    out += zone;   // zone names are nginx tokens: no quotes, backslashes or newlines
    out += "\"} ";
    channels::append_uint(out, value);
    out += '\n';
}

void append_header(std::string &out, std::string_view name, std::string_view type,
                   std::string_view help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

std::string prometheus(ZoneConf **zones, size_t n) {
    std::vector<ZoneStats> stats;
    for (size_t i = 0; i < n; i++) stats.push_back(store_stats(zones[i]));
    std::string out;
    append_header(out, "nginx_channels_size_bytes", "gauge", "Size of the shared memory zone.");
    for (size_t i = 0; i < n; i++) append_sample(out, "nginx_channels_size_bytes", view(zones[i]->name), stats[i].size);
    append_header(out, "nginx_channels_used_bytes", "gauge", "Bytes of the zone in use.");
    for (size_t i = 0; i < n; i++) append_sample(out, "nginx_channels_used_bytes", view(zones[i]->name), stats[i].used);
    for (const Metric &m : kMetrics) {
        append_header(out, m.name, m.type, m.help);
        for (size_t i = 0; i < n; i++) append_sample(out, m.name, view(zones[i]->name), stats[i].*m.field);
    }
    return out;
}

std::string listing_json(const ChannelListing &list) {
    std::string out = "{\"channels\":[";
    for (size_t i = 0; i < list.rows.size(); i++) {
        const ChannelListing::Row &row = list.rows[i];
        out += i ? ",{\"id\":" : "{\"id\":";
        channels::append_json_string(out, row.id);
        append_field(out, "messages", row.messages);
        append_field(out, "subscribers", row.subscribers);
        out += ",\"last_event_id\":";
        append_json_id(out, row.newest);
        out += '}';
    }
    out += ']';
    if (list.more && !list.rows.empty()) {
        out += ",\"next_after\":";
        channels::append_json_string(out, list.rows.back().id);
    }
    out += "}\n";
    return out;
}

ngx_int_t list_channels(ngx_http_request_t *r, ZoneConf *zone) {
    ngx_str_t prefix{}, after{}, limit_text{};
    bool found;
    if (decoded_arg(r, "prefix", &prefix, &found) != NGX_OK ||
        decoded_arg(r, "after", &after, &found) != NGX_OK ||
        decoded_arg(r, "limit", &limit_text, &found) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    size_t limit = kDefaultListLimit;
    if (found) {
        ngx_int_t n = ngx_atoi(limit_text.data, limit_text.len);
        if (n <= 0) return send_text(r, NGX_HTTP_BAD_REQUEST, "invalid limit: a positive number");
        limit = size_t(n);
    }
    ChannelListing list = store_list(zone, view(prefix), view(after), limit);
    return send_body(r, NGX_HTTP_OK, "application/json", listing_json(list));
}

ngx_int_t handle(ngx_http_request_t *r) {
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        if (add_header(r, "Allow", "GET, HEAD") != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "method not allowed");
    }
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto *mcf = static_cast<MainConf *>(ngx_http_get_module_main_conf(r, ngx_http_channels_module));
    ZoneConf *one = zone_of(loc_conf(r));
    ZoneConf **zones = one ? &one : static_cast<ZoneConf **>(mcf->zones.elts);
    size_t n = one ? 1 : mcf->zones.nelts;
    ngx_str_t name{};
    bool named;
    if (decoded_arg(r, "zone", &name, &named) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (named) {   // ?zone=NAME picks one of the zones this location shows
        ZoneConf **found = nullptr;
        for (size_t i = 0; i < n; i++) {
            if (view(zones[i]->name) == view(name)) found = &zones[i];
        }
        if (found == nullptr) return send_text(r, NGX_HTTP_NOT_FOUND, "no such channel zone");
        zones = found;
        n = 1;
    }

    if (has_arg(r, "channels")) {
        if (n != 1) {
            return send_text(r, NGX_HTTP_BAD_REQUEST, "channel listing needs one zone: add &zone=NAME");
        }
        return list_channels(r, zones[0]);
    }
    ngx_str_t format{};
    bool found;
    if (decoded_arg(r, "format", &format, &found) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (found && view(format) == "prometheus") {
        return send_body(r, NGX_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", prometheus(zones, n));
    }
    std::string out = "{\"zones\":[";
    for (size_t i = 0; i < n; i++) {
        if (i) out += ',';
        append_zone_json(out, zones[i]);
    }
    out += "]}\n";
    return send_body(r, NGX_HTTP_OK, "application/json", out);
}

}  // namespace

ngx_int_t stats_handler(ngx_http_request_t *r) {
    return guarded(r->connection->log, [r] { return handle(r); });
}

}  // namespace chn
