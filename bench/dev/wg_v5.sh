#!/bin/bash
# wg_v5: one GPU call for the Hopper GEMM v5 (bench/NOTES.md, v5), modelled on wg_v3.sh. Run from
# the repo root after `make -j all bench`; logs under $OUT. Each change has a device knob, so
# this call A/Bs it against v4 on the same card (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c):
#   - MG_WG_TMA_GATHER (1): gathered x rows (up fwd A, up wgrad B) by one-row TMA boxes from
#     MG_WG_GATHER_WARPS (4) producer warps; 0 = v4's cp.async producer
#   - MG_WG_EPI_TMA (1): down dgrad's a by TMA into shared memory during the main loop (4
#     stages); 0 = v4's batched global loads (6 stages)
# usage: bench/dev/wg_v5.sh [check] [bench] [prof]   (default: all three; one call of 10 minutes
# holds check + bench, prof wants its own)
#   check: selftests of tiny with v5 (both on), v4 (both off), each knob alone off, 1 gather
#          warp, cooperative consumers (the epilogue buffer read by both); bench-small (moe
#          part); racecheck + synccheck on tiny's MoE part (v5)
#   bench: mg_bench_layer small / olmoe: v5, v4, each knob off alone; gather warps 1 and 2
#   prof:  bench/prof_layer.sh small olmoe for v5 and v4 (ncu, per kernel: the six GEMMs)
# Every step has a timeout, cut to what is left of LIMIT (470 s); a step that would start
# after DEADLINE (420 s) is skipped.
set -u
O=${OUT:-/tmp/wg_v5}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-420} LIMIT=${LIMIT:-470}
BENCH_T=45
. "$(dirname "$0")/call_lib.sh"   # note, step, bench; T0, S
V4="-DMG_WG_TMA_GATHER=0 -DMG_WG_EPI_TMA=0"
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(git rev-parse --short HEAD)"

PH=" ${*:-check bench prof} "
st() { # tag defines [spec]
    step "selftest ${3:-tiny} $1" 70 st-$1.log env "MOEGEN_JIT_DEFINES=$2" build/moegen selftest specs/${3:-tiny}.lua
    grep -a -m6 -A2 FAIL "$O/st-$1.log" | tee -a "$S"
}
if [[ $PH == *" check "* ]]; then
st v5 ""
st v4 "$V4"
st gather0 "-DMG_WG_TMA_GATHER=0"
st epi0 "-DMG_WG_EPI_TMA=0"
st gw1 "-DMG_WG_GATHER_WARPS=1"
st pp0 "-DMG_WG_PINGPONG=0"
step "selftest bench-small (moe part, v5)" 60 st-small.log \
    env MOEGEN_SELFTEST_PART=moe build/moegen selftest specs/bench-small.lua
grep -a -m4 FAIL "$O/st-small.log" | tee -a "$S"
for tool in racecheck synccheck; do
    step "$tool tiny (moe part, v5)" 100 $tool.log env MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 \
        compute-sanitizer --tool $tool --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 23
    grep -a -m6 -i "hazard\|error" "$O/$tool.log" | tee -a "$S"
done
fi
if [[ $PH == *" bench "* ]]; then   # same card, same call
for sh in small olmoe; do
    bench v5 $sh
    bench v4 $sh "MOEGEN_JIT_DEFINES=$V4"
    bench gather0 $sh MOEGEN_JIT_DEFINES=-DMG_WG_TMA_GATHER=0
    bench epi0 $sh MOEGEN_JIT_DEFINES=-DMG_WG_EPI_TMA=0
done
bench gw1 small MOEGEN_JIT_DEFINES=-DMG_WG_GATHER_WARPS=1
bench gw2 small MOEGEN_JIT_DEFINES=-DMG_WG_GATHER_WARPS=2
fi
if [[ $PH == *" prof "* ]]; then
step "prof_layer small olmoe (v5)" 150 prof-v5.log env OUT="$O/prof-v5" bench/prof_layer.sh small olmoe
cat "$O"/prof-v5/prof-*.txt 2>/dev/null | tee -a "$S"
step "prof_layer small olmoe (v4)" 150 prof-v4.log env "MOEGEN_JIT_DEFINES=$V4" OUT="$O/prof-v4" bench/prof_layer.sh small olmoe
cat "$O"/prof-v4/prof-*.txt 2>/dev/null | tee -a "$S"
fi
note "total $(( $(date +%s) - T0 ))s"
