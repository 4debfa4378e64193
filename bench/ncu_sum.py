#!/usr/bin/env python3
"""ncu_sum: sums an Nsight Compute CSV (--csv --page raw --metrics gpu__time_duration.sum
--print-units base) by kernel name.

  ncu_sum.py FILE.csv [--block | --between NAME]
      --block         only the last repeating block of launches (one fwd+bwd of a benchmark loop)
      --between NAME  only the launches after the second-to-last kernel whose name holds NAME, up to
                      and including the last one (one training step: NAME = a once-per-step kernel)
"""
import collections, csv, sys


def main():
    path, block = sys.argv[1], "--block" in sys.argv[2:]
    mark = sys.argv[sys.argv.index("--between") + 1] if "--between" in sys.argv else None
    rows = list(csv.reader(l for l in open(path) if l.startswith('"')))
    if not rows:
        print(f"ncu_sum: no rows in {path}"); return 1
    h = rows[0]
    body = [r for r in rows[1:] if len(r) == len(h) and r[h.index("ID")].isdigit()]
    ki, ti = h.index("Kernel Name"), h.index("gpu__time_duration.sum")
    names = [r[ki] for r in body]
    n, per = len(names), None
    if block:   # the shortest tail block that repeats right before itself
        for c in range(1, n // 2 + 1):
            if names[n - c:] == names[n - 2 * c:n - c]:
                per = c
                break
    sel = body[n - per:] if per else body
    if mark:
        at = [i for i, k in enumerate(names) if mark in k]
        if len(at) < 2:
            print(f"ncu_sum: fewer than two launches of {mark}"); return 1
        sel, per = body[at[-2] + 1:at[-1] + 1], at[-1] - at[-2]
    tot = sum(float(r[ti].replace(",", "")) for r in sel)
    agg = collections.defaultdict(lambda: [0, 0.0])
    for r in sel:
        k = r[ki].split("(")[0][:70]
        agg[k][0] += 1
        agg[k][1] += float(r[ti].replace(",", ""))
    print(f"{n} launches; {'one repeating block = %d launches, ' % per if per else ''}"
          f"{tot / 1e6:.3f} ms of kernel time summed")
    print(f"{'kernel':70s} {'n':>5s} {'ms':>9s} {'share':>6s} {'us/launch':>10s}")
    for k, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"{k:70s} {c:5d} {t / 1e6:9.3f} {100 * t / tot:5.1f}% {t / c / 1e3:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
