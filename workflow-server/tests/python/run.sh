#!/usr/bin/env bash
# The official Python client against the Rust example server: creates a venv with
# `llama-agents-client` from PyPI (once), starts `cargo run --example server` on a free port,
# runs test_client.py, stops the server. Exits non-zero when any check fails.
set -euo pipefail
cd "$(dirname "$0")/../../.."
VENV="${PYTHON_CLIENT_VENV:-target/python-client-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_agents.client" 2>/dev/null; then
  echo "== creating $VENV with llama-agents-client from PyPI"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check llama-agents-client
fi
"$VENV/bin/pip" show llama-agents-client 2>/dev/null | grep -E "^(Name|Version)" | tr '\n' ' '; echo

cargo build -q --example server
BIN="${CARGO_TARGET_DIR:-target}/debug/examples/server"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PORT="$PORT" "$BIN" >"${TMPDIR:-/tmp}/tidewater-server-$PORT.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health')" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
SERVER_URL="http://127.0.0.1:$PORT" "$VENV/bin/python" workflow-server/tests/python/test_client.py
