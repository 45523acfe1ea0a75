#!/usr/bin/env bash
# Reproducible hot-path profile: instructions per unit (callgrind) for each run scenario and
# implementation on the current-thread runtime, and the allocation sites (DHAT) of the
# framework. Instruction counts do not depend on the machine's load, unlike timings.
#
# usage: bench/profile.sh [OUT_DIR]     (needs valgrind; takes a few minutes)
# Per unit = (instructions at the small scale - at the tiny scale) / (units small - units tiny),
# so the process's fixed start-up cost cancels out.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}-profile"
(cd "$root" && CARGO_PROFILE_RELEASE_DEBUG=true CARGO_TARGET_DIR="$target" \
  cargo build --release -p workflow-bench --quiet)
bin="$target/release/workflow-bench"

count() { # scenario impl scale -> instructions
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1.$2.$3.out" \
    "$bin" "$1" --scale "$3" --runtime current --profile "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
# units per scale, as in Plan::of (tiny, small)
declare -A tiny=([chain]=50 [loop]=1000 [fanout]=80 [concurrent]=100)
declare -A small=([chain]=2000 [loop]=100000 [fanout]=10000 [concurrent]=2000)
printf '%-12s %-18s %14s\n' scenario impl instr/unit
for sc in chain loop fanout concurrent; do
  for imp in framework handwritten handwritten_1task; do
    a="$(count "$sc" "$imp" tiny)"
    b="$(count "$sc" "$imp" small)"
    printf '%-12s %-18s %14.0f\n' "$sc" "$imp" "$(python3 -c "print(($b - $a) / (${small[$sc]} - ${tiny[$sc]}))")"
  done
done | tee "$out/instructions.txt"

# Where the framework's bytes go: allocation sites per unit, and per parked run.
for sc in loop chain fanout; do
  valgrind --tool=dhat --dhat-out-file="$out/dhat.$sc.json" "$bin" "$sc" --scale tiny \
    --runtime current --profile framework > /dev/null 2>&1
done
valgrind --tool=dhat --dhat-out-file="$out/dhat.memory.json" "$bin" memory --scale small \
  --runtime current --profile framework > /dev/null 2>&1
{
  echo "== loop: allocated per hop";   python3 "$here/tools/dhat_top.py" "$out/dhat.loop.json" --total --per 1000 --top 4
  echo "== chain: allocated per run";  python3 "$here/tools/dhat_top.py" "$out/dhat.chain.json" --total --per 50 --top 8
  echo "== fanout: allocated per item"; python3 "$here/tools/dhat_top.py" "$out/dhat.fanout.json" --total --per 80 --top 8
  echo "== memory: live per parked run"; python3 "$here/tools/dhat_top.py" "$out/dhat.memory.json" --per 2000 --top 10
} | tee "$out/allocations.txt"
echo "(callgrind and DHAT files in $out; callgrind_annotate $out/cg.loop.framework.small.out)" >&2
