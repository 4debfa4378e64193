#!/bin/bash
# prof_train: where one GPU training step of a spec spends its time, kernel by kernel. Nsight
# Systems is not on the device machines, so this uses Nsight Compute with one metric
# (gpu__time_duration.sum, clocks not locked) over STEPS steps, then sums the kernels by name.
# The first step (JIT, cuBLASLt heuristics, allocator) is excluded by counting launches per step.
#   bench/prof_train.sh [SPEC] [STEPS]     e.g. bench/prof_train.sh wt2-moe8 4   (about 2 min)
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
spec=${1:-wt2-moe8}; steps=${2:-4}
export OUT=${OUT:-$REPO/bench/results/raw/prof-$spec-$(date +%Y%m%d-%H%M)}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} MOEGEN_DATA_DIR=$REPO/data/shared
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "prof_train: no ncu here"; exit 1; }
(cd "$REPO" && make -j"$(nproc)" all > /tmp/build-prof.log 2>&1) || { tail -30 /tmp/build-prof.log; exit 1; }
M=$REPO/build/moegen
W=$(mktemp -d /tmp/prof.XXXX) && cd "$W" || exit 1
"$M" data --corpus wikitext-2 --tokenizer word -o wikitext-2 > "$OUT/data.log" 2>&1 || { cat "$OUT/data.log"; exit 1; }
# the same run without the profiler: its step time is the wall figure the kernels must add up to
"$M" train "$REPO/specs/$spec.lua" --steps 30 --no-save --run-dir "$W/plain" > "$OUT/plain.log" 2>&1
cp "$W/plain/metrics.jsonl" "$OUT/plain-metrics.jsonl" 2>/dev/null
"$NCU" --csv --page raw --metrics gpu__time_duration.sum --clock-control none --print-units base \
    --log-file "$OUT/ncu.csv" "$M" train "$REPO/specs/$spec.lua" --steps "$steps" --no-save --run-dir "$W/run" \
    > "$OUT/train.log" 2>&1
echo "ncu rc=$?"
python3 "$REPO/bench/ncu_sum.py" "$OUT/ncu.csv" --between lm_util_bf16_gnorm | tee "$OUT/prof.txt"
python3 - "$OUT/plain-metrics.jsonl" <<'PY' | tee -a "$OUT/prof.txt"
import json, sys
L = [json.loads(l) for l in open(sys.argv[1])]
st = sorted(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(L[5:], L[6:]))
print(f"plain run (no profiler): median step {st[len(st) // 2] * 1e3:.2f} ms wall, {L[-1]['tokens']} tokens/step")
PY
