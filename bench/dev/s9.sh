#!/bin/bash
# s9: one GPU call for session 9's Hopper GEMM work (bench/NOTES.md, "v12"); every candidate is a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c), so one call A/Bs it.
# usage: bench/dev/s9.sh [async] [async2] [pairs] [knobs] [band] [src] ...   from the repo root after `make -j all bench`; logs under $OUT.
# nvidia-smi samples clocks, power and throttle reasons every 200 ms into smi.csv (marks.txt: when
# each step started). Steps have timeouts cut to what is left of LIMIT.
# (Calls 3-6 ran async, async2 and pairs when MG_WG_EPI_ASYNC=1 applied at every d, depth 1 then 3
# by default; since 5d3164e the path needs d >= MG_WG_EPI_ASYNC_MIN_D (4096) and depth 4 is the
# default, so those sections now pass MG_WG_EPI_ASYNC_MIN_D=0 and name the depth of the time.)
set -u
O=${OUT:-/tmp/s9}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
BENCH_RUNS=20 ST_T=120 ST_SEED=43
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st, prof, ncu_src, smi_sample; T0, S
smi_sample
# tiny with d_ff 336: down dgrad's second 256-wide n tile is partial (80 of 256 columns)
sed -e 's/d_ff = 64/d_ff = 336/' -e 's/d_model = 64/d_model = 256/' -e 's/name = "tiny"/name = "tiny-ff336"/' \
    specs/tiny.lua > "$O/tiny-ff336.lua"
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-async} "
if [[ $PH == *" async "* ]]; then   # down dgrad's epilogue on the producer's warps 1..3 (MG_WG_EPI_ASYNC; written without a GPU)
A="-DMG_WG_EPI_ASYNC_MIN_D=0 -DMG_WG_ASYNC_DEPTH=1"
st async "$A" "$O/tiny-ff336.lua"
st async "$A" bench-small
st async "$A" switch-cf125
st async "$A" wt2-moe8
step "racecheck tiny-ff336 async" 150 race-async.log env MOEGEN_JIT_DEFINES="$A" MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=1e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest "$O/tiny-ff336.lua" --seed 44
grep -a -m3 'RACECHECK SUMMARY\|hazard' "$O/race-async.log" | tee -a "$S"
for i in 1 2; do
    bench def mixtral
    bench async mixtral MOEGEN_JIT_DEFINES="$A"
done
for sh in olmoe finegrained small; do
    bench def $sh
    bench async $sh MOEGEN_JIT_DEFINES="$A"
done
prof def ""
prof async "$A"
fi
if [[ $PH == *" async2 "* ]]; then   # after call 3: a thread's own arrivals, the worker D rows ahead (3 at 72 / 216 registers, 4 at 88 / 208)
A="-DMG_WG_EPI_ASYNC_MIN_D=0 -DMG_WG_ASYNC_DEPTH=3 -DMG_WG_PROD_REGS_ASYNC=72 -DMG_WG_CONS_REGS_ASYNC=216"; A4="-DMG_WG_EPI_ASYNC_MIN_D=0"
st async "$A" "$O/tiny-ff336.lua"
st async "$A" bench-small
st async "$A" switch-cf125
st async4 "$A4" bench-small
step "racecheck tiny-ff336 async" 150 race-async.log env MOEGEN_JIT_DEFINES="$A" MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=1e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest "$O/tiny-ff336.lua" --seed 45
grep -a -m3 'RACECHECK SUMMARY\|hazard' "$O/race-async.log" | tee -a "$S"
for i in 1 2; do
    bench def mixtral
    bench async mixtral MOEGEN_JIT_DEFINES="$A"
    bench async4 mixtral MOEGEN_JIT_DEFINES="$A4"
done
for sh in olmoe finegrained small; do
    bench def $sh
    bench async $sh MOEGEN_JIT_DEFINES="$A"
    bench async4 $sh MOEGEN_JIT_DEFINES="$A4"
done
prof def ""
prof async "$A"
prof async4 "$A4"
fi
if [[ $PH == *" pairs "* ]]; then   # the async down dgrad (depth 4, 88 / 208) on CTA pairs with B multicast (MOEGEN_WG_CLUSTER=2; MASK 8: down dgrad alone)
A4="-DMG_WG_EPI_ASYNC_MIN_D=0"
P8="MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=8"
MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=8 st a4p8 "$A4" "$O/tiny-ff336.lua"
MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=8 st a4p8 "$A4" bench-small
MOEGEN_WG_CLUSTER=2 st a4p15 "$A4" wt2-moe8
for i in 1 2; do
    bench def mixtral
    bench a4 mixtral MOEGEN_JIT_DEFINES="$A4"
    bench a4p8 mixtral MOEGEN_JIT_DEFINES="$A4" $P8
    bench a4p15 mixtral MOEGEN_JIT_DEFINES="$A4" MOEGEN_WG_CLUSTER=2
done
for sh in olmoe finegrained small; do
    bench def $sh
    bench a4p8 $sh MOEGEN_JIT_DEFINES="$A4" $P8
done
MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=8 prof a4p8 "$A4"
fi
if [[ $PH == *" knobs "* ]]; then   # with the async default: CTA pairs per row GEMM (MOEGEN_WG_CLUSTER_MASK), the raster band
MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=1 st p1 "" bench-small
for i in 1 2; do
    bench def mixtral
    bench p1 mixtral MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=1
    bench p5 mixtral MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=5
    bench band1 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BAND=1
    bench band4 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BAND=4
done
MOEGEN_WG_CLUSTER=2 MOEGEN_WG_CLUSTER_MASK=15 prof p15 ""
prof band1 "-DMG_WG_BAND=1"
prof band4 "-DMG_WG_BAND=4"
fi
if [[ $PH == *" band "* ]]; then   # the raster band 1 against 2 (the default) on every shape, after call 9's ncu
st band1 "-DMG_WG_BAND=1" bench-small
for i in 1 2; do
    for sh in mixtral olmoe finegrained small; do
        bench def $sh
        bench band1 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BAND=1
    done
done
prof def ""
prof band1 "-DMG_WG_BAND=1"
fi
if [[ $PH == *" src "* ]]; then   # where the warps of Mixtral's GEMMs stall, per SASS line (SRC_D: defines; SRC_K: tag|kernel-regex ...)
ncu_src ${SRC_K:-"dndgrad|down_swiglu.*_dgrad"}
fi
note "total $(( $(date +%s) - T0 ))s"
