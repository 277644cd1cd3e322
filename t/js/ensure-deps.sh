#!/bin/sh
# Installs t/js's npm packages (package-lock.json) unless they are there; one process at a
# time (test files run in parallel). A marker written after `npm ci` finished says they are
# complete: the package directories appear while npm is still extracting them.
# Prints nothing on success when nothing was needed.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
marker="$dir/node_modules/.complete"
[ -f "$marker" ] && [ "$marker" -nt "$dir/package-lock.json" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "npm not found (Debian packages nodejs and npm)" >&2; exit 1; }
exec 9>"$dir/.npm-install.lock"
flock 9
if [ ! -f "$marker" ] || [ ! "$marker" -nt "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
    touch "$marker"
fi
