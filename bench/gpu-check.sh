#!/bin/bash
# gpu-check: everything that needs a GPU, in one call on the device machine.
# Builds, runs the GPU selftests (+ the sm_80 fallback), compute-sanitizer, and the
# benchmarks (generated layer, cuBLASLt dense chain, PyTorch peers) in the same run.
# Logs go to $OUT (default bench/results/raw/<date>). Sections: build selftest sanitize bench
# usage: bash bench/gpu-check.sh [section...]     (default: all)
set -u
OUT=${OUT:-bench/results/raw/$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
sections=${*:-build selftest sanitize bench}
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
step() { # name timeout_s log command...
    local name=$1 t=$2 log=$3; shift 3
    local s=$(date +%s)
    timeout "$t" "$@" > >(tee -a "$OUT/$log") 2>&1
    local rc=$?
    note "$(printf '%-40s rc=%-3d %4ds' "$name" $rc $(( $(date +%s) - s )))"
    return $rc
}
has() { [[ " $sections " == *" $1 "* ]]; }

note "gpu-check $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
# (a clean export carries its commit in COMMIT: bench/device.sh, and has no .git of its own)
note "commit $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"

if has build; then
    make -j"$(nproc)" all bench > /tmp/build.log 2>&1 || { tail -40 /tmp/build.log; exit 1; }; note "build ok"
fi
if has selftest; then
    # Every shipped spec; the CPU reference's work per case is capped so huge specs stay quick.
    for s in specs/*.lua; do
        MOEGEN_SELFTEST_BUDGET=${MOEGEN_SELFTEST_BUDGET:-1e9} \
            step "selftest $(basename $s .lua)" 240 selftest.log build/moegen selftest $s --seed 11
    done
fi
if has examples; then
    step "examples: embed-c (bundle, sm_90a cubin)" 120 examples.log sh -c 'make -C examples/embed-c && examples/embed-c/build/embed-c'
    step "examples: embed-c (PTX JIT fallback)" 120 examples.log examples/embed-c/build/embed-c --image ptx --tokens 1000
    step "examples: embed-c under memcheck" 200 examples.log compute-sanitizer --tool memcheck --error-exitcode 3 examples/embed-c/build/embed-c
    step "examples: cpp" 120 examples.log sh -c 'make -C examples/cpp && examples/cpp/build/moe-cpp'
    step "examples: pkgconfig (installed lib)" 180 examples.log sh -c 'make install PREFIX=/tmp/mgp >/dev/null && PKG_CONFIG_PATH=/tmp/mgp/lib/pkgconfig make -C examples/pkgconfig && examples/pkgconfig/build/moe-runtime specs/tiny.lua'
    step "bench: bundle vs in-moegen timing" 200 examples.log build/bench/mg_bench_bundle
fi
if has sanitize; then
    export MOEGEN_SELFTEST_BUDGET=2e8
    step "compute-sanitizer memcheck tiny" 300 sanitizer.log compute-sanitizer --tool memcheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 3
    step "compute-sanitizer racecheck tiny" 300 sanitizer.log compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 4
    unset MOEGEN_SELFTEST_BUDGET
fi
if has bench; then
    # BENCH_ROUNDS (3) rounds of ours then the torch peer, alternating, so that the card's clock
    # drift under its power cap reaches both; bench/bar_table.py judges the bar on the median of
    # the round ratios (one round moved Mixtral's ratio by up to 3% from call to call, s9)
    step "bench layer (generated)" 300 bench-layer.log build/bench/mg_bench_layer --csv "$OUT/layer.csv"
    step "bench dense (cuBLASLt roofline)" 200 bench-dense.log build/bench/mg_bench_dense
    step "bench peer (torch)" 280 bench-peer.log python3 bench/peer_torch.py --json "$OUT/peer.json"
    for r in $(seq 2 "${BENCH_ROUNDS:-3}"); do
        step "bench layer (generated), round $r" 300 bench-layer.log build/bench/mg_bench_layer --csv "$OUT/layer-r$r.csv"
        step "bench peer (torch grouped), round $r" 200 bench-peer.log python3 bench/peer_torch.py --skip-hf --json "$OUT/peer-r$r.json"
    done
    python3 bench/bar_table.py "$OUT" | tee "$OUT/bar-table.txt"
fi
echo; cat "$summary"
grep -hE "summary|FAIL|ERROR" "$OUT"/*.log 2>/dev/null | head -40
