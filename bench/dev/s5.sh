#!/bin/bash
# s5: one GPU call for session 5's Hopper GEMM changes (bench/NOTES.md, "v6"), each behind a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c) so the same call A/Bs it:
#   - MG_WG_EPI_SMEM (1): down dgrad's epilogue through a shared-memory scratch, 8-byte
#     coalesced a loads and da stores; 0 = v4's register-layout epilogue
#   - MG_WG_EPI_PREFETCH (1): the tile's a prefetched into L2 by the producer; 0 = none
#   - MG_WG_MN_BATCH (2): up wgrad's gather rows one a lane, the next stage's read ahead;
#     1 = v4 (every lane reads its 8-16 rows in the stage)
#   - the per-GEMM tile width knobs MG_WG_BN_UP_WGRAD / MG_WG_BN_UP_FWD at 128
# (The knobs MG_WG_EPI_PREFETCH, MG_WG_MN_AHEAD, MG_WG_CLUSTER_ACQ and MOEGEN_WG_CLUSTER_GRID that
# sections ab, check3, ab3, cl2 and cl3 set were measured and then removed in the session's review;
# there those settings are now no-ops, and bench/results/2026-11-26-s5 keeps what they measured.)
# usage: bench/dev/s5.sh [check] [ab] [ab2] [ncu] [bn] [mixtral] [check3] [ab3] [cl] [cl2] [cl3] [cs] [shapes] [prof]   (default: check ab), from the repo root after
# `make -j all bench`; logs under $OUT. Steps have timeouts cut to what is left of LIMIT.
set -u
O=${OUT:-/tmp/s5}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
ST_SEED=29 ST_BUDGET=1e8
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st; T0, S
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-check ab} "
if [[ $PH == *" check "* ]]; then
st default "" tiny
st coop "-DMG_WG_PINGPONG=0" tiny
st v4 "-DMG_WG_EPI_SMEM=0 -DMG_WG_MN_BATCH=1 -DMG_WG_EPI_PREFETCH=0" tiny
st default "" bench-small
st default "" wt2-moe8
st default "" bench-olmoe 5e7
step "racecheck tiny (moe part)" 120 racecheck.log env MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 23
grep -a -m6 -i "hazard\|error" "$O/racecheck.log" | tee -a "$S"
fi
if [[ $PH == *" ab "* ]]; then   # same card, same call
for sh in small olmoe; do
    bench default $sh
    bench epismem0 $sh MOEGEN_JIT_DEFINES=-DMG_WG_EPI_SMEM=0
    bench pf0 $sh MOEGEN_JIT_DEFINES=-DMG_WG_EPI_PREFETCH=0
    bench mnb1 $sh MOEGEN_JIT_DEFINES=-DMG_WG_MN_BATCH=1
done
fi
if [[ $PH == *" bn "* ]]; then
for sh in small olmoe finegrained; do
    bench upw128 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BN_UP_WGRAD=128
    bench upf128 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BN_UP_FWD=128
done
fi
if [[ $PH == *" ab2 "* ]]; then   # tile widths with the fast-activation epilogues
for sh in small olmoe; do
    bench default $sh
    bench upf128 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BN_UP_FWD=128
    bench dnd128 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BN_DN_DGRAD=128
