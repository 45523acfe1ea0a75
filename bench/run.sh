#!/usr/bin/env bash
# Runs the benchmark side by side: the framework and the hand-written tokio versions
# (workflow-bench, release build) and the Python peer (llama-index-workflows 2.26.1 in a venv),
# then prints one Markdown table. See docs/benchmarks.md.
#
# usage: bench/run.sh [--scale tiny|small|full] [--py-scale X] [--no-python] [--runtime multi|current]
#                     [--reps N] [--no-http] [--out DIR]
#   --scale     the Rust bench's scale (default: full)
#   --py-scale  the Python peer's scale argument (default: 0.2, i.e. 200 chain runs, 4000 loop
#               hops, 400 fan-out items, 200 concurrent runs); the Rust fan-out runs at the same
#               number of items per run, since the peer's collect grows worse than linearly
#   --no-python skip the peers (no venv, no pip)
#   --no-http   skip the HTTP scenario (bench/http.sh: tidewater-server vs llama-agents-server 0.8)
#   --out       keep the JSON lines in DIR (rust.jsonl, python.jsonl, table.md)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
shared="$(cd "$root/../shared" 2>/dev/null && pwd || true)"

scale=full
py_scale=0.2
python=1
http=1
runtime=multi
reps=()
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --py-scale) py_scale="$2"; shift 2 ;;
    --no-python) python=0; shift ;;
    --no-http) http=0; shift ;;
    --runtime) runtime="$2"; shift 2 ;;
    --reps) reps=(--reps "$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$out" ]; then
  out="$(mktemp -d)"
fi
mkdir -p "$out"

# The fan-out size the peer uses at this scale (its plan: 2000 * scale), so both run at equal N.
fan="$(python3 -c "print(max(1, int(2000 * float('$py_scale'))))")"

echo "== building workflow-bench (release)" >&2
(cd "$root" && cargo build --release -p workflow-bench --quiet)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="$target_dir/release/workflow-bench"

echo "== workflow-bench all --scale $scale --fan $fan --runtime $runtime" >&2
"$bin" all --scale "$scale" --fan "$fan" --runtime "$runtime" "${reps[@]}" | tee "$out/rust.jsonl" >&2

: > "$out/python.jsonl"
if [ "$python" = 1 ]; then
  if [ -z "$shared" ] || [ ! -f "$shared/bench/llamaindex_peer.py" ]; then
    echo "no ../shared/bench/llamaindex_peer.py beside the repository: skipping the Python peer" >&2
  else
    venv="$here/.venv"
    if [ ! -x "$venv/bin/python" ]; then
      echo "== creating $venv" >&2
      python3 -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("llama-index-workflows") != "2.26.1")' 2>/dev/null; then
      echo "== pip install llama-index-workflows==2.26.1" >&2
      "$venv/bin/pip" install --quiet --disable-pip-version-check 'llama-index-workflows==2.26.1' >&2
    fi
    echo "== python llamaindex_peer.py all $py_scale" >&2
    "$venv/bin/python" "$shared/bench/llamaindex_peer.py" all "$py_scale" | tee "$out/python.jsonl" >&2
  fi
fi

python3 "$here/table.py" "$out/rust.jsonl" "$out/python.jsonl" | tee "$out/table.md"

# The HTTP scenario: the same five-step chain served by tidewater-server and by the Python peer
# llama-agents-server 0.8, driven through POST /workflows/chain/run by one load generator.
if [ "$python" = 1 ] && [ "$http" = 1 ]; then
  for conns in 16 1; do
    echo "== bench/http.sh --conns $conns" >&2
    "$here/http.sh" --conns "$conns" | tee -a "$out/http.txt" >&2
  done
  python3 - "$out/http.txt" <<'PY' | tee -a "$out/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print()
print("| HTTP: POST /workflows/chain/run | connections | runs/s | ratio |")
print("|---|---:|---:|---:|")
for i in range(0, len(rows) - 1, 2):
    a, b = rows[i], rows[i + 1]
    conns = a.get("conns", "?")
    print(f"| {a['impl']} | {conns} | {a['runs_per_s']:.0f} | {a['runs_per_s'] / b['runs_per_s']:.0f}x |")
    print(f"| {b['impl']} | {conns} | {b['runs_per_s']:.0f} | 1x |")
PY
fi
echo >&2
echo "(JSON lines and table kept in $out)" >&2
