#!/bin/sh
# Installs the Debian packages the build, tests and demo need, only those missing.
set -e
pkgs="nginx nginx-dev libpcre2-dev libssl-dev zlib1g-dev libhiredis-dev libgtest-dev g++ make perl curl openssl"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
