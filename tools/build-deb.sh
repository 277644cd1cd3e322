#!/bin/sh
# Builds the Debian package (`make deb`): the files the package is made of are copied to
# STAGE/nginx-channels-VERSION/, dpkg-buildpackage -b builds there (debian/rules), and
# lintian checks the result; the .deb (and its -dbgsym) land in OUTDIR.
#   tools/build-deb.sh STAGE OUTDIR
# Build dependencies missing from debian/control's Build-Depends are installed from
# Debian (as root), like `apt-get build-dep` would for a source package.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 STAGE OUTDIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" "$2"
stage=$(cd "$1" && pwd)
out=$(cd "$2" && pwd)
package=libnginx-mod-http-channels
version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)

# dh_nginx makes the package depend on the nginx ABI that nginx-dev names; the installed
# nginx must provide that very ABI, or the package could not be installed next to it.
abi=$(sed -n 's/^nginx:abi=//p' /usr/share/nginx/src/debian/libnginx-mod.abisubstvars)
provided=$(dpkg-query -W -f='${Provides}' nginx | tr ',' '\n' | sed 's/^ *//; s/ .*//')
if [ -z "$abi" ] || ! printf '%s\n' "$provided" | grep -qx "$abi"; then
    echo "build-deb: nginx-dev names the ABI '$abi', the installed nginx provides:" $provided >&2
    echo "build-deb: install matching nginx and nginx-dev versions" >&2
    exit 1
fi

src=$stage/nginx-channels-$version
rm -rf "$stage"/*
mkdir -p "$src"
cd "$repo"
# What the package is made of (debian/rules and the .docs/.examples files name the rest).
cp -a --parents config config.make src debian conf-examples README.md www \
    tools/conf-compat t/lib/NginxCompat.pm "$src/"

cd "$src"
if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        dpkg-checkbuilddeps || true
        echo "build-deb: missing build dependencies (run as root, or install them)" >&2
        exit 1
    fi
    echo "build-deb: installing build dependencies"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get build-dep -y -qq "$src" >/dev/null
fi

dpkg-buildpackage -b -us -uc -j2 >"$stage/build.log" 2>&1 || {
    tail -40 "$stage/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (log: $stage/build.log)" >&2
    exit 1
}
deb=${package}_${version}_${arch}.deb
echo "build-deb: built $deb"
dpkg-deb --info "$stage/$deb" | sed -n 's/^ \(Depends\|Version\|Installed-Size\):/  \1:/p'

# lintian: errors fail the build; warnings and the rest are shown.
lintian --fail-on error --display-info "$stage/$deb" | tee "$stage/lintian.log" || {
    echo "build-deb: lintian reports errors (above)" >&2
    exit 1
}

for f in "$stage/$deb" "$stage/${package}-dbgsym_${version}_${arch}.deb"; do
    [ -f "$f" ] && cp "$f" "$out/"
done
echo "build-deb: $out/$deb"
