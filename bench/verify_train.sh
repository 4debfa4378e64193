#!/bin/bash
# verify_train: the trainer's GPU correctness checks at once on one GPU (they time nothing, so
# they may share it): selftest of tiny (every family, the lm-head check-steps), the lm part of
# wt2-moe8's selftest (its vocab and width), and bench/train_wt2.sh check (--check-step against
# the CPU and PyTorch, and the 50-step smoke twice: determinism). Logs and rc lines under $OUT.
#   bench/verify_train.sh            (about 4 minutes on an H100; needs data/shared, `make -j all`)
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
export OUT=${OUT:-$REPO/bench/results/raw/verify-$(date +%Y%m%d-%H%M)}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache}
mkdir -p "$OUT"
M=$REPO/build/moegen
job() { # name timeout command...: runs in the background, appends "name rc=N Ns" to rc.txt
    local name=$1 t=$2; shift 2
    ( s=$(date +%s); timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$? $(( $(date +%s) - s ))s" >> "$OUT/rc.txt" ) &
}
job st-tiny 200 "$M" selftest "$REPO/specs/tiny.lua"
job st-wt2-lm 200 env MOEGEN_SELFTEST_PART=lm "$M" selftest "$REPO/specs/wt2-moe8.lua"
job check 280 env OUT="$OUT/check" "$REPO/bench/train_wt2.sh" check
wait
for f in st-tiny st-wt2-lm; do echo "$f: $(grep -a '^selftest:' "$OUT/$f.log" | tail -1)"; grep -a -m5 FAIL "$OUT/$f.log"; done
grep -a -h "^check-step: .*: \(PASS\|FAIL\)\|grads vs\|^  loss:\|smoke:\|determinism:\|=== rc" "$OUT/check.log" | head -30
cat "$OUT/rc.txt"
! grep -v "rc=0 " "$OUT/rc.txt" | grep -q .