done
fi
if [[ $PH == *" ncu "* ]]; then
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats"
for k in "small|down_swiglu.*_dgrad" "small|up_swiglu.*_fwd"; do
    sh=${k%%|*}; re=${k#*|}
    step "ncu $sh $re" 120 "ncu-$sh-${re//[^a-z]/}.txt" "$NCU" $sec --clock-control none -k "regex:$re" -s 2 -c 1 \
        build/bench/mg_bench_layer --shape $sh --runs 2 --warmup 1
done
fi
if [[ $PH == *" check3 "* ]]; then   # the up fwd scratch and the 2-stage gather lookahead, on
K3="-DMG_WG_EPI_SMEM_UP=1 -DMG_WG_MN_AHEAD=2"
st k3 "$K3" tiny
st k3coop "$K3 -DMG_WG_PINGPONG=0" tiny
st k3 "$K3" bench-small
st k3 "$K3" wt2-moe8
st k3 "$K3" switch-cf125 5e7
fi
if [[ $PH == *" ab3 "* ]]; then
for sh in small olmoe finegrained mixtral; do
    bench default $sh
    bench smemup $sh MOEGEN_JIT_DEFINES=-DMG_WG_EPI_SMEM_UP=1
    bench ahead2 $sh MOEGEN_JIT_DEFINES=-DMG_WG_MN_AHEAD=2
done
fi
if [[ $PH == *" cl "* ]]; then   # CTA pairs with the B tile multicast (env MOEGEN_WG_CLUSTER=2)
stc() { # tag spec [env...]
    local tag=$1 sp=$2; shift 2
    step "selftest $sp moe cluster $tag" 75 st-cl-$sp-$tag.log env MOEGEN_WG_CLUSTER=2 MOEGEN_SELFTEST_PART=moe \
        MOEGEN_SELFTEST_BUDGET=1e8 "$@" build/moegen selftest specs/$sp.lua --seed 37
    grep -a -m6 -A2 FAIL "$O/st-cl-$sp-$tag.log" | tee -a "$S"
}
stc default tiny
if grep -aq 'passed, 0 failed' "$O/st-cl-tiny-default.log"; then
    stc coop tiny MOEGEN_JIT_DEFINES=-DMG_WG_PINGPONG=0
    stc default bench-small
    stc default wt2-moe8
    for sh in small olmoe finegrained mixtral; do
        bench default $sh
        bench cluster $sh MOEGEN_WG_CLUSTER=2
    done
fi
fi
if [[ $PH == *" cl2 "* ]]; then   # why pairs are slower: the grid, and ncu's view of one kernel
bench cluster mixtral MOEGEN_WG_CLUSTER=2
grep -a 'clusters of 2' "$O/bench-mixtral-cluster.log" | tee -a "$S"
bench cluster132 mixtral MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_GRID=132
bench default mixtral
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis"
step "ncu mixtral up fwd cluster" 120 ncu-mixtral-upfwd-cluster.txt env MOEGEN_WG_CLUSTER=2 "$NCU" $sec --clock-control none \
    -k "regex:up_swiglu.*_fwd" -s 2 -c 1 build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
fi
if [[ $PH == *" cl3 "* ]]; then   # pairs with CTA-scope remote arrives
stc() { # tag spec [env...]
    local tag=$1 sp=$2; shift 2
    step "selftest $sp moe cluster $tag" 75 st-cl-$sp-$tag.log env MOEGEN_WG_CLUSTER=2 MOEGEN_SELFTEST_PART=moe \
        MOEGEN_SELFTEST_BUDGET=1e8 "$@" build/moegen selftest specs/$sp.lua --seed 41
    grep -a -m6 -A2 FAIL "$O/st-cl-$sp-$tag.log" | tee -a "$S"
}
for sh in mixtral olmoe small; do
    bench default $sh
    bench cluster $sh MOEGEN_WG_CLUSTER=2
done
bench clusteracq mixtral MOEGEN_WG_CLUSTER=2 MOEGEN_JIT_DEFINES=-DMG_WG_CLUSTER_ACQ=1
stc default tiny
stc default bench-small
fi
if [[ $PH == *" cs "* ]]; then   # streaming (evict-first) epilogue stores and a loads
st cs "-DMG_WG_STORE_CS=1" tiny 5e7
st cs "-DMG_WG_STORE_CS=1" bench-small 5e7
for sh in mixtral olmoe finegrained small; do
    bench default $sh
    bench cs $sh MOEGEN_JIT_DEFINES=-DMG_WG_STORE_CS=1
done
fi
if [[ $PH == *" mixtral "* ]]; then   # Mixtral: per-GEMM widths at 128, ncu of the two slowest
for v in UP_WGRAD DN_WGRAD DN_DGRAD UP_DGRAD; do
    bench bn128-$v mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BN_$v=128
done
bench stages3 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_STAGES_DEV=3
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats"
for re in "up_swiglu.*_wgrad" "up_swiglu.*_fwd" "down_swiglu.*_wgrad"; do
    step "ncu mixtral $re" 120 "ncu-mixtral-${re//[^a-z]/}.txt" "$NCU" $sec --clock-control none -k "regex:$re" -s 2 -c 1 \
        build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
done
fi
if [[ $PH == *" shapes "* ]]; then
bench default finegrained
bench default mixtral
fi
if [[ $PH == *" prof "* ]]; then
step "prof_layer small olmoe" 200 prof.log env OUT="$O/prof" bench/prof_layer.sh small olmoe
cat "$O"/prof/prof-*.txt 2>/dev/null | tee -a "$S"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats"
for k in "small|down_swiglu.*_dgrad" "small|up_swiglu.*_fwd" "small|up_swiglu.*_wgrad"; do
    sh=${k%%|*}; re=${k#*|}
    step "ncu $sh $re" 120 "ncu-$sh-${re//[^a-z]/}.txt" "$NCU" $sec --clock-control none -k "regex:$re" -s 2 -c 1 \
        build/bench/mg_bench_layer --shape $sh --runs 2 --warmup 1
done
fi
note "total $(( $(date +%s) - T0 ))s"
