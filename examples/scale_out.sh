#!/usr/bin/env bash
# Scale-out on PostgreSQL, end to end (docs/scale-out.md): starts a private PostgreSQL (Debian's
# initdb/pg_ctl, in a temp dir, 127.0.0.1 only), two worker processes, enqueues a batch of 20
# orders, kills worker A with SIGKILL in the middle, and shows every order finishing, A's
# unfinished ones on worker B.
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
"$ex" enqueue "$db" 20

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
