// channel_redis: a zone shared by several nginx hosts through Redis Streams (README "channel_redis").
//
// The Redis store implements the Store interface in front of the zone's shared-memory
// store: publishes and deletes go through one Redis script that assigns the id and appends
// to the channel's stream and to the prefix's shared log, atomically; every worker of every
// host tails the shared log and mirrors it into its local zone, so subscribing, replay,
// gaps and fan-out stay the shared-memory store's job. What is read from Redis is
// untrusted input: every entry is validated as a publish is.
#pragma once

#include <string>

#include "ngx_http_channels.h"
#include "ngx_http_channels_shm.h"

namespace channels {

struct RedisConf {
    ngx_str_t   zone_name{};
    ngx_str_t   url{};
    std::string host;      // numeric address, resolved at configuration time
    int         port = 6379;
    int         db = 0;
    std::string prefix = "channels:";
};

struct RedisWorker;

class RedisStore final : public Store {
public:
    RedisStore(ShmStore *local, RedisConf *conf) : local_(local), conf_(conf) {}

    ngx_int_t start(PublishCall *call) override;
    void cancel(PublishCall *call) override;
    ChannelInfo info(std::string_view channel) override { return local_->info(channel); }
    MessageId position() override { return local_->position(); }
    ngx_int_t start_worker(ngx_cycle_t *cycle, ZoneSession *session, StoreListener *listener) override;
    void stop_worker(ZoneSession *session) override;
    bool collect(ZoneSession *session) override { return local_->collect(session); }
    bool sweep() override { return local_->sweep(); }
    SubscribeResult subscribe(ZoneSession &s, const SubscribeQuery &q, ReadPosition *positions, Batch &page) override {
        return local_->subscribe(s, q, positions, page);
    }
    void unsubscribe(ZoneSession &s, LocalChannel *const *lcs, size_t n, bool count_connection) override {
        local_->unsubscribe(s, lcs, n, count_connection);
    }
    void read_page(ZoneSession &s, ReadPosition *positions, size_t n, MessageId cursor, MessageId news_after,
                   size_t limit, size_t byte_limit, Batch &out) override {
        local_->read_page(s, positions, n, cursor, news_after, limit, byte_limit, out);
    }
    void read_log(ZoneSession &s, Batch &out, bool woken) override { local_->read_log(s, out, woken); }
    size_t wake_targets(uint64_t bits, WakeTarget *targets, size_t max) override {
        return local_->wake_targets(bits, targets, max);
    }
    void count_delivered(uint64_t n) override { local_->count_delivered(n); }
    void count_dropped_slow() override { local_->count_dropped_slow(); }
    ZoneStats stats() override { return local_->stats(); }
    ChannelListing list(std::string_view prefix, std::string_view after, size_t limit) override {
        return local_->list(prefix, after, limit);
    }
    ZoneCheck check() override { return local_->check(); }
    void append_stats(JsonWriter<StringSink> &w) override;
    std::string_view name() const override { return local_->name(); }

    ShmStore *local() const { return local_; }
    const RedisConf &conf() const { return *conf_; }

private:
    ShmStore *local_;
    RedisConf *conf_;
    RedisWorker *worker_ = nullptr;   // this worker's connections
};

// channel_redis zone=NAME url=redis://HOST:PORT[/DB] [prefix=STR];
char *redis_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
// Puts a Redis store in front of each zone a channel_redis names (postconfiguration).
ngx_int_t redis_bind_zones(ngx_conf_t *cf, MainConf *mcf);

}  // namespace channels
