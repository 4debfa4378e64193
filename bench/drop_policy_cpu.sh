#!/bin/bash
# drop_policy_cpu: the effect of capacity dropping and its policy (issue 8) on the CPU trainer:
# specs/ci-cpu.lua (byte-level tiny-shakespeare, one MoE layer of 4 experts, top-2) dropless and with
# capacity_factor 1.0 / 0.5 under drop_policy position / probability, seeds 1-3, 300 steps each;
# prints the final validation loss (mean ± sd over seeds) and the fraction of assignments dropped.
# About 2 minutes per variant-seed on one core; runs nproc at a time. Logs to $OUT.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/bench/results/raw/drop-policy-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
M=$REPO/build/moegen
[ -x "$M" ] || { echo "drop_policy_cpu: build first (make)"; exit 1; }
runs=()
for v in "dropless 0 position" "cf1-pos 1.0 position" "cf1-prob 1.0 probability" "cf05-pos 0.5 position" \
         "cf05-prob 0.5 probability"; do
    set -- $v
    for sd in 1 2 3; do
        f=$OUT/$1-s$sd.lua
        sed -e "s/name = \"ci-cpu\"/name = \"ci-cpu-$1\"/" -e "s/seed = 1 }/seed = $sd }/" \
            -e "s/every = 2, aux_loss = 0.01/every = 2, capacity_factor = $2, drop_policy = \"$3\", aux_loss = 0.01/" \
            "$REPO/specs/ci-cpu.lua" > "$f"
        grep -q "drop_policy = \"$3\"" "$f" && grep -q "seed = $sd }" "$f" || { echo "drop_policy_cpu: sed missed ($f)"; exit 1; }
        runs+=("$1-s$sd")
    done
done
printf '%s\n' "${runs[@]}" | xargs -P "$(nproc)" -I{} sh -c \
    "'$M' train '$OUT/{}.lua' --device cpu --run-dir '$OUT/run-{}' > '$OUT/{}.log' 2>&1 || echo 'FAIL {}'"
python3 - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
print(f"{'variant':10} {'seeds':>5} {'final val loss':>20} {'dropped (of assignments)':>25}")
for n in ["dropless", "cf1-pos", "cf1-prob", "cf05-pos", "cf05-prob"]:
    fl, dr = [], []
    for sd in (1, 2, 3):
        L = [json.loads(l) for l in open(os.path.join(out, f"run-{n}-s{sd}", "metrics.jsonl"))]
        fl.append([x["val_loss"] for x in L if "val_loss" in x][-1])
        dr.append(statistics.mean(x["dropped"] / (x["tokens"] * 2) for x in L))   # one MoE layer, k = 2
    print(f"{n:10} {len(fl):5d} {statistics.mean(fl):12.4f} ± {statistics.stdev(fl):.4f} {statistics.mean(dr):20.3f}")
PY
