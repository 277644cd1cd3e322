#!/bin/sh
# Builds an instrumented copy of the module (for the review tests that measure lock holds):
# ZoneLock logs "LOCKHOLD <function> <us> us" at notice level whenever a hold lasts 300 us or
# more. The copy is made from the committed tree (git archive HEAD) into build/lockhold/, so
# src/ is not touched.
#
#   t/review/lockhold.sh            build; prints the module's path
#   CHANNELS_MODULE=$PWD/build/lockhold/build/ngx_http_channels_module.so prove -v t/review-log-walk.t
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/build/lockhold
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
(cd "$repo" && git archive HEAD src config config.make Makefile tools) | tar -x -C "$out.tmp"
python3 - "$out.tmp" <<'PY'
import sys
d = sys.argv[1]
h = open(d + '/src/ngx_http_channels_zone_ops.h').read()
h = h.replace("explicit ZoneLock(ShmStore &store);",
              "explicit ZoneLock(ShmStore &store, const char *fn = __builtin_FUNCTION());")
h = h.replace("    bool rebuilt_ = false;\n};", "    bool rebuilt_ = false;\n    const char *fn_;\n    uint64_t t0_;\n};", 1)
open(d + '/src/ngx_http_channels_zone_ops.h', 'w').write(h)
c = open(d + '/src/ngx_http_channels_zone_ops.cpp').read()
c = c.replace('#include <cstring>', '#include <cstring>\n#include <time.h>')
c = c.replace("ZoneLock::ZoneLock(ShmStore &store) : store_(store), pool_(store.pool()) {\n    ngx_shmtx_lock(&pool_->mutex);",
"""static uint64_t lockhold_now_us() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
}
ZoneLock::ZoneLock(ShmStore &store, const char *fn) : store_(store), pool_(store.pool()), fn_(fn) {
    ngx_shmtx_lock(&pool_->mutex);
    t0_ = lockhold_now_us();""")
c = c.replace("""ZoneLock::~ZoneLock() {
    sh_->updating = 0;
    ngx_shmtx_unlock(&pool_->mutex);""", """ZoneLock::~ZoneLock() {
    sh_->updating = 0;
    uint64_t held = lockhold_now_us() - t0_;
    ngx_shmtx_unlock(&pool_->mutex);
    if (held >= 300) ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0, "LOCKHOLD %s %uL us", fn_, held);""")
assert 'LOCKHOLD' in c and '__builtin_FUNCTION' in h
open(d + '/src/ngx_http_channels_zone_ops.cpp', 'w').write(c)
PY
rm -rf "$out"
mv "$out.tmp" "$out"
make -C "$out" >"$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
echo "$out/build/ngx_http_channels_module.so"
