#!/bin/bash
# s6: one GPU call for session 6's Hopper GEMM changes (bench/NOTES.md, "v9"), each behind a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c) so the same call A/Bs it:
#   - MG_WG_UP_WGRAD_T (0): up wgrad as dW_upᵀ tiles, gathered x the 128-wide operand
#   - MG_WG_BAND (8): n tiles a band of the persistent raster
# usage: bench/dev/s6.sh [check] [ab] [band] [prof] [ncu] [ab2] [src] [ab3] [check4] [ab4] [prof4] [check5] [lean]
# (from ab4 on, the defaults are the candidates: transposed up wgrad, band 2, gather rows 2 stages
# ahead, CTA pairs by MG_WG_PAIRS_AUTO; each is A/B'd by setting it back. After call 4 the look-ahead
# (MG_WG_MN_AHEAD) and the pairs rule were removed, both level: their settings here are now no-ops;
# so is MG_WG_UP_WGRAD_T since the review that made the transposed up wgrad the only one)
# (default: check ab), from the repo root after `make -j all bench`; logs under $OUT. Steps have timeouts cut to what is left of LIMIT.
set -u
O=${OUT:-/tmp/s6}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
ST_SEED=31 ST_BUDGET=1e8
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st; T0, S
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-check ab} "
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats"
WT="-DMG_WG_UP_WGRAD_T=1"
if [[ $PH == *" check "* ]]; then
st wgt "$WT" tiny 5e7
st wgtcoop "$WT -DMG_WG_PINGPONG=0" tiny 5e7
st wgt "$WT" bench-small 5e7
st wgt "$WT" switch-cf125 5e7
fi
if [[ $PH == *" ab "* ]]; then   # same card, same call
for sh in mixtral olmoe finegrained small; do
    bench default $sh
    bench wgt $sh MOEGEN_JIT_DEFINES="$WT"
done
fi
if [[ $PH == *" band "* ]]; then
bench band4 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BAND=4
bench band16 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BAND=16
fi
if [[ $PH == *" prof "* ]]; then
step "prof_layer mixtral wgt" 150 prof.log env OUT="$O/prof" MOEGEN_JIT_DEFINES="$WT" bench/prof_layer.sh mixtral
cat "$O"/prof/prof-*.txt 2>/dev/null | head -12 | tee -a "$S"
fi
if [[ $PH == *" ncu "* ]]; then
step "ncu mixtral up wgrad wgt" 120 ncu-mixtral-upwgrad-wgt.txt env MOEGEN_JIT_DEFINES="$WT" "$NCU" $sec \
    --clock-control none -k "regex:up_swiglu.*_wgrad" -s 2 -c 1 build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
grep -a "Duration\|DRAM Throughput\|L2 Cache Throughput\|Compute (SM)\|L2 Hit" "$O/ncu-mixtral-upwgrad-wgt.txt" | tee -a "$S"
fi
if [[ $PH == *" ab2 "* ]]; then   # on top of the transposed up wgrad: raster bands, its width
for sh in mixtral olmoe finegrained small; do
    RUNS=20 bench wgt $sh MOEGEN_JIT_DEFINES="$WT"
    RUNS=20 bench wgt-band4 $sh MOEGEN_JIT_DEFINES="$WT -DMG_WG_BAND=4"
    RUNS=20 bench wgt-band2 $sh MOEGEN_JIT_DEFINES="$WT -DMG_WG_BAND=2"
    RUNS=20 bench wgt-bnw128 $sh MOEGEN_JIT_DEFINES="$WT -DMG_WG_BN_UP_WGRAD=128"
done
fi
if [[ $PH == *" ab3 "* ]]; then   # the gather index divided at use; CTA pairs on top
for sh in mixtral olmoe finegrained small; do
    RUNS=20 bench default $sh
    RUNS=20 bench wgt $sh MOEGEN_JIT_DEFINES="$WT"
    RUNS=20 bench wgt-band2 $sh MOEGEN_JIT_DEFINES="$WT -DMG_WG_BAND=2"
