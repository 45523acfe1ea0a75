#!/usr/bin/env bash
# Durable runs/s on PostgreSQL with 1, 2 and 4 worker processes (pg-bench, release build), next
# to pgbench's commit rate on the same private server in the same sitting; prints a Markdown
# table (docs/benchmarks.md, "Scale-out on PostgreSQL").
#
# usage: bench/pg.sh [--runs M] [--per-worker K] [--seconds S] [--workers "1 2 4"]
#   --runs        runs per measurement (default 2000)
#   --per-worker  runs each worker process runs at a time (Runner::work(K); default 16)
#   --seconds     length of each pgbench measurement (default 10)
#   --workers     the worker counts (default "1 2 4"); pgbench runs with 4 clients per worker,
#                 as many connections as the workers' pools hold
#   --bin         a pg-bench binary already built (skips the release build; for a quick check)
#
# Starts its own PostgreSQL (Debian's initdb/pg_ctl/pgbench, as `postgres` when run as root) in
# a temp dir on a free port of 127.0.0.1, with the server's defaults (fsync on,
# synchronous_commit on), and removes it at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

runs=2000
per_worker=16
seconds=10
workers="1 2 4"
pg_bench=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --per-worker) per_worker="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --bin) pg_bench="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

bin_dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bin_dir/initdb" ] || { echo "PostgreSQL's server binaries are missing: apt-get install postgresql" >&2; exit 1; }
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi

dir="$(mktemp -d /tmp/tidewater-pgbench-XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
stop() { "${as_pg[@]}" "$bin_dir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap stop EXIT
"${as_pg[@]}" "$bin_dir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$bin_dir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
psql=("$bin_dir/psql" -h 127.0.0.1 -p "$port" -U postgres -qtAX)
"${psql[@]}" -d postgres -c "CREATE DATABASE bench" -c "CREATE DATABASE runs"

if [ -z "$pg_bench" ]; then
  echo "== building pg-bench (release)" >&2
  (cd "$root" && cargo build --release -q -p workflow-bench --features pg --bin pg-bench)
  pg_bench="${CARGO_TARGET_DIR:-$root/target}/release/pg-bench"
fi

echo "== pgbench -i" >&2
"$bin_dir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -q -s 4 bench >/dev/null 2>&1
server="$("${psql[@]}" -d postgres -c 'SHOW server_version')"
conninfo="host=127.0.0.1 port=$port user=postgres dbname=runs"

declare -A tpcb simple runs_s commits_s per_run rows_run
for n in $workers; do
  clients=$((4 * n))
  echo "== $n worker(s): pgbench TPC-B-like and -N with $clients clients (the workers' connections), pg-bench ($runs runs)" >&2
  tpcb[$n]="$("$bin_dir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -c "$clients" -j "$n" -T "$seconds" bench 2>/dev/null \
    | awk '/^tps/ {printf "%.0f", $3; exit}')"
  simple[$n]="$("$bin_dir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -N -c "$clients" -j "$n" -T "$seconds" bench 2>/dev/null \
    | awk '/^tps/ {printf "%.0f", $3; exit}')"
  line="$("$pg_bench" drive "$conninfo" --runs "$runs" --workers "$n" --per-worker "$per_worker")"
  echo "$line" >&2
  field() { echo "$line" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
  runs_s[$n]="$(field runs_per_s)"
  commits_s[$n]="$(field commits_per_s)"
  per_run[$n]="$(field commits_per_run)"
  rows_run[$n]="$(field rows_written_per_run)"
done

echo
echo "PostgreSQL $server, $(nproc) cores, fsync and synchronous_commit on; durable runs of a 3-step workflow, $runs per measurement, $per_worker at a time per worker process (4 connections each); pgbench for ${seconds} s per measurement with 4 clients per worker process"
echo
echo "| worker processes | durable runs/s | transactions/s of the workers (per run) | rows written per run | pgbench TPC-B-like tps | pgbench -N tps | durable runs per -N transaction |"
echo "|---|---|---|---|---|---|---|"
for n in $workers; do
  ratio="$(python3 -c "print(f'{${runs_s[$n]}/${simple[$n]}:.2f}' if ${simple[$n]} else '-')")"
  echo "| $n | ${runs_s[$n]} | ${commits_s[$n]} (${per_run[$n]}) | ${rows_run[$n]} | ${tpcb[$n]} | ${simple[$n]} | $ratio |"
done
