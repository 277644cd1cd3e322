#!/bin/sh
# Runs the demo (conf-examples/demo.conf) in the foreground: `make run`.
#   sh tools/run-demo.sh MODULE NGINX_BIN
# Environment (all optional): CHANNELS_DEMO_PORT (public, 8080), CHANNELS_DEMO_PUBLISH_PORT
# (internal, 8081), CHANNELS_DEMO_PREFIX (nginx prefix directory, build/demo).
set -eu

usage() {
    echo "usage: $0 MODULE NGINX_BIN" >&2
    exit 2
}
[ $# -eq 2 ] || usage

repo=$(cd "$(dirname "$0")/.." && pwd)
module=$1
nginx=$2
port=${CHANNELS_DEMO_PORT:-8080}
pub_port=${CHANNELS_DEMO_PUBLISH_PORT:-8081}
prefix=${CHANNELS_DEMO_PREFIX:-$repo/build/demo}

if [ ! -f "$module" ]; then
    echo "$0: module not found: $module (run make)" >&2
    exit 1
fi
if [ ! -x "$nginx" ]; then
    echo "$0: nginx binary not found: $nginx" >&2
    exit 1
fi
case $port$pub_port in
    *[!0-9]*) echo "$0: ports must be numbers" >&2; exit 2 ;;
esac

module=$(cd "$(dirname "$module")" && pwd)/$(basename "$module")
mkdir -p "$prefix/conf" "$prefix/logs"
prefix=$(cd "$prefix" && pwd)
ln -sfn "$repo/www" "$prefix/www"
# Started as root, nginx runs its workers as `nobody`, who must reach www/ and the prefix.
chmod 0755 "$prefix"
user_line=""
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1 &&
    ! runuser -u nobody -- test -r "$prefix/www/index.html" -a -x "$prefix" 2>/dev/null; then
    user_line="user root;"
    echo "note: user nobody cannot reach $prefix/www (a parent directory is private);" \
        "the demo's workers run as root" >&2
fi

# demo.conf with the module's absolute path, the chosen ports, the process settings of a
# foreground run, and temporary files inside the prefix.
sed -e "s#^load_module .*#load_module $module;\\
daemon off;\\
error_log stderr info;\\
pid logs/nginx.pid;\\
$user_line#" \
    -e "s#127\\.0\\.0\\.1:8080#127.0.0.1:$port#g" \
    -e "s#127\\.0\\.0\\.1:8081#127.0.0.1:$pub_port#g" \
    -e "s#^http {#http {\\
    access_log logs/access.log;\\
    client_body_temp_path $prefix/client_body_temp;\\
    proxy_temp_path $prefix/proxy_temp;\\
    fastcgi_temp_path $prefix/fastcgi_temp;\\
    uwsgi_temp_path $prefix/uwsgi_temp;\\
    scgi_temp_path $prefix/scgi_temp;#" \
    "$repo/conf-examples/demo.conf" >"$prefix/conf/nginx.conf"

cat <<MSG

  nginx-channels demo: http://127.0.0.1:$port/

  Try, in two other terminals:
    curl -N http://127.0.0.1:$port/events/demo
    curl -d 'hello' http://127.0.0.1:$pub_port/pub/demo

  nginx runs in the foreground (prefix $prefix); Ctrl-C stops it.
  (port taken? CHANNELS_DEMO_PORT=8090 CHANNELS_DEMO_PUBLISH_PORT=8091 make run)

MSG

exec "$nginx" -p "$prefix/" -c conf/nginx.conf -e stderr
