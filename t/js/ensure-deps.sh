#!/bin/sh
# Installs t/js's npm packages (package-lock.json) unless they are there; one process at a
# time (test files run in parallel). Prints nothing on success when nothing was needed.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
[ -d "$dir/node_modules/playwright-core" ] && [ -d "$dir/node_modules/eventsource" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "npm not found (Debian packages nodejs and npm)" >&2; exit 1; }
exec 9>"$dir/.npm-install.lock"
flock 9
if [ ! -d "$dir/node_modules/playwright-core" ] || [ ! -d "$dir/node_modules/eventsource" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
