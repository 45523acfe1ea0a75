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

source .ci/example-server.sh
SERVER_URL="$SERVER_URL" "$VENV/bin/python" workflow-server/tests/python/test_client.py
