#!/usr/bin/env bash
# CI smoke test of the benchmark: every scenario at the tiny scale, on both tokio runtimes,
# results checked (the bench exits non-zero on a wrong result); timings are never judged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release -p workflow-bench --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release/workflow-bench"
for runtime in multi current; do
  "$bin" all --scale tiny --runtime "$runtime" > /dev/null
done
echo "bench smoke: every scenario correct at the tiny scale (multi-thread and current-thread runtimes)"
