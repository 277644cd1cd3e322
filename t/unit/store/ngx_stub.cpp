// The nginx symbols the shared-memory store links against, for unit tests (see ngx_stub.h).
#include "ngx_stub.h"

#include <gtest/gtest.h>
#include <sanitizer/asan_interface.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <unordered_map>

#ifndef ASAN_POISON_MEMORY_REGION
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

namespace {

[[noreturn]] void stub_abort(const char *what)
{
    std::fprintf(stderr, "ngx_stub: %s\n", what);
    std::abort();
}

// ---- the slab pool ----

constexpr size_t kPage = 4096;
constexpr size_t kBlockRegionMin = 64 << 20;  // virtual: freed blocks are reused by size only

struct Arena {
    u_char *map = nullptr;
    size_t map_size = 0;
    ngx_slab_pool_t *pool = nullptr;  // at the start of the mapping, shared with children
    u_char *base = nullptr;           // blocks
    u_char *bump = nullptr;
    u_char *limit = nullptr;
    size_t capacity = 0;
    size_t live = 0;
    std::unordered_map<const void *, size_t> blocks;  // live block -> its slab bytes
    std::map<size_t, std::deque<u_char *>> spare;     // freed blocks by slab bytes, oldest first
    bool held = false;
    bool allow_unlocked = false;
    std::function<bool(size_t)> fail;
    uint64_t failed = 0;
    size_t frees_this_hold = 0, max_frees = 0;

    void update_pfree() { pool->pfree = (capacity > live ? capacity - live : 0) / kPage; }
};

std::vector<std::unique_ptr<Arena>> &arenas()
{
    static std::vector<std::unique_ptr<Arena>> all;
    return all;
}

Arena &arena_of(const ngx_slab_pool_t *pool)
{
    for (auto &a : arenas()) {
        if (a->pool == pool) return *a;
    }
    stub_abort("a slab call on a pool the stub did not create");
}

Arena &arena_of_mutex(ngx_shmtx_t *mtx)
{
    auto *pool = reinterpret_cast<ngx_slab_pool_t *>(reinterpret_cast<u_char *>(mtx) -
                                                     offsetof(ngx_slab_pool_t, mutex));
    return arena_of(pool);
}

u_char *take_block(Arena &a, size_t bytes)
{
    auto it = a.spare.find(bytes);
    if (it != a.spare.end() && !it->second.empty()) {
        u_char *p = it->second.front();
        it->second.pop_front();
        return p;
    }
    size_t align = bytes < kPage ? bytes : kPage;  // slots are aligned to their size
    auto at = (reinterpret_cast<uintptr_t>(a.bump) + align - 1) & ~uintptr_t(align - 1);
    u_char *p = reinterpret_cast<u_char *>(at);
    if (p + bytes > a.limit)
        stub_abort("the block region is exhausted (a test allocates too much)");
    a.bump = p + bytes;
    return p;
}

// ---- the log ----

struct LogState {
    std::vector<ngxstub::LogLine> lines;
};

LogState &log_state()
{
    static LogState s;
    return s;
}

// nginx's formats are not printf's: the conversions the store uses, and a loud stop on any
// other (its arguments could not be skipped safely).
std::string format(const char *fmt, va_list args)
{
    std::string out;
    for (const char *p = fmt; *p != '\0'; p++) {
        if (*p != '%') {
            out += *p;
            continue;
        }
        p++;
        if (*p == '%') {
            out += '%';
        } else if (*p == 'V') {
            auto *s = va_arg(args, ngx_str_t *);
            out.append(reinterpret_cast<const char *>(s->data), s->len);
        } else if (*p == 's') {
            out += va_arg(args, const char *);
        } else if (p[0] == '*' && p[1] == 's') {
            size_t len = va_arg(args, size_t);
            out.append(va_arg(args, const char *), len);
            p++;
        } else if (*p == 'P') {
            out += std::to_string(va_arg(args, ngx_pid_t));
        } else if (*p == 'd') {
            out += std::to_string(va_arg(args, int));
        } else if (p[0] == 'u' && p[1] == 'i') {
            out += std::to_string(va_arg(args, ngx_uint_t));
            p++;
        } else if (p[0] == 'u' && p[1] == 'z') {
            out += std::to_string(va_arg(args, size_t));
            p++;
        } else if (*p == 'Z') {
            out += '\0';
        } else {
            stub_abort("a log format conversion the stub does not know");
        }
    }
    return out;
}

// ---- the cycle ----

struct CycleState {
    ngx_cycle_t cycle{};
    ngx_log_t log{};
    ngx_core_conf_t core{};
    void *conf[1] = {&core};
    std::string pid_path = "/nonexistent/nginx.pid";
    std::vector<ngx_shm_zone_t> zones;
    std::vector<std::unique_ptr<ngx_pool_cleanup_t>> cleanups;
    std::vector<std::unique_ptr<u_char[]>> pool_memory;

