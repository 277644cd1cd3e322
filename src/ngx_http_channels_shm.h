// The shared-memory store of one channel_zone (the Store interface, see
// ngx_http_channels_store.h). Lives in the configuration pool of its cycle; the zone it
// works on is shared by every worker and survives reloads.
//
// The data path (publish, delete, subscribe, read) is in ngx_http_channels_shm_store.cpp,
// the zone's life (set-up, reload, rebuild, worker records, ids across restarts,
// collection, statistics, checks) in ngx_http_channels_shm_zone.cpp.
#pragma once

#include "ngx_http_channels_session.h"
#include "ngx_http_channels_store.h"

namespace channels {

namespace shm {
struct Shared;
class Zone;
}  // namespace shm

class ShmStore : public Store {
public:
    ShmStore(ngx_shm_zone_t *shm_zone, ngx_str_t name, uint64_t history, uint64_t ttl_ms);

    // ---- configuration time (master) ----
    // The zone's shared memory is mapped: adopts the root of a zone that exists (reload),
    // or builds a new one.
    ngx_int_t init(bool existing) noexcept;
    // Opens the file that keeps the last id across restarts (beside nginx's pid file), so
    // that workers can keep it ahead of the ids they hand out; seeds a new zone from it.
    ngx_int_t open_id_file(ngx_cycle_t *cycle);
    void save_id_file();   // the master exits: the exact last id

    // ---- Store ----
    ngx_int_t start(PublishCall *call) override;
    void cancel(PublishCall *) override {}
    ChannelInfo info(std::string_view channel) override;
    MessageId position() override { return last_id(); }
    ngx_int_t start_worker(ngx_cycle_t *cycle, ZoneSession *session, StoreListener *listener) override;
    void stop_worker(ZoneSession *session) override;
    bool collect(ZoneSession *session) override;
    bool sweep() override;
    SubscribeResult subscribe(ZoneSession &s, const SubscribeQuery &q, ReadPosition *positions,
                              Batch &first_page) override;
    void unsubscribe(ZoneSession &s, LocalChannel *const *channels, size_t n, bool count_connection) override;
    void read_page(ZoneSession &s, ReadPosition *positions, size_t n, MessageId cursor, MessageId news_after,
                   size_t limit, size_t byte_limit, Batch &out) override;
    void read_log(ZoneSession &s, Batch &out, bool woken) override;
    size_t wake_targets(uint64_t bits, WakeTarget *targets, size_t max) override;
    void count_delivered(uint64_t n) override;
    void count_dropped_slow() override;
    ZoneStats stats() override;
    ChannelListing list(std::string_view prefix, std::string_view after, size_t limit) override;
    ZoneCheck check() override;
    void append_stats(JsonWriter<StringSink> &) override {}
    std::string_view name() const override { return {reinterpret_cast<const char *>(name_.data), name_.len}; }

    // ---- for the Redis store: entries whose ids were assigned elsewhere ----
    // Appends when newer than the zone's last id (else another worker of this host mirrored
    // it first). Returns the wake bits of its channel.
    uint64_t ingest(EntryKind kind, MessageId id, const PublishInput &in);
    // An entry of the shared log too large to mirror: lost, its channel's subscribers told.
    // Returns the wake bits of its channel.
    uint64_t ingest_lost(std::string_view channel, MessageId id);
    MessageId last_id();
    // Every retained cursor now counts as short of messages (the shared log lost data).
    void mark_gap();
    // Cursors older than floor cannot be replayed.
    void raise_floor(MessageId floor);

    // ---- internal ----
    ngx_slab_pool_t *pool() const { return pool_; }
    uint64_t start_time() const { return start_time_; }
    const ngx_str_t &zone_name() const { return name_; }
    uint64_t history() const { return history_; }
    uint64_t ttl_ms() const { return ttl_ms_; }
    // Called by ZoneLock when a worker died in the middle of an update.
    shm::Shared *rebuild_locked(shm::Shared *torn);
    StoreListener *listener() const { return listener_; }
    bool redis_ids = false;   // a Redis zone takes its ids from Redis: no id file, starts at 0

protected:
    void publish_locally(PublishCall *call);
    void delete_locally(PublishCall *call);
    void notify(uint64_t wake_bits);

private:
    ngx_int_t create_root(uint64_t first_ms);
    uint64_t persisted_mark(uint64_t now);
    void persist_mark();
    void drop_dead_records(const ZoneSession *self);

    ngx_shm_zone_t *shm_zone_;
    ngx_slab_pool_t *pool_ = nullptr;
    ngx_str_t name_;
    uint64_t history_;
    uint64_t ttl_ms_;
    ngx_fd_t id_fd_ = NGX_INVALID_FILE;
    bool seed_from_file_ = false;       // a zone created by a fresh start: the id file seeds it
    StoreListener *listener_ = nullptr;
    uint64_t start_time_ = 0;           // of this worker process
};

// A process's start time (Linux: /proc/PID/stat field 22), 0 when unknown.
uint64_t process_start_time(ngx_pid_t pid);

}  // namespace channels
