#!/bin/bash
# wg_v3: one GPU call for the Hopper GEMM v3 + the v4 bwd fixes (bench/NOTES.md, "v3: measured,
# and why it differed"). Run from the repo root after `make -j all bench`; logs under $OUT.
# First call (04a8b33): tiny 930/930 with MOEGEN_WG_BWD=1; small/olmoe bwd 6.15/19.0 ms. This
# call measures the fixes against v3 on the same card, each behind a knob:
#   - bwd entries compiled for mma.sync unless MOEGEN_WG_BWD=1 (v3 kept (384,1) bounds on
#     them: 168 registers, one CTA/SM). v3's WG_BWD=0 = env MOEGEN_JIT_DEFINES=-DMG_WG_BWD=1
#     with MOEGEN_WG_BWD unset (Hopper path compiled in, host runs mma.sync).
#   - MG_WG_EPI_BATCH (down dgrad epilogue: a's reads in batches; 0 = v3),
#     MG_WG_MN_BATCH (gathered MN loads: perm reads before the copies; 0 = v3).
#   1. selftests with the fixes: tiny and bench-small (moe) on wgmma, tiny on mma.sync
#   2. mg_bench_layer small / olmoe: WG_BWD=0, =1, =1 with the v3 knobs, v3's WG_BWD=0; each
#      knob alone on small; the torch peer
#   3. bench/prof_layer.sh small olmoe with MOEGEN_WG_BWD=1 (ncu, per kernel)
#   4. wt2-moe8 selftest, racecheck on tiny's MoE cases (if time is left)
# Every step has a timeout, cut to what is left of LIMIT (470 s); a step that would start
# after DEADLINE (420 s) is skipped.
set -u
O=${OUT:-/tmp/wg_v3}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-420} LIMIT=${LIMIT:-470}
BENCH_T=45
. "$(dirname "$0")/call_lib.sh"   # note, step, bench; T0, S
V3="-DMG_WG_MN_BATCH=0 -DMG_WG_EPI_BATCH=0"
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(git rev-parse --short HEAD)"

# 1. correctness of the fixes
step "selftest tiny (bwd on wgmma)" 70 st-tiny.log env MOEGEN_WG_BWD=1 build/moegen selftest specs/tiny.lua
grep -a -m8 -A2 FAIL "$O/st-tiny.log" | tee -a "$S"
step "selftest bench-small (moe part, wgmma)" 60 st-small.log \
    env MOEGEN_WG_BWD=1 MOEGEN_SELFTEST_PART=moe build/moegen selftest specs/bench-small.lua
grep -a -m4 FAIL "$O/st-small.log" | tee -a "$S"
step "selftest tiny (bwd on mma.sync)" 60 st-tiny-bwd0.log env MOEGEN_WG_BWD=0 build/moegen selftest specs/tiny.lua
grep -a -m4 FAIL "$O/st-tiny-bwd0.log" | tee -a "$S"

# 2. speed, same card, same call
for sh in small olmoe; do
    bench bwd0 $sh MOEGEN_WG_BWD=0
    bench bwd1 $sh MOEGEN_WG_BWD=1
    bench bwd1-v3 $sh MOEGEN_WG_BWD=1 "MOEGEN_JIT_DEFINES=$V3"
    bench bwd0-v3bounds $sh MOEGEN_JIT_DEFINES=-DMG_WG_BWD=1
done
bench bwd1-epi0 small MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_EPI_BATCH=0
bench bwd1-mn0 small MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_MN_BATCH=0
bench bwd1-epi8 small MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_EPI_BATCH=8
step "peer torch small,olmoe" 100 peer.log python3 bench/peer_torch.py --shapes small,olmoe --skip-hf --runs 10
tail -6 "$O/peer.log" | tee -a "$S"
# 3. per kernel (ncu)
step "prof_layer small olmoe (WG_BWD=1)" 150 prof.log env MOEGEN_WG_BWD=1 OUT="$O/prof" bench/prof_layer.sh small olmoe
cat "$O"/prof/prof-*.txt 2>/dev/null | tee -a "$S"
# 4. if time is left
step "selftest wt2-moe8 (wgmma)" 60 st-wt2.log env MOEGEN_WG_BWD=1 build/moegen selftest specs/wt2-moe8.lua
grep -a -m4 FAIL "$O/st-wt2.log" | tee -a "$S"
step "racecheck tiny (moe part)" 100 racecheck.log \
    env MOEGEN_WG_BWD=1 MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 23
grep -a -m6 -i "hazard\|error" "$O/racecheck.log" | tee -a "$S"
note "total $(( $(date +%s) - T0 ))s"