    CycleState()
    {
        log.log_level = NGX_LOG_DEBUG;
        cycle.log = &log;
        cycle.conf_ctx = reinterpret_cast<void ****>(conf);
        set_pid(pid_path);
    }
    void set_pid(const std::string &path)
    {
        pid_path = path;
        core.pid.data = reinterpret_cast<u_char *>(pid_path.data());
        core.pid.len = pid_path.size();
    }
};

CycleState &cycle_state()
{
    static CycleState s;
    return s;
}

ngx_time_t cached_time;
uint32_t crc32_short_table[16];

// Set before any test runs: nginx sets these in main() and ngx_os_init().
struct Globals {
    Globals()
    {
        ngx_pagesize = kPage;
        ngx_cycle = &cycle_state().cycle;
        ngx_cached_time = &cached_time;
        for (uint32_t i = 0; i < 16; i++) {  // CRC-32 (reflected 0xEDB88320), four bits at a time
            uint32_t c = i;
            for (int k = 0; k < 4; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            crc32_short_table[i] = c;
        }
        ngx_crc32_table_short = crc32_short_table;
        ngxstub::set_time_ms(1700000000000);
    }
};

}  // namespace

// ---- nginx's symbols ----

extern "C" {

ngx_pid_t ngx_pid;
ngx_uint_t ngx_pagesize;
volatile ngx_cycle_t *ngx_cycle;
volatile ngx_time_t *ngx_cached_time;
uint32_t *ngx_crc32_table_short;
ngx_module_t ngx_core_module;
ngx_module_t ngx_http_channels_module;

void ngx_log_error_core(ngx_uint_t level, ngx_log_t *, ngx_err_t err, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    std::string text = format(fmt, args);
    va_end(args);
    if (err != 0) text += std::string(" (") + std::to_string(err) + ": " + std::strerror(err) + ")";
    log_state().lines.push_back({level, text});
}

u_char *ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    std::string text = format(fmt, args);
    va_end(args);
    std::memcpy(buf, text.data(), text.size());
    return buf + text.size();
}

void *ngx_alloc(size_t size, ngx_log_t *)
{
    return std::malloc(size);
}
void *ngx_calloc(size_t size, ngx_log_t *)
{
    return std::calloc(1, size);
}

void *ngx_pnalloc(ngx_pool_t *, size_t size)
{
    cycle_state().pool_memory.emplace_back(new u_char[size]);
    return cycle_state().pool_memory.back().get();
}

ngx_pool_cleanup_t *ngx_pool_cleanup_add(ngx_pool_t *pool, size_t size)
{
    auto cln = std::make_unique<ngx_pool_cleanup_t>();
    cln->handler = nullptr;
    cln->data = size == 0 ? nullptr : ngx_pnalloc(pool, size);
    cln->next = nullptr;
    cycle_state().cleanups.push_back(std::move(cln));
    return cycle_state().cleanups.back().get();
}

void ngx_shmtx_lock(ngx_shmtx_t *mtx)
{
    Arena &a = arena_of_mutex(mtx);
    if (a.held) ADD_FAILURE() << "the zone mutex taken while held (a deadlock in nginx)";
    a.held = true;
    a.frees_this_hold = 0;
}

void ngx_shmtx_unlock(ngx_shmtx_t *mtx)
{
    Arena &a = arena_of_mutex(mtx);
    if (!a.held) ADD_FAILURE() << "the zone mutex released while not held";
    a.held = false;
}

void ngx_slab_init(ngx_slab_pool_t *pool)
{
    Arena &a = arena_of(pool);
    a.blocks.clear();
    a.spare.clear();
    a.live = 0;
    a.bump = a.base;
    ASAN_POISON_MEMORY_REGION(a.base, size_t(a.limit - a.base));
    pool->log_nomem = 1;
    pool->zero = '\0';
    pool->log_ctx = &pool->zero;
    a.update_pfree();
}

void *ngx_slab_alloc_locked(ngx_slab_pool_t *pool, size_t size)
{
    Arena &a = arena_of(pool);
    if (!a.held && !a.allow_unlocked) ADD_FAILURE() << "a slab allocation without the zone mutex";
    size_t bytes = ngxstub::slab_bytes(size);
    if (a.live + bytes > a.capacity || (a.fail && a.fail(size))) {
        a.failed++;
        return nullptr;
    }
    u_char *p = take_block(a, bytes);
    ASAN_UNPOISON_MEMORY_REGION(p, size);
    std::memset(p, 0xa5, size);  // the slab does not zero: nothing may rely on it
    a.blocks[p] = bytes;
    a.live += bytes;
    a.update_pfree();
    return p;
}

void ngx_slab_free_locked(ngx_slab_pool_t *pool, void *p)
{
    Arena &a = arena_of(pool);
    if (!a.held && !a.allow_unlocked) ADD_FAILURE() << "a slab free without the zone mutex";
    auto it = a.blocks.find(p);
    if (it == a.blocks.end()) {
        ADD_FAILURE() << "ngx_slab_free_locked of " << p << ": not a live block (double free?)";
        return;
    }
    size_t bytes = it->second;
    a.blocks.erase(it);
    a.live -= bytes;
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
    std::memset(p, 0xdb, bytes);
    ASAN_POISON_MEMORY_REGION(p, bytes);
    a.spare[bytes].push_back(static_cast<u_char *>(p));
    a.update_pfree();
    a.max_frees = std::max(a.max_frees, ++a.frees_this_hold);
}

// An ordered binary tree without rebalancing: the order and node identity of nginx's
// red-black tree (nodes are relinked, never copied), colours left as the insert sets them.
void ngx_rbtree_insert(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
    if (tree->root == tree->sentinel) {
        node->parent = nullptr;
        node->left = tree->sentinel;
        node->right = tree->sentinel;
        ngx_rbt_black(node);
        tree->root = node;
        return;
    }
    tree->insert(tree->root, node, tree->sentinel);
}

static void rbtree_replace(ngx_rbtree_t *tree, ngx_rbtree_node_t *old, ngx_rbtree_node_t *with)
{
    if (old->parent == nullptr) {
        tree->root = with;
    } else if (old == old->parent->left) {
        old->parent->left = with;
    } else {
        old->parent->right = with;
    }
    if (with != tree->sentinel) with->parent = old->parent;
}

void ngx_rbtree_delete(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
    ngx_rbtree_node_t *sentinel = tree->sentinel;
    if (node->left == sentinel) {
        rbtree_replace(tree, node, node->right);
    } else if (node->right == sentinel) {
        rbtree_replace(tree, node, node->left);
    } else {
        ngx_rbtree_node_t *next = ngx_rbtree_min(node->right, sentinel);
        if (next->parent != node) {
            rbtree_replace(tree, next, next->right);
            next->right = node->right;
            next->right->parent = next;
        }
        rbtree_replace(tree, node, next);
        next->left = node->left;
        next->left->parent = next;
    }
    node->left = nullptr;
    node->right = nullptr;
    node->parent = nullptr;
    node->key = 0;
}

ngx_rbtree_node_t *ngx_rbtree_next(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
    ngx_rbtree_node_t *sentinel = tree->sentinel;
    if (node->right != sentinel) return ngx_rbtree_min(node->right, sentinel);
    for (;;) {
        ngx_rbtree_node_t *parent = node->parent;
        if (node == tree->root || parent == nullptr) return nullptr;
        if (node == parent->left) return parent;
        node = parent;
    }
}

}  // extern "C"

