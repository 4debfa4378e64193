#!/bin/bash
# s11: one GPU call for session 11's Hopper GEMM work (bench/NOTES.md, "v14"); every candidate is a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c), so one call A/Bs it.
# usage: bench/dev/s11.sh [probe] ...   from the repo root after `make -j all bench`; logs under $OUT.
set -u
O=${OUT:-/tmp/s11}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
BENCH_RUNS=20 ST_T=120 ST_SEED=71
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st, prof, ncu_src, smi_sample; T0, S
smi_sample
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-probe} "
if [[ $PH == *" probe "* ]]; then   # what the wgrad epilogues' dW stores cost (MG_WG_DW_PROBE: 1 none, 2 half the bytes)
for i in 1 2 3 4 5; do
    bench def mixtral
    bench p1 mixtral MOEGEN_JIT_DEFINES="-DMG_WG_DW_PROBE=1"
    bench p2 mixtral MOEGEN_JIT_DEFINES="-DMG_WG_DW_PROBE=2"
done
prof def ""
prof p2 "-DMG_WG_DW_PROBE=2"
fi
