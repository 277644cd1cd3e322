#!/bin/sh
# Installs the Debian packages the build, tests and demo need, only those missing.
#   tools/install-deps.sh          build + test dependencies
#   tools/install-deps.sh fuzz     also clang for `make fuzz`
set -e
pkgs="nginx nginx-dev libpcre2-dev libssl-dev zlib1g-dev libhiredis-dev libgtest-dev g++ make perl
      curl openssl redis-server prometheus chromium valgrind faketime"
[ "${1:-}" = fuzz ] && pkgs="$pkgs clang libclang-rt-14-dev"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# Node.js (for the EventSource and browser tests) only when no node/npm is on PATH:
# a machine may carry a newer one from elsewhere, which Debian's npm would conflict with.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
