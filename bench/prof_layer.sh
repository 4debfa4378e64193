#!/bin/bash
# prof_layer: the generated MoE layer's kernels one by one (Nsight Compute, gpu__time_duration
# only, clocks not locked) over mg_bench_layer's three modes of a bench shape; read us/launch.
#   bench/prof_layer.sh [SHAPE...]      default: small olmoe          (about 1 min a shape)
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
export OUT=${OUT:-$REPO/bench/results/raw/prof-layer-$(date +%Y%m%d-%H%M)}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "prof_layer: no ncu here"; exit 1; }
(cd "$REPO" && make -j"$(nproc)" all bench > /tmp/build-prof.log 2>&1) || { tail -30 /tmp/build-prof.log; exit 1; }
for sh in ${*:-small olmoe}; do
    "$NCU" --csv --page raw --metrics gpu__time_duration.sum --clock-control none --print-units base \
        --log-file "$OUT/ncu-$sh.csv" "$REPO/build/bench/mg_bench_layer" --shape "$sh" --runs 3 --warmup 1 \
        > "$OUT/bench-$sh.log" 2>&1
    echo "=== $sh (ncu rc=$?)"
    python3 "$REPO/bench/ncu_sum.py" "$OUT/ncu-$sh.csv" | tee "$OUT/prof-$sh.txt"
done
