# Sourced by the scripts that drive the example server from outside (the official Python
# client's test, the debugger page's browser test): builds `cargo run --example server`,
# starts it on a free port of 127.0.0.1, waits for /health, and stops it when the calling
# script exits. Sets SERVER_URL and SERVER_LOG.
cargo build --quiet -p examples --example server ${EXAMPLE_FEATURES:+--features "$EXAMPLE_FEATURES"}
_target="${CARGO_TARGET_DIR:-target}"
_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SERVER_URL="http://127.0.0.1:$_port"
SERVER_LOG="${TMPDIR:-/tmp}/tidewater-server-$_port.log"
PORT="$_port" "$_target/debug/examples/server" >"$SERVER_LOG" 2>&1 &
_server_pid=$!
trap 'kill "$_server_pid" 2>/dev/null || true; wait "$_server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('$SERVER_URL/health')" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$_server_pid" 2>/dev/null; then
    echo "the example server exited; its log ($SERVER_LOG):" >&2
    cat "$SERVER_LOG" >&2
    exit 1
  fi
  sleep 0.1
done
