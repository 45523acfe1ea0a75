#!/usr/bin/env bash
# Scale-out on PostgreSQL, end to end (docs/scale-out.md): starts a private PostgreSQL (Debian's
# initdb/pg_ctl, in a temp dir, 127.0.0.1 only), two worker processes and an API-only server,
# starts a batch of 20 orders through the server's HTTP API (the server enqueues them; the
# workers run them), kills worker A with SIGKILL in the middle, and shows every order
# finishing, A's unfinished ones on worker B, and the server reporting all 20 completed.
#
# usage: examples/scale_out.sh        (as root, the server runs as `postgres`)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bin_dir/initdb" ] || { echo "PostgreSQL's server binaries are missing: apt-get install postgresql" >&2; exit 1; }
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi

dir="$(mktemp -d /tmp/tidewater-scale-out-XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true; done
  "${as_pg[@]}" "$bin_dir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== PostgreSQL on 127.0.0.1:$port"
"${as_pg[@]}" "$bin_dir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$bin_dir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
"$bin_dir/psql" -h 127.0.0.1 -p "$port" -U postgres -qtAX -d postgres -c "CREATE DATABASE runs"
db="host=127.0.0.1 port=$port user=postgres dbname=runs"

echo "== building the example"
(cd "$root" && cargo build -q -p examples --example scale_out)
ex="${CARGO_TARGET_DIR:-$root/target}/debug/examples/scale_out"

echo "== two workers"
"$ex" worker "$db" worker-a > "$dir/a.log" & pids+=($!); a=$!
"$ex" worker "$db" worker-b > "$dir/b.log" & pids+=($!)

echo "== an API-only server (it runs nothing: starts are enqueued for the workers)"
http_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
api="http://127.0.0.1:$http_port"
"$ex" serve "$db" "$http_port" > "$dir/server.log" 2>&1 & pids+=($!)
for _ in $(seq 1 300); do curl -sf "$api/health" >/dev/null && break; sleep 0.05; done
curl -sf "$api/health" >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
echo "== 20 orders started through the server's HTTP API"
for order in $(seq 0 19); do
  id="$(printf 'order-%02d' "$order")"
  curl -sf "$api/workflows/orders/run-nowait" -H 'content-type: application/json' \
    -d "{\"handler_id\": \"$id\", \"start_event\": $order}" >/dev/null
done

# Let the batch get going, then kill worker A in the middle of its runs: once it has shipped
# an order and is in the middle of a payment.
for _ in $(seq 1 300); do
  if [ "$(grep -c ' ship done' "$dir/a.log" || true)" -ge 1 ] && tail -1 "$dir/a.log" | grep -q ' pay ('; then
    break
  fi
  sleep 0.02
done
echo "== kill -9 worker A (pid $a) after it shipped $(grep -c ' ship done' "$dir/a.log" || true) orders"
{ kill -9 "$a" && wait "$a"; } 2>/dev/null || true

"$ex" watch "$db" 20 | tee "$dir/watch.log" | grep -v '^\[watch\] order-'

echo
echo "== who shipped what"
echo "worker A shipped $(grep -c 'shipped by worker-a' "$dir/watch.log") orders before it died; worker B shipped $(grep -c 'shipped by worker-b' "$dir/watch.log")"
echo "A's runs that B finished: B ran again the steps whose completion A had not committed"
echo "(at least once execution), and none that A had committed (each completion committed once):"
for key in $(grep -o 'order-[0-9]*' "$dir/a.log" | sort -u); do
  if grep -q "\[watch\] $key: .*worker-b" "$dir/watch.log"; then
    began_a="$(grep " $key " "$dir/a.log" | grep -v ' done$' | awk '{print $3}' | paste -sd, -)"
    ended_a="$(grep " $key .* done$" "$dir/a.log" | awk '{print $3}' | paste -sd, -)"
    ran_b="$(grep " $key .* done$" "$dir/b.log" | awk '{print $3}' | paste -sd, -)"
    echo "  $key: A began [$began_a], ended [${ended_a:-}]; B ran [$ran_b]"
  fi
done
[ "$(grep -c 'shipped by' "$dir/watch.log")" = 20 ] && echo "== all 20 orders finished"
echo "== the server's view (GET /handlers), which ran none of them"
curl -sf "$api/handlers" | python3 -c '
import collections, json, sys
handlers = json.load(sys.stdin)["handlers"]
print(dict(collections.Counter(h["status"] for h in handlers)), "of", len(handlers), "handlers")
done = [h for h in handlers if h["status"] == "completed"]
if done:
    h = sorted(done, key=lambda h: h["handler_id"])[0]
    print(h["handler_id"], "->", h["result"]["value"]["result"])
'
[ "$(curl -sf "$api/handlers?status=completed" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["handlers"]))')" = 20 ]
