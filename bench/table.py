#!/usr/bin/env python3
"""Joins the JSON lines of workflow-bench and of the Python peer into one Markdown table.

usage: table.py RUST_JSONL [PYTHON_JSONL]

Throughputs are units per second (runs, event hops or work items; see docs/benchmarks.md).
A ratio above 1 means the framework is faster.
"""
import json
import sys

ORDER = [
    ("chain5_sequential_runs", "runs/s"),
    ("loop_events_one_run", "hops/s"),
    ("fanout_collect", "items/s"),
    ("chain5_concurrent_runs", "runs/s"),
]


def read(path):
    lines = []
    if path:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    lines.append(json.loads(line))
    return lines


def fmt_rate(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:.2f}" if r < 100 else f"{r:.0f}"


def main():
    rust = read(sys.argv[1])
    py = read(sys.argv[2] if len(sys.argv) > 2 else None)
    rate = {(r["scenario"], r["impl"]): r for r in rust if "impl" in r}
    pyrate = {r["scenario"]: r for r in py}
    print("| scenario | unit | framework | hand-written (tasks) | hand-written (1 task) | Python peer "
          "| framework / hand-written | framework / 1-task | framework / Python |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, unit in ORDER:
        fw = rate.get((name, "framework"))
        hw = rate.get((name, "handwritten"))
        h1 = rate.get((name, "handwritten_1task"))
        p = pyrate.get(name)
        if not fw:
            continue
        g = lambda r: r["per_sec"] if r else None
        n = f"n={fw['n']}" + (f", Python n={p['n']}" if p else "")
        print(f"| `{name}` ({n}) | {unit} | {fmt_rate(g(fw))} | {fmt_rate(g(hw))} | {fmt_rate(g(h1))} "
              f"| {fmt_rate(g(p))} | **{fmt_ratio(g(fw), g(hw))}** | {fmt_ratio(g(fw), g(h1))} "
              f"| {fmt_ratio(g(fw), g(p))} |")
    fw = rate.get(("suspended_run_memory", "framework"))
    hw = rate.get(("suspended_run_memory", "handwritten"))
    if fw:
        b = lambda r: r["bytes_per_run"] if r else None
        hand = f"{b(hw):.0f} B" if hw else "–"
        ratio = f"{b(fw) / b(hw):.1f}× the bytes" if hw else "–"
        verdict = "met" if b(fw) <= 1024 else f"missed by {b(fw) - 1024:.0f} B"
        print(f"| `suspended_run_memory` (n={fw['n']}) | bytes/parked run | {b(fw):.0f} B "
              f"({fw['allocs_per_run']:.0f} allocs) | {hand} | – | not measured by the peer "
              f"| **{ratio}** (target ≤ 1024 B: {verdict}) | – | – |")
    # Allocations per unit: the budget is "no allocation beyond the event itself".
    print()
    print("| scenario | allocations per unit: framework | hand-written (tasks) | hand-written (1 task) |")
    print("|---|--:|--:|--:|")
    for name, _ in ORDER:
        cells = []
        for imp in ("framework", "handwritten", "handwritten_1task"):
            r = rate.get((name, imp))
            cells.append(f"{r['allocs_per_unit']:.2f}" if r else "–")
        if any(c != "–" for c in cells):
            print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
