#!/usr/bin/env python3
"""Summarise a valgrind DHAT profile: allocation sites by bytes live at the heap's peak (t-gmax),
or by total allocations (--total), with the first frames of our own crates.

usage: dhat_top.py DHAT_JSON [--per N] [--total] [--top K]
"""
import json, re, sys

args = sys.argv[1:]
path = args[0]
per = float(args[args.index("--per") + 1]) if "--per" in args else 1.0
top = int(args[args.index("--top") + 1]) if "--top" in args else 15
total = "--total" in args
d = json.load(open(path))
ftbl = d["ftbl"]
OWN = re.compile(r"tidewater::|workflow_bench::|tokio::|futures_util::")
SKIP = re.compile(r"alloc::alloc::|__rust|workflow_bench::alloc::|core::ptr::|alloc::boxed::Box<T>::new|exchange_malloc")

rows = []
for pp in d["pps"]:
    bytes_, blocks = (pp["tb"], pp["tbk"]) if total else (pp.get("gb", 0), pp.get("gbk", 0))
    if not blocks:
        continue
    frames = [ftbl[i] for i in pp["fs"]]
    own = [f for f in frames if OWN.search(f) and not SKIP.search(f)]
    rows.append((bytes_, blocks, own[:4]))
rows.sort(key=lambda r: -r[0])
all_bytes = sum(r[0] for r in rows)
all_blocks = sum(r[1] for r in rows)
what = "total allocated" if total else "live at peak"
print(f"{what}: {all_bytes / per:.1f} bytes in {all_blocks / per:.2f} blocks per unit (per={per:g})")
for bytes_, blocks, own in rows[:top]:
    print(f"{bytes_ / per:9.1f} B {blocks / per:6.2f} blk  avg {bytes_ / max(blocks, 1):7.1f} B")
    for f in own:
        f = re.sub(r"^0x[0-9A-F]+: ", "", f)
        print("        ", f[:150])