done
RUNS=20 bench wgt-cl mixtral MOEGEN_JIT_DEFINES="$WT" MOEGEN_WG_CLUSTER=2
RUNS=20 bench wgt-cl olmoe MOEGEN_JIT_DEFINES="$WT" MOEGEN_WG_CLUSTER=2
st wgt "$WT" tiny 5e7
st wgt "$WT" bench-small 5e7
st default "" bench-small 5e7
fi
if [[ $PH == *" check4 "* ]]; then
st default "" tiny 5e7
st coop "-DMG_WG_PINGPONG=0" tiny 5e7
st ahead3 "-DMG_WG_MN_AHEAD=3" tiny 5e7
st default "" bench-small 5e7
st default "" switch-cf125 5e7
step "selftest tiny moe pairs" 90 st-tiny-pairs.log env MOEGEN_WG_CLUSTER=2 MOEGEN_SELFTEST_PART=moe \
    MOEGEN_SELFTEST_BUDGET=5e7 build/moegen selftest specs/tiny.lua --seed 43
grep -a -m6 -A2 FAIL "$O/st-tiny-pairs.log" | tee -a "$S"
fi
if [[ $PH == *" check5 "* ]]; then   # the other specs' MoE parts with the final defaults
for sp in wt2-moe8 olmoe-1b-7b sweep-experts wt2-dense ci-cpu fine128; do st default "" $sp 5e7; done
fi
if [[ $PH == *" lean "* ]]; then   # MG_WG_PROD_LEAN (s7 call 1; the default since, the knob removed): check, then A/B
LN="-DMG_WG_PROD_LEAN=1"
st lean "$LN" tiny 5e7
st leancoop "$LN -DMG_WG_PINGPONG=0" tiny 5e7
st lean "$LN" bench-small 5e7
if grep -aq 'passed, 0 failed' "$O/st-tiny-lean.log" && grep -aq 'passed, 0 failed' "$O/st-bench-small-lean.log"; then
    for sh in mixtral olmoe finegrained small; do
        RUNS=20 bench default $sh
        RUNS=20 bench lean $sh MOEGEN_JIT_DEFINES="$LN"
    done
fi
fi
if [[ $PH == *" ab4 "* ]]; then
for sh in mixtral olmoe finegrained small; do
    RUNS=20 bench default $sh
    RUNS=20 bench ahead1 $sh MOEGEN_JIT_DEFINES=-DMG_WG_MN_AHEAD=1
    RUNS=20 bench ahead3 $sh MOEGEN_JIT_DEFINES=-DMG_WG_MN_AHEAD=3
done
RUNS=20 bench nopairs mixtral MOEGEN_WG_CLUSTER=1
RUNS=20 bench band8 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BAND=8
RUNS=20 bench default mixtral
fi
if [[ $PH == *" prof4 "* ]]; then
step "prof_layer mixtral" 150 prof.log env OUT="$O/prof" bench/prof_layer.sh mixtral
cat "$O"/prof/prof-*.txt 2>/dev/null | head -12 | tee -a "$S"
fi
if [[ $PH == *" src "* ]]; then   # where the warps of Mixtral's gathered GEMMs stall, per SASS line
for k in ${SRC_K:-"upwgrad|up_swiglu.*_wgrad" "upfwd|up_swiglu.*_fwd" "dndgrad|down_swiglu.*_dgrad"}; do
    tag=${k%%|*}; re=${k#*|}
    step "ncu src mixtral $tag" 150 ncu-src-$tag.txt env MOEGEN_JIT_DEFINES="$WT" "$NCU" --section WarpStateStats \
        --section SourceCounters --section SpeedOfLight --clock-control none -k "regex:$re" -s 2 -c 1 -f -o "$O/rep-$tag" \
        build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
    "$NCU" -i "$O/rep-$tag.ncu-rep" --page source --csv --print-source sass > "$O/sass-$tag.csv" 2> "$O/sass-$tag.err"
    "$NCU" -i "$O/rep-$tag.ncu-rep" --page details --print-details all > "$O/details-$tag.txt" 2>&1
    rm -f "$O/rep-$tag.ncu-rep"
done
fi
note "total $(( $(date +%s) - T0 ))s"
