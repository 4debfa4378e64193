#!/bin/bash
# s10: one GPU call for session 10's Hopper GEMM work (bench/NOTES.md, "v13"); every candidate is a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c), so one call A/Bs it.
# usage: bench/dev/s10.sh [half] [full] ...   from the repo root after `make -j all bench`; logs under $OUT.
# nvidia-smi samples clocks, power and throttle reasons every 200 ms into smi.csv (marks.txt: when
# each step started). Steps have timeouts cut to what is left of LIMIT.
set -u
O=${OUT:-/tmp/s10}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
BENCH_RUNS=20 ST_T=120 ST_SEED=53
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st, prof, ncu_src, smi_sample; T0, S
smi_sample
# tiny with d_ff 336: down dgrad's second 256-wide n tile is partial (80 of 256 columns)
sed -e 's/d_ff = 64/d_ff = 336/' -e 's/d_model = 64/d_model = 256/' -e 's/name = "tiny"/name = "tiny-ff336"/' \
    specs/tiny.lua > "$O/tiny-ff336.lua"
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-half} "
if [[ $PH == *" bf16 "* ]]; then   # z and dxs (and the shared experts' rows) in the storage type (written without a GPU)
ST_SEED=61
st bf16 "" "$O/tiny-ff336.lua"
st bf16 "" bench-small
prof def ""
ST_T=200 st bf16 "" mixtral-8x7b 5e7
fi
if [[ $PH == *" half "* ]]; then   # the async down dgrad's dump in two halves, 4 stages (MG_WG_ASYNC_HALF; written without a GPU)
H="-DMG_WG_EPI_ASYNC_MIN_D=0"; F="-DMG_WG_EPI_ASYNC_MIN_D=0 -DMG_WG_ASYNC_HALF=0"
st half "$H" "$O/tiny-ff336.lua"
st half "$H" bench-small
st half "$H" switch-cf125
st full "$F" "$O/tiny-ff336.lua"
st full "$F" switch-cf125
step "racecheck tiny-ff336 half" 150 race-half.log env MOEGEN_JIT_DEFINES="$H" MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=1e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest "$O/tiny-ff336.lua" --seed 54
grep -a -m3 'RACECHECK SUMMARY\|hazard' "$O/race-half.log" | tee -a "$S"
for i in 1 2; do
    bench def mixtral
    bench full mixtral MOEGEN_JIT_DEFINES="-DMG_WG_ASYNC_HALF=0"
done
prof def ""
prof full "-DMG_WG_ASYNC_HALF=0"
fi
if [[ $PH == *" src "* ]]; then   # where the warps of Mixtral's down dgrad stall, per SASS line (SRC_D: defines)
ncu_src "dd|moe_down.*_dgrad"
fi
