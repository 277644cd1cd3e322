// The few nginx symbols the shared-memory store uses, stubbed for unit tests
// (ngx_stub.cpp), and what a test controls through them.
//
// The store's sources are compiled against nginx's real headers and linked with this stub
// instead of nginx: no nginx process, no nginx source file. What the stub gives:
//
// - a slab pool with a byte budget: every allocation charges its slab size (power-of-two
//   slots from 8 bytes up to half a page, whole pages above, as nginx's allocator rounds),
//   and fails once the live bytes would pass the pool's capacity. A full zone, and the
//   eviction it causes, are driven to the byte. Blocks come from a MAP_SHARED mapping so
//   that a forked child can die in the middle of an update and leave the zone torn for
//   the parent (what nginx's master sees when a worker is killed holding the lock).
//   Freed blocks and never-allocated bytes are poisoned for AddressSanitizer, and every
//   block is unpoisoned to exactly the size asked for, so a use after free or a write
//   past an allocation is reported where it happens;
// - the zone mutex as a flag: taking it twice, releasing it unheld, or allocating from the
//   pool without it (outside configuration time) is a test failure;
// - the clock (ngx_timeofday) as a value the test sets;
// - the error log as a list of lines the test reads (ngx_log_error_core, ngx_sprintf with
//   the conversions the store uses);
// - a plain, unbalanced binary search tree behind ngx_rbtree_insert/delete/next: the
//   order and node identity nginx's red-black tree guarantees, which is all the store
//   relies on (Debian's nginx-dev ships headers only, so nginx's own ngx_rbtree.c and
//   ngx_slab.c are not there to link).
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ngxstub {

// ---- clock ----
void set_time_ms(uint64_t ms);
uint64_t time_ms();
inline void advance_ms(uint64_t ms)
{
    set_time_ms(time_ms() + ms);
}

// ---- the slab pool ----
// A new pool whose usable range (pool->end - pool->start, what the store divides into its
// budgets) is zone_bytes, as ngx_init_zone_pool leaves it; capacity starts equal to it.
ngx_slab_pool_t *pool_create(size_t zone_bytes);
void pool_destroy(ngx_slab_pool_t *pool);
// The most live slab bytes the pool holds; allocations past it fail (NULL).
void set_capacity(ngx_slab_pool_t *pool, size_t bytes);
size_t capacity(ngx_slab_pool_t *pool);
size_t live_bytes(ngx_slab_pool_t *pool);  // sum of the slab sizes of live blocks
size_t live_blocks(ngx_slab_pool_t *pool);
// Slab bytes an allocation of `size` takes, by the stub's own rule (independent of the
// store's slab_size(), which tests compare with it).
size_t slab_bytes(size_t size);
// Configuration time (one process, no lock needed): allocations without the mutex allowed.
void allow_unlocked(ngx_slab_pool_t *pool, bool allow);
bool locked(ngx_slab_pool_t *pool);
// Makes allocations fail while fn(size) says so (nullptr: never), whatever the capacity.
void fail_allocs_if(ngx_slab_pool_t *pool, std::function<bool(size_t)> fn);
uint64_t allocs_failed(ngx_slab_pool_t *pool);
// Whether p is the start of a live block of the pool.
bool is_live(ngx_slab_pool_t *pool, const void *p);
// Blocks freed within one hold of the zone mutex, the most since the last reset: a measure
// of the work done under the lock (SPEC §9).
size_t max_frees_per_hold(ngx_slab_pool_t *pool);
void reset_max_frees(ngx_slab_pool_t *pool);

// ---- the error log ----
struct LogLine {
    ngx_uint_t level;
    std::string text;
};
std::vector<LogLine> &log_lines();
void clear_log();
// Lines at `level` or more severe (NGX_LOG_EMERG is 1, NGX_LOG_DEBUG 8).
size_t count_log(ngx_uint_t level_or_above, const std::string &containing = "");
std::string dump_log();

// ---- the cycle ----
ngx_cycle_t *cycle();
ngx_log_t *log();
// The pid file path open_id_file() reads its directory from (ngx_core_conf_t::pid).
void set_pid_path(const std::string &path);
// Zones of the cycle being replaced: previous_zone_last_id() looks there on a reload.
void set_cycle_zones(std::vector<ngx_shm_zone_t> zones);
// Runs the pool cleanups registered with ngx_pool_cleanup_add (a cycle's pool destroyed).
void run_cleanups();

}  // namespace ngxstub
