#!/usr/bin/env python3
"""bar_table: issue 4's bar table from one gpu-check bench call (bench/gpu-check.sh).

Reads, from the call's folder, every round of the generated layer (layer.csv, layer-r2.csv, ...)
and of the torch `_grouped_mm` peer (peer.json, peer-r2.json, ...), both fwd+bwd medians, and
the cuBLASLt dense chain and 8192^3 ceiling (bench-dense.log, the DENSE CSV lines). A round is
one run of each, ours first; the rounds alternate, so slow drift of the card's clock under its
power cap reaches both. Per shape it prints every round's ratio peer/ours, then the median of
the round ratios, which is what the bar is judged on (>= 1.17 on Mixtral, >= 1.3 elsewhere).

usage: python3 bench/bar_table.py DIR
"""
import csv
import glob
import json
import os
import re
import statistics
import sys

BARS = {"mixtral": 1.17, "olmoe": 1.3, "finegrained": 1.3, "small": 1.3}


def rounds(d, stem, ext):
    """stem.ext, then stem-r2.ext, stem-r3.ext, ... in round order"""
    first = os.path.join(d, f"{stem}.{ext}")
    rest = glob.glob(os.path.join(d, f"{stem}-r*.{ext}"))
    rest.sort(key=lambda p: int(re.search(r"-r(\d+)\." + ext + "$", p).group(1)))
    return ([first] if os.path.exists(first) else []) + rest


def ours(path):
    with open(path) as f:
        return {r["shape"]: (float(r["median_ms"]), float(r["flop"])) for r in csv.DictReader(f) if r["mode"] == "fwd+bwd"}


def peer(path):
    with open(path) as f:
        return {s["name"]: s["grouped"]["fwd_bwd_ms"] for s in json.load(f)["shapes"]}


def dense(path):
    chain, ceiling = {}, None
    if not os.path.exists(path):
        return chain, ceiling
    for line in open(path):
        f = line.strip().split(",")
        if len(f) >= 15 and f[1] == "ceiling" and f[2] == "gemm_bf16_8192":
            ceiling = float(f[13])
        elif len(f) >= 15 and f[1] == "chain":
            chain[f[2]] = float(f[11])
    return chain, ceiling


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    d = sys.argv[1]
    lo, pe = [ours(p) for p in rounds(d, "layer", "csv")], [peer(p) for p in rounds(d, "peer", "json")]
    n = min(len(lo), len(pe))
    if n == 0:
        sys.exit(f"bar_table: {d}: no layer.csv / peer.json pair")
    chain, ceiling = dense(os.path.join(d, "bench-dense.log"))
    print(f"{n} round(s); ratio = torch _grouped_mm / moegen, fwd+bwd medians; bar on the median round ratio")
    print(f"{'shape':12s} {'moegen ms':>10s} {'torch ms':>9s}  {'rounds (peer/ours)':28s} {'median':>6s}  {'bar':>5s}"
          f"  {'chain ms':>8s}  {'of ceiling':>10s}")
    ok = True
    for shape in BARS:
        rs = [(lo[i][shape][0], pe[i][shape]) for i in range(n) if shape in lo[i] and shape in pe[i]]
        if not rs:
            continue
        ratios = [p / o for o, p in rs]
        med = statistics.median(ratios)
        mo, mp = statistics.median(o for o, _ in rs), statistics.median(p for _, p in rs)
        flop = lo[0][shape][1]
        ceil = f"{flop / (mo * 1e-3) / 1e12 / ceiling:.0%}" if ceiling else "-"
        passed = med >= BARS[shape]
        ok &= passed
        print(f"{shape:12s} {mo:10.3f} {mp:9.3f}  {' '.join(f'{r:.3f}' for r in ratios):28s} {med:6.3f}  "
              f"{'>=' if passed else '< '}{BARS[shape]:.2f}  {chain.get(shape, float('nan')):8.3f}  {ceil:>10s}")
    if ceiling:
        print(f"ceiling: cuBLASLt bf16 8192^3 {ceiling:.1f} TFLOP/s (same call)")
    print("all bars met" if ok else "bar NOT met on at least one shape")
    return 0


if __name__ == "__main__":
    sys.exit(main())
