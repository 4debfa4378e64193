#!/usr/bin/env python3
"""runstats: figures the bench scripts read from a run's metrics.jsonl (one JSON object per step).

  runstats.py tokps FILE   steady tokens/s: steps 6 .. N-1 (warm-up, and the last step's eval and
                           checkpoint, left out); steps 2 .. N-1 for runs of 8 steps or fewer
  runstats.py cv FILE      per-layer expert-load CV (std/mean) averaged over the last 10% of steps
"""
import json
import statistics
import sys


def load(path):
    return [json.loads(line) for line in open(path)]


def tokps(rows):
    s = rows[5:-1] if len(rows) > 8 else rows[1:-1]
    t0 = rows[rows.index(s[0]) - 1]["elapsed_s"]
    return sum(x["tokens"] for x in s) / (s[-1]["elapsed_s"] - t0)


def load_cv(rows):
    moe = [x for x in rows if "moe" in x]
    last = moe[int(len(moe) * 0.9):]
    return [statistics.mean(x["moe"][i]["cv"] for x in last) for i in range(len(last[0]["moe"]))] if last else []


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("tokps", "cv"):
        sys.exit(__doc__)
    rows = load(sys.argv[2])
    if sys.argv[1] == "tokps":
        print(f"{tokps(rows):.0f}")
    else:
        print(" ".join(f"{c:.3f}" for c in load_cv(rows)))
