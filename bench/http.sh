#!/usr/bin/env bash
# The HTTP scenario, both sides in one sitting: runs per second through
# POST /workflows/chain/run (five-step chain) with keep-alive connections on loopback, from the
# same Rust load generator, against tidewater-server and against llama-agents-server 0.8
# (bench/http_peer.py, in bench/.venv-http). Prints the JSON lines and the ratio.
#
# usage: bench/http.sh [--conns N] [--seconds S]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
conns=16
seconds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) conns="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
venv="$here/.venv-http"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_agents.server" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "llama-agents-server>=0.8,<0.9"
fi
(cd "$root" && cargo build --release -q -p workflow-bench --bin http-bench)
bin="${CARGO_TARGET_DIR:-$root/target}/release/http-bench"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rs_port="$(port)"; py_port="$(port)"
"$bin" serve --port "$rs_port" >/dev/null 2>&1 & rs=$!
PORT="$py_port" "$venv/bin/python" "$here/http_peer.py" >/dev/null 2>&1 & py=$!
trap 'kill $rs $py 2>/dev/null || true' EXIT
for p in "$rs_port" "$py_port"; do
  for _ in $(seq 1 200); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$p/health')" 2>/dev/null && break
    sleep 0.1
  done
done
a="$("$bin" load --port "$rs_port" --conns "$conns" --seconds "$seconds" --label tidewater-server)"
b="$("$bin" load --port "$py_port" --conns "$conns" --seconds "$seconds" --label llama-agents-server)"
echo "$a"; echo "$b"
python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(f'ratio: {a[\"runs_per_s\"]/b[\"runs_per_s\"]:.0f}x')" "$a" "$b"
