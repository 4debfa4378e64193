#!/bin/bash
# wg_v3: one GPU call for the Hopper GEMM v3 (bench/NOTES.md, v3): the wgrad race fix and the
# ping-pong consumers. Run from the repo root after `make -j all bench`; logs under $OUT.
#   1. selftests with every GEMM on wgmma (MOEGEN_WG_BWD=1): tiny (the v2 dw_dn failure),
#      wt2-moe8, bench-small; tiny again with the v2 cooperative consumers
#      (MG_WG_PINGPONG=0); if tiny fails, tiny with 2 stages (MG_WG_STAGES_DEV=2) to tell a
#      stage-reuse race (shows more often with fewer stages) from an arithmetic one
#   2. tiny on the mma.sync path (--arch compute_80: PTX JIT), racecheck on tiny's MoE cases
#   3. mg_bench_layer small / olmoe / finegrained with MOEGEN_WG_BWD=0 and =1, the torch peer
#      on the same card
#   4. bench/prof_layer.sh small olmoe with MOEGEN_WG_BWD=1 (ncu, per kernel)
#   5. device knobs A/B: small with ping-pong off; wt2-moe8 selftest and small/olmoe bench
#      with 128 x 256 tiles (MG_WG_BN_DEV=256)
# Every step has a timeout, cut to what is left of LIMIT (470 s); a step that would start
# after DEADLINE (420 s) is skipped.
set -u
O=${OUT:-/tmp/wg_v3}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-420} LIMIT=${LIMIT:-470}
T0=$(date +%s)
S="$O/summary.txt"; : > "$S"
note() { echo "$*" | tee -a "$S"; }
step() { # name timeout log command...   (env assignments go through `env`)
    local name=$1 t=$2 log=$3; shift 3
    local el=$(( $(date +%s) - T0 ))
    if (( el > DEADLINE )); then note "$(printf '%-44s skipped (%ds elapsed)' "$name" $el)"; return 99; fi
    local s=$(date +%s)
    (( t > LIMIT - el )) && t=$(( LIMIT - el ))
    timeout "$t" "$@" > "$O/$log" 2>&1
    local rc=$?
    note "$(printf '%-44s rc=%-3d %4ds  %s' "$name" $rc $(( $(date +%s) - s )) \
        "$(grep -ac PASS "$O/$log") PASS $(grep -ac FAIL "$O/$log") FAIL")"
    return $rc
}
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(git rev-parse --short HEAD)"

# 1. correctness
step "selftest tiny (bwd on wgmma)" 70 st-tiny.log env MOEGEN_WG_BWD=1 build/moegen selftest specs/tiny.lua
tiny_rc=$?
grep -a -m8 -A2 FAIL "$O/st-tiny.log" | tee -a "$S"
step "selftest tiny, MG_WG_PINGPONG=0" 70 st-tiny-pp0.log \
    env MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_PINGPONG=0 build/moegen selftest specs/tiny.lua
grep -a -m4 FAIL "$O/st-tiny-pp0.log" | tee -a "$S"
if [ "$tiny_rc" != 0 ]; then
    step "selftest tiny, MG_WG_STAGES_DEV=2" 70 st-tiny-s2.log \
        env MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_STAGES_DEV=2 build/moegen selftest specs/tiny.lua
    grep -a -m4 FAIL "$O/st-tiny-s2.log" | tee -a "$S"
fi
step "selftest wt2-moe8" 60 st-wt2.log env MOEGEN_WG_BWD=1 build/moegen selftest specs/wt2-moe8.lua
grep -a -m4 FAIL "$O/st-wt2.log" | tee -a "$S"
step "selftest bench-small (moe part)" 60 st-small.log \
    env MOEGEN_WG_BWD=1 MOEGEN_SELFTEST_PART=moe build/moegen selftest specs/bench-small.lua
grep -a -m4 FAIL "$O/st-small.log" | tee -a "$S"
step "selftest tiny --arch compute_80 (mma.sync)" 70 st-tiny-sm80.log build/moegen selftest specs/tiny.lua --arch compute_80
grep -a -m4 FAIL "$O/st-tiny-sm80.log" | tee -a "$S"
step "racecheck tiny (moe part)" 100 racecheck.log \
    env MOEGEN_WG_BWD=1 MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 \
    compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 23
grep -a -m6 -i "hazard\|error" "$O/racecheck.log" | tee -a "$S"

# 2. speed: ours (bwd on mma.sync, bwd on wgmma) and the peer, same card, same call
for sh in small olmoe finegrained; do
    for b in 0 1; do
        step "bench $sh WG_BWD=$b" 45 bench-$sh-bwd$b.log \
            env MOEGEN_WG_BWD=$b build/bench/mg_bench_layer --shape $sh --runs 10 --warmup 3
        grep -a median "$O/bench-$sh-bwd$b.log" | sed "s/^/$sh bwd$b /" | tee -a "$S"
    done
done
step "peer torch small,olmoe,finegrained" 100 peer.log \
    python3 bench/peer_torch.py --shapes small,olmoe,finegrained --skip-hf --runs 10
tail -8 "$O/peer.log" | tee -a "$S"
# 3. per kernel (ncu)
step "prof_layer small olmoe (WG_BWD=1)" 150 prof.log env MOEGEN_WG_BWD=1 OUT="$O/prof" bench/prof_layer.sh small olmoe
cat "$O"/prof/prof-*.txt 2>/dev/null | tee -a "$S"
# 4. A/B of the device knobs (MOEGEN_JIT_DEFINES): ping-pong off; 128 x 256 tiles
step "bench small WG_BWD=1 PINGPONG=0" 45 bench-small-pp0.log \
    env MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_PINGPONG=0 build/bench/mg_bench_layer --shape small --runs 10 --warmup 3
grep -a median "$O/bench-small-pp0.log" | sed "s/^/small bwd1-pp0 /" | tee -a "$S"
step "selftest wt2-moe8 BN_DEV=256" 60 st-wt2-bn256.log \
    env MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_BN_DEV=256 build/moegen selftest specs/wt2-moe8.lua
grep -a -m4 FAIL "$O/st-wt2-bn256.log" | tee -a "$S"
for sh in small olmoe; do
    step "bench $sh WG_BWD=1 BN_DEV=256" 45 bench-$sh-bn256.log \
        env MOEGEN_WG_BWD=1 MOEGEN_JIT_DEFINES=-DMG_WG_BN_DEV=256 build/bench/mg_bench_layer --shape $sh --runs 10 --warmup 3
    grep -a median "$O/bench-$sh-bn256.log" | sed "s/^/$sh bwd1-bn256 /" | tee -a "$S"
done
note "total $(( $(date +%s) - T0 ))s"
