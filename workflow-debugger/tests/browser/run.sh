#!/usr/bin/env bash
# The debugger page end to end: starts the example server on a free local port, drives the page
# in Debian's headless Chromium with playwright-core, saves a screenshot
# (target/debugger.png). Needs `chromium` and `node`/`npm` (.ci/run installs them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
here="$root/workflow-debugger/tests/browser"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --quiet -p examples --example server
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent)
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PORT="$port" "$target/debug/examples/server" > "$target/debugger-server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health')" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 node "$here/e2e.mjs" "http://127.0.0.1:$port" "$target/debugger.png"
