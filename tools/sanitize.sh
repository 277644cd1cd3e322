#!/bin/sh
# Builds the module with AddressSanitizer + UndefinedBehaviorSanitizer into build/asan/ and
# runs the t/ suite against it (`make sanitize`).
#
#   tools/sanitize.sh                 build, then prove -r t/
#   tools/sanitize.sh build           build only
#   tools/sanitize.sh t/hostile.t ... build, then run only these test files
#
# The nginx binary stays Debian's /usr/sbin/nginx (unchanged, as deployed): build/asan/nginx-asan
# is a small wrapper that preloads GCC's ASan and UBSan runtimes into it. ASan must be the
# first library of the process, so it cannot arrive later through load_module's dlopen();
# LD_PRELOAD puts it first. nginx forks its workers without exec, so master and workers all
# run under the runtime; shared-memory (slab) allocations are not malloc and are invisible to
# ASan, everything in worker memory (request pools, std::string/vector, frames) is checked.
#
# Environment: NGINX_SRC (nginx-dev tree, default /usr/share/nginx/src), NGINX_BIN (the real
# nginx, default /usr/sbin/nginx), PROVE_JOBS (default 2), ASAN_OPTIONS / UBSAN_OPTIONS
# (defaults below; the harness passes its environment on to nginx unchanged),
# SANITIZE_BUILD (build directory, default build/asan), SANITIZE_EXTRA_FLAGS (added to the
# compile and link flags, e.g. -fno-sanitize=nonnull-attribute to look past one known finding;
# use another SANITIZE_BUILD for such a build).
#
# Reports: ASan/UBSan write to the process's stderr, which nginx points at its error log once
# the configuration is read (before that: logs/stderr.log). The harness fails a test on any
# "AddressSanitizer", "LeakSanitizer" or "runtime error:" line in either file.
set -eu
# The checks below use bash's process substitution: re-exec under bash when run by sh.
if [ -z "${BASH_VERSION:-}" ]; then
    exec bash "$0" "$@"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
NGINX_SRC=${NGINX_SRC:-/usr/share/nginx/src}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
PROVE_JOBS=${PROVE_JOBS:-2}
build=${SANITIZE_BUILD:-$repo/build/asan}
tree=$build/nginx
module=$build/ngx_http_channels_module.so
wrapper=$build/nginx-asan

# Same flags as the Makefile's normal build (Debian's), plus the sanitizers. -O1 and frame
# pointers keep stack traces readable; UBSan recovers (reports and goes on) so one run shows
# every finding, and the harness fails the test on the report line.
# (The Makefile passes its own DEBIAN_CC_OPT / DEBIAN_LD_OPT; these defaults are the same.)
DEBIAN_CC_OPT=${DEBIAN_CC_OPT:-'-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2'}
DEBIAN_LD_OPT=${DEBIAN_LD_OPT:-'-Wl,-z,relro -Wl,-z,now -fPIC'}
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer ${SANITIZE_EXTRA_FLAGS:-}"
CC_OPT="$DEBIAN_CC_OPT -O1 $SAN"
LD_OPT="$DEBIAN_LD_OPT $SAN"

# Leak checking is off: nginx frees its cycle pool wholesale at exit and keeps per-process
# allocations for the process' life, so LeakSanitizer reports nginx itself, not the module
# (tools/valgrind.sh looks at leaks in the module's own frames instead).
: "${ASAN_OPTIONS:=detect_leaks=0:abort_on_error=0:halt_on_error=1:allow_user_segv_handler=1:detect_odr_violation=0:print_summary=1}"
: "${UBSAN_OPTIONS:=print_stacktrace=1:halt_on_error=0}"
export ASAN_OPTIONS UBSAN_OPTIONS

libpath() {
    p=$(g++ -print-file-name="$1")
    [ -e "$p" ] || { echo "sanitize: $1 not found (apt-get install libasan8 libubsan1)" >&2; exit 1; }
    readlink -f "$p"
}

build_module() {
    mkdir -p "$build"
    if [ ! -f "$tree/objs/Makefile" ] || [ "$repo/config" -nt "$tree/objs/Makefile" ] \
        || [ "$0" -nt "$tree/objs/Makefile" ]; then
        rm -rf "$tree"
        mkdir -p "$tree"
        cp -a "$NGINX_SRC/." "$tree/"
        # configure runs its feature probes linked with the sanitizers: no leak reports there,
        # or a probe that does not free would be taken for a missing feature.
        (cd "$tree" && ASAN_OPTIONS=detect_leaks=0 sh "$repo/tools/configure-nginx.sh" \
            "$repo" "$CC_OPT" "$LD_OPT" >"$build/configure.log" 2>&1) || {
            tail -30 "$build/configure.log" >&2
            exit 1
        }
        # The module must carry the same binary signature as the nginx it loads into; the
        # signature comes from ngx_auto_config.h, so the feature probes must agree with the
        # normal build's.
        normal="$repo/build/nginx/objs/ngx_auto_config.h"
        if [ -f "$normal" ]; then
            if ! diff -q <(grep -v NGX_CONFIGURE "$normal") <(grep -v NGX_CONFIGURE "$tree/objs/ngx_auto_config.h") \
                >/dev/null 2>&1; then
                echo "sanitize: warning: build/asan's ngx_auto_config.h differs from build/nginx's" >&2
            fi
        fi
    fi
    ASAN_OPTIONS=detect_leaks=0 make -C "$tree" -f objs/Makefile modules >"$build/make.log" 2>&1 || {
        tail -40 "$build/make.log" >&2
        exit 1
    }
    cp "$tree/objs/ngx_http_channels_module.so" "$module.tmp"
    mv -f "$module.tmp" "$module"

    asan=$(libpath libasan.so)
    ubsan=$(libpath libubsan.so)
    cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# Debian's nginx with the sanitizer runtimes preloaded (written by tools/sanitize.sh).
export ASAN_OPTIONS="\${ASAN_OPTIONS:-$ASAN_OPTIONS}" UBSAN_OPTIONS="\${UBSAN_OPTIONS:-$UBSAN_OPTIONS}"
LD_PRELOAD="$asan:$ubsan\${LD_PRELOAD:+:\$LD_PRELOAD}" exec "$NGINX_BIN" "\$@"
EOF
    chmod +x "$wrapper.tmp"
    mv -f "$wrapper.tmp" "$wrapper"

    # The module must load: nginx -t with a minimal configuration.
    check=$(mktemp -d)
    mkdir -p "$check/logs"
    printf 'load_module %s;\nerror_log %s/logs/error.log;\npid %s/logs/nginx.pid;\nevents {}\nhttp { channel_zone zone=z:1m; }\n' \
        "$module" "$check" "$check" >"$check/nginx.conf"
    if ! "$wrapper" -p "$check/" -c "$check/nginx.conf" -t >"$check/out" 2>&1; then
        cat "$check/out" >&2
        rm -rf "$check"
        echo "sanitize: the ASan module does not load into $NGINX_BIN" >&2
        exit 1
    fi
    rm -rf "$check"
    echo "sanitize: built $module"
    echo "sanitize: nginx  $wrapper (LD_PRELOAD=$asan:$ubsan $NGINX_BIN)"
}

build_module
[ "${1:-}" = build ] && exit 0

cd "$repo"
# CHANNELS_SANITIZE tells tests that RSS figures are meaningless (ASan's quarantine).
export CHANNELS_MODULE="$module" NGINX_BIN="$wrapper" CHANNELS_SANITIZE=1
if [ $# -gt 0 ]; then
    exec prove -j"$PROVE_JOBS" "$@"
fi
exec prove -j"$PROVE_JOBS" -r t/
