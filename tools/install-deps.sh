#!/bin/sh
# Installs the Debian packages a make target needs, only those missing.
#   tools/install-deps.sh [GROUP...]     default: build
# Groups:
#   build     compile the module (`make`), also against an nginx tarball
#   test      `make test`: unit tests, the t/ suite (curl, redis-server, Chromium, Node.js...)
#   run       `make run`: the demo
#   valgrind  `make valgrind`
#   fuzz      `make fuzz`: clang and its libFuzzer runtime
#   deb       `make deb`: debhelper, lintian (the package's own build dependencies are
#             checked by dpkg-buildpackage against debian/control)
set -e
[ $# -eq 0 ] && set -- build

build="nginx nginx-dev libpcre2-dev libssl-dev zlib1g-dev libhiredis-dev g++ make"
pkgs=""
node=no
for group in "$@"; do
    case $group in
        build)    pkgs="$pkgs $build" ;;
        test)     pkgs="$pkgs $build libgtest-dev perl curl openssl redis-server prometheus chromium faketime"
                  node=yes ;;
        run)      pkgs="$pkgs $build curl" ;;
        valgrind) pkgs="$pkgs $build valgrind curl" ;;
        fuzz)     pkgs="$pkgs clang libclang-rt-14-dev" ;;
        deb)      pkgs="$pkgs $build debhelper dpkg-dev fakeroot lintian" ;;
        *)        echo "$0: unknown group '$group'" >&2; exit 2 ;;
    esac
done

missing=""
for p in $pkgs; do
    case " $missing " in *" $p "*) continue ;; esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# Node.js (for the EventSource and browser tests) only when no node/npm is on PATH:
# a machine may carry a newer one from elsewhere, which Debian's npm would conflict with.
if [ $node = yes ]; then
    command -v node >/dev/null 2>&1 || missing="$missing nodejs"
    command -v npm >/dev/null 2>&1 || missing="$missing npm"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
