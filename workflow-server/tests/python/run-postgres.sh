#!/usr/bin/env bash
# The official Python client's test (run.sh) against the example server on PostgreSQL
# (`--features postgres`, `POSTGRES=<conninfo>`): starts a private PostgreSQL (Debian's
# initdb/pg_ctl, in a temp dir, on a free port of 127.0.0.1, as `postgres` when run as root),
# runs run.sh, stops and removes the database.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then BIN="$(dirname "$(command -v initdb)")"; fi
DIR="$(mktemp -d "${TMPDIR:-/tmp}/tidewater-python-pg.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
stop() {
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap stop EXIT
as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres --no-sync >/dev/null
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null
echo "== PostgreSQL on 127.0.0.1:$PORT"
POSTGRES="host=127.0.0.1 port=$PORT user=postgres dbname=postgres" EXAMPLE_FEATURES=postgres \
  workflow-server/tests/python/run.sh
# The server did keep its handlers in the database.
HANDLERS="$("$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
  "SELECT count(*) FROM tidewater_server_handlers")"
echo "== handlers in the database: $HANDLERS"
[ "$HANDLERS" -gt 0 ]
