#!/bin/bash
# s11: one GPU call for session 11's Hopper GEMM work (bench/NOTES.md, "v14"); every candidate is a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c), so one call A/Bs it.
# usage: bench/dev/s11.sh [probe] [park] [delay] [quarter] [final] ...   from the repo root after `make -j all bench`; logs under $OUT.
# MG_WG_DW_PROBE and MG_WG_PARK* were removed in 625f6a2 (code in 4f3f792): probe, park, delay and
# the park half of quarter now time the default.
set -u
O=${OUT:-/tmp/s11}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
BENCH_RUNS=20 ST_T=120 ST_SEED=71
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st, prof, ncu_src, smi_sample; T0, S
smi_sample
# tiny with d_ff 336 and d 256: partial n tiles in both wgrad kernels, two m tiles of d
sed -e 's/d_ff = 64/d_ff = 336/' -e 's/d_model = 64/d_model = 256/' -e 's/name = "tiny"/name = "tiny-ff336"/' \
    specs/tiny.lua > "$O/tiny-ff336.lua"
benchall() { # tag [VAR=VALUE...]: one mg_bench_layer run over the four shapes
    local tag=$1; shift
    step "bench all $tag" 90 bench-all-$tag.log env "$@" build/bench/mg_bench_layer --runs "${BENCH_RUNS:-10}" --warmup 3
    grep -a 'fwd+bwd' "$O/bench-all-$tag.log" | sed "s/^/$tag /" | tee -a "$S"
}
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
if [[ $PH == *" park "* ]]; then   # the wgrad kernels' parked half-tile, stored by TMA (MG_WG_PARK; written without a GPU)
P="-DMG_WG_PARK=1"
st park "$P" "$O/tiny-ff336.lua"
st park "$P" bench-small
st park "$P" switch-cf125
step "racecheck tiny-ff336 park" 150 race-park.log env MOEGEN_JIT_DEFINES="$P" MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=1e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest "$O/tiny-ff336.lua" --seed 72
grep -a -m3 'RACECHECK SUMMARY\|hazard' "$O/race-park.log" | tee -a "$S"
for i in 1 2 3 4 5; do
    benchall def
    benchall park MOEGEN_JIT_DEFINES="$P"
done
prof def ""
prof park "$P"
prof dn128 "-DMG_WG_BN_DN_WGRAD=128"
fi
if [[ $PH == *" delay "* ]]; then   # MG_WG_PARK's boxes stored during the next main loop (MG_WG_PARK_DELAY / _STRIDE)
P="-DMG_WG_PARK=1"
st delay "$P" "$O/tiny-ff336.lua"
st delay "$P" bench-small
prof def ""
prof p42 "$P"
prof p84 "$P -DMG_WG_PARK_DELAY=8 -DMG_WG_PARK_STRIDE=4"
prof p21 "$P -DMG_WG_PARK_DELAY=2 -DMG_WG_PARK_STRIDE=1"
prof s3 "-DMG_WG_STAGES_DEV=3"
for i in 1 2 3; do
    benchall def
    benchall p42 MOEGEN_JIT_DEFINES="$P"
    benchall p84 MOEGEN_JIT_DEFINES="$P -DMG_WG_PARK_DELAY=8 -DMG_WG_PARK_STRIDE=4"
done
fi
if [[ $PH == *" quarter "* ]]; then   # MG_WG_PARK_COLS 64 (4 stages kept) and per-GEMM stage caps (MG_WG_NS_*)
P="-DMG_WG_PARK=1"; N3="-DMG_WG_NS_UP_DGRAD=3 -DMG_WG_NS_DN_FWD=3"
st quarter "$P" "$O/tiny-ff336.lua"
st quarter "$P" bench-small
prof def ""
prof pk64 "$P"
prof ns3 "$N3"
prof ns2 "-DMG_WG_NS_UP_DGRAD=2 -DMG_WG_NS_DN_FWD=2"
for i in 1 2 3; do
    benchall def
    benchall pk64 MOEGEN_JIT_DEFINES="$P"
    benchall ns3 MOEGEN_JIT_DEFINES="$N3"
    benchall both MOEGEN_JIT_DEFINES="$P $N3"
done
fi
if [[ $PH == *" final "* ]]; then   # the 3-stage rule (MG_WG_NS_PICK) at K >= 8192: tiny with d_ff 8192, mixtral-8x7b
sed -e 's/d_ff = 64/d_ff = 8192/' -e 's/d_model = 64/d_model = 256/' -e 's/name = "tiny"/name = "tiny-ff8192"/' \
    specs/tiny.lua > "$O/tiny-ff8192.lua"
st ns3 "" "$O/tiny-ff8192.lua"
ST_T=330 ST_SEED=27 st ns3 "" mixtral-8x7b 1e7
fi
