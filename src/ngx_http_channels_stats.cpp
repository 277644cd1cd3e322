// channel_stats: zone statistics as JSON or Prometheus text, channel listings, and the
// zone consistency check (README "Statistics").

#include "channels/json_writer.h"
#include "ngx_http_channels_request.h"

namespace channels {
namespace {

constexpr size_t kDefaultListLimit = 100;
constexpr size_t kMaxListLimit = 1000;

void append_zone_json(JsonWriter<StringSink> &w, const ZoneConf *zone) {
    ZoneStats st = zone->store->stats();
    w.open_object().key("name").string(view(zone->name));
    w.key("size").number(st.size).key("used").number(st.used);
    w.key("channels").number(st.channels).key("messages").number(st.messages);
    w.key("subscribers").number(st.subscribers).key("published").number(st.published);
    w.key("delivered").number(st.delivered).key("evicted").number(st.evicted);
    w.key("dropped_slow").number(st.dropped_slow);
    w.key("idle_bytes").number(st.idle_bytes).key("idle_cap").number(st.idle_cap);
    w.key("rebuilds").number(st.rebuilds);
    w.key("history").number(zone->history).key("ttl").number(zone->ttl / 1000);
    w.key("last_event_id").id(st.last_id);
    w.key("workers").open_array();
    for (const ZoneStats::Worker &wk : st.workers) {
        w.open_object().key("pid").number(uint64_t(wk.pid)).key("subscribers").number(wk.subscribers);
        w.key("wakeups").number(wk.wakeups).key("entries_read").number(wk.entries_read).close_object();
    }
    w.close_array();
    zone->store->append_stats(w);
    w.close_object();
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
    {"nginx_channels_delivered_total", "counter", "Messages delivered to subscribers.", &ZoneStats::delivered},
    {"nginx_channels_evicted_total", "counter", "Messages evicted because the zone was full.", &ZoneStats::evicted},
    {"nginx_channels_dropped_slow_total", "counter", "Subscribers cut off for not reading.", &ZoneStats::dropped_slow},
};

void append_sample(std::string &out, std::string_view name, std::string_view zone, uint64_t value) {
    out.append(name).append("{zone=\"").append(zone).append("\"} ");   // zone names: nginx tokens
    StringSink sink(out);
    put_uint(sink, value);
    out += '\n';
}

void append_header(std::string &out, std::string_view name, std::string_view type, std::string_view help) {
    out.append("# HELP ").append(name).append(" ").append(help).append("\n# TYPE ");
    out.append(name).append(" ").append(type).append("\n");
}

std::string prometheus(ZoneConf **zones, size_t n) {
    std::vector<ZoneStats> stats;
    for (size_t i = 0; i < n; i++) stats.push_back(zones[i]->store->stats());
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
    std::string out;
    StringSink sink(out);
    JsonWriter<StringSink> w(sink);
    w.open_object().key("channels").open_array();
    for (const ChannelListing::Row &row : list.rows) {
        w.open_object().key("id").string(row.id).key("messages").number(row.messages);
        w.key("subscribers").number(row.subscribers).key("last_event_id").id(row.newest).close_object();
    }
    w.close_array();
    if (list.more && !list.rows.empty()) w.key("next_after").string(list.rows.back().id);
    w.close_object().raw("\n");
    return out;
}

ngx_int_t list_channels(ngx_http_request_t *r, ZoneConf *zone) {
    ngx_str_t prefix{}, after{}, limit_text{};
    bool found;
    if (decoded_arg(r, "prefix", &prefix, &found) != NGX_OK || decoded_arg(r, "after", &after, &found) != NGX_OK ||
        decoded_arg(r, "limit", &limit_text, &found) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    size_t limit = kDefaultListLimit;
    if (found) {
        ngx_int_t n = ngx_atoi(limit_text.data, limit_text.len);
        if (n <= 0) return send_text(r, NGX_HTTP_BAD_REQUEST, "invalid limit: a positive number");
        limit = std::min(size_t(n), kMaxListLimit);
    }
    return send_body(r, NGX_HTTP_OK, "application/json", listing_json(zone->store->list(view(prefix), view(after), limit)));
}

// ?check: every zone walked under its lock; "consistent" and what did not add up.
ngx_int_t check_zones(ngx_http_request_t *r, ZoneConf **zones, size_t n) {
    std::string out;
    StringSink sink(out);
    JsonWriter<StringSink> w(sink);
    w.open_object().key("zones").open_array();
    for (size_t i = 0; i < n; i++) {
        ZoneCheck check = zones[i]->store->check();
        w.open_object().key("name").string(view(zones[i]->name)).key("consistent").boolean(check.problems.empty());
        w.key("problems").open_array();
        for (const std::string &p : check.problems) w.string(p);
        w.close_array().close_object();
    }
    w.close_array().close_object().raw("\n");
    return send_body(r, NGX_HTTP_OK, "application/json", out);
}

ngx_int_t serve_stats(ngx_http_request_t *r) {
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        if (add_header(r, "Allow", "GET, HEAD") != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "method not allowed");
    }
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    MainConf *mcf = main_conf(r);
    ZoneConf *one = zone_of(loc_conf(r));
    ZoneConf **zones = one != nullptr ? &one : static_cast<ZoneConf **>(mcf->zones.elts);
    size_t n = one != nullptr ? 1 : mcf->zones.nelts;
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
    if (has_arg(r, "check")) return check_zones(r, zones, n);
    if (has_arg(r, "channels")) {
        if (n != 1) return send_text(r, NGX_HTTP_BAD_REQUEST, "channel listing needs one zone: add &zone=NAME");
        return list_channels(r, zones[0]);
    }
    ngx_str_t format{};
    bool found;
    if (decoded_arg(r, "format", &format, &found) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (found && view(format) == "prometheus") {
        return send_body(r, NGX_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", prometheus(zones, n));
    }
    std::string out;
    StringSink sink(out);
    JsonWriter<StringSink> w(sink);
    w.open_object().key("zones").open_array();
    for (size_t i = 0; i < n; i++) append_zone_json(w, zones[i]);
    w.close_array().close_object().raw("\n");
    return send_body(r, NGX_HTTP_OK, "application/json", out);
}

}  // namespace

ngx_int_t ngx_http_channels_stats_handler(ngx_http_request_t *r) noexcept {
    return guarded(r->connection->log, ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [r] { return serve_stats(r); });
}

}  // namespace channels
