#!/usr/bin/env bash
# The debugger page end to end: starts the example server on a free local port, drives the page
# in Debian's headless Chromium with playwright-core, saves a screenshot
# (target/debugger.png). Needs `chromium` and `node`/`npm` (.ci/run installs them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
here="$root/workflow-debugger/tests/browser"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent)
fi
source .ci/example-server.sh
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 node "$here/e2e.mjs" "$SERVER_URL" "$target/debugger.png"