namespace {
Globals globals;
}

// ---- control ----

namespace ngxstub {

void set_time_ms(uint64_t ms)
{
    cached_time.sec = time_t(ms / 1000);
    cached_time.msec = ngx_msec_t(ms % 1000);
}

uint64_t time_ms()
{
    return uint64_t(cached_time.sec) * 1000 + cached_time.msec;
}

size_t slab_bytes(size_t size)
{
    if (size > kPage / 2) return (size + kPage - 1) / kPage * kPage;
    size_t slot = 8;
    while (slot < size) slot *= 2;
    return slot;
}

ngx_slab_pool_t *pool_create(size_t zone_bytes)
{
    auto a = std::make_unique<Arena>();
    size_t header = (sizeof(ngx_slab_pool_t) + kPage - 1) / kPage * kPage;
    size_t region = std::max(kBlockRegionMin, 4 * zone_bytes);
    a->map_size = header + region;
    void *m = mmap(nullptr, a->map_size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) stub_abort("cannot map a pool");
    a->map = static_cast<u_char *>(m);
    a->pool = reinterpret_cast<ngx_slab_pool_t *>(a->map);
    std::memset(a->pool, 0, sizeof(ngx_slab_pool_t));
    a->base = a->map + header;
    a->limit = a->map + a->map_size;
    a->capacity = zone_bytes;
    a->pool->start = a->base;
    a->pool->end = a->base + zone_bytes;
    a->pool->addr = a->map;
    a->pool->min_shift = 3;
    ngx_slab_pool_t *pool = a->pool;
    arenas().push_back(std::move(a));
    ngx_slab_init(pool);
    return pool;
}

void pool_destroy(ngx_slab_pool_t *pool)
{
    auto &all = arenas();
    for (auto it = all.begin(); it != all.end(); ++it) {
        if ((*it)->pool != pool) continue;
        ASAN_UNPOISON_MEMORY_REGION((*it)->map, (*it)->map_size);
        munmap((*it)->map, (*it)->map_size);
        all.erase(it);
        return;
    }
}

void set_capacity(ngx_slab_pool_t *pool, size_t bytes)
{
    arena_of(pool).capacity = bytes;
    arena_of(pool).update_pfree();
}

size_t capacity(ngx_slab_pool_t *pool)
{
    return arena_of(pool).capacity;
}
size_t live_bytes(ngx_slab_pool_t *pool)
{
    return arena_of(pool).live;
}
size_t live_blocks(ngx_slab_pool_t *pool)
{
    return arena_of(pool).blocks.size();
}
void allow_unlocked(ngx_slab_pool_t *pool, bool allow)
{
    arena_of(pool).allow_unlocked = allow;
}
bool locked(ngx_slab_pool_t *pool)
{
    return arena_of(pool).held;
}
void fail_allocs_if(ngx_slab_pool_t *pool, std::function<bool(size_t)> fn)
{
    arena_of(pool).fail = std::move(fn);
}
uint64_t allocs_failed(ngx_slab_pool_t *pool)
{
    return arena_of(pool).failed;
}
bool is_live(ngx_slab_pool_t *pool, const void *p)
{
    return arena_of(pool).blocks.count(p) != 0;
}
size_t max_frees_per_hold(ngx_slab_pool_t *pool)
{
    return arena_of(pool).max_frees;
}
void reset_max_frees(ngx_slab_pool_t *pool)
{
    arena_of(pool).max_frees = 0;
}

std::vector<LogLine> &log_lines()
{
    return log_state().lines;
}
void clear_log()
{
    log_state().lines.clear();
}

size_t count_log(ngx_uint_t level_or_above, const std::string &containing)
{
    size_t n = 0;
    for (const LogLine &l : log_state().lines) {
        if (l.level <= level_or_above && l.text.find(containing) != std::string::npos) n++;
    }
    return n;
}

std::string dump_log()
{
    static const char *const names[] = {"",     "emerg",  "alert", "crit", "error",
                                        "warn", "notice", "info",  "debug"};
    std::string out;
    for (const LogLine &l : log_state().lines) {
        out += std::string("[") + (l.level < 9 ? names[l.level] : "?") + "] " + l.text + "\n";
    }
    return out;
}

ngx_cycle_t *cycle()
{
    return &cycle_state().cycle;
}
ngx_log_t *log()
{
    return &cycle_state().log;
}
void set_pid_path(const std::string &path)
{
    cycle_state().set_pid(path);
}

void set_cycle_zones(std::vector<ngx_shm_zone_t> zones)
{
    CycleState &c = cycle_state();
    c.zones = std::move(zones);
    c.cycle.shared_memory.part.elts = c.zones.empty() ? nullptr : c.zones.data();
    c.cycle.shared_memory.part.nelts = c.zones.size();
    c.cycle.shared_memory.part.next = nullptr;
    c.cycle.shared_memory.last = &c.cycle.shared_memory.part;
}

void run_cleanups()
{
    CycleState &c = cycle_state();
    for (auto it = c.cleanups.rbegin(); it != c.cleanups.rend(); ++it) {
        if ((*it)->handler != nullptr) (*it)->handler((*it)->data);
    }
    c.cleanups.clear();
    c.pool_memory.clear();
}

}  // namespace ngxstub
