#!/bin/bash
# scale_gpus: issue 7's runs on one host with N GPUs (4 or 8), in sections so that a call can run
# what its device time allows. Needs the corpus in data/shared (bench/train_wt2.sh prepare) and a
# built tree (make -j all bench). Logs, metrics and summary.txt go to $OUT.
#   run(command="bench/scale_gpus.sh 4 dp", carry=["data"], kind="nvidia-h100-x4")   # ~6 min
#   run(command="bench/scale_gpus.sh 4 ep", carry=["data"], kind="nvidia-h100-x4")   # ~7 min
#   run(command="bench/scale_gpus.sh 4 curve", carry=["data"], kind="nvidia-h100-x4") # ~2 min
# dp     tokens/s of wt2-moe8 and dp-large on 1, 2, N GPUs, each with the same global batch split into
#        N micro-batches (grad_accum = N, the micro-batch split); efficiency = tps_N / (N · tps_1)
#        (target ≥ 0.90 at 8 GPUs); and weak scaling of wt2-moe8 (64 rows per GPU: batch 64·N on N
#        GPUs against batch 64 on 1)
# ep     32- and 64-expert variants of wt2-moe8 at ep = N, 300 steps: per-layer load CV over the last
#        10% of steps (target < 0.20) and the all-to-all share of step time (metrics a2a_s)
# curve  wt2-moe8 (dropout 0) 50 steps at ep = N against 1 GPU: step-1 routing counts identical,
#        loss within the 2-GPU bounds (step 1: 5e-3, every step: 3e-2)
set -u
N=${1:?usage: scale_gpus.sh N [dp] [ep] [curve]}; shift
SECTIONS=" ${*:-dp ep curve} "
has() { [[ "$SECTIONS" == *" $1 "* ]]; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/bench/results/raw/scale-${N}gpu-$(date +%Y%m%d-%H%M)}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} MOEGEN_DATA_DIR=$REPO/data/shared NCCL_NVLS_ENABLE=0
M=$REPO/build/moegen
mkdir -p "$OUT"
SUM=$OUT/summary.txt
say() { echo "$*" | tee -a "$SUM"; }
[ -x "$M" ] || { echo "scale_gpus: build first"; exit 1; }
[ "$(nvidia-smi -L | wc -l)" -ge "$N" ] || { echo "scale_gpus: needs $N GPUs"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$OUT/gpu.txt"
W=$(mktemp -d /tmp/scale.XXXX) && cd "$W" || exit 1
"$M" data --corpus wikitext-2 --tokenizer word -o wikitext-2 > "$OUT/data.log" 2>&1 || { cat "$OUT/data.log"; exit 1; }

derive() { # derive NAME BASE SED-EXPR...: a spec variant; fails loudly when a pattern missed
    local name=$1 base=$2; shift 2
    local args=(-e "s/name = \"[^\"]*\"/name = \"$name\"/")
    for x in "$@"; do args+=(-e "$x"); done
    sed "${args[@]}" "$REPO/specs/$base.lua" > "$W/$name.lua"
    for x in "$@"; do   # every substitution must have landed: its replacement text is in the result
        grep -qF "$(echo "$x" | awk -F/ '{print $3}')" "$W/$name.lua" || { say "FAIL: derive $name: '$x' missed"; exit 1; }
    done
    "$M" check "$W/$name.lua" > /dev/null || { say "FAIL: derive $name: not a valid spec"; exit 1; }
}
run() { # run NAME GPUS STEPS [extra args]: train, copy log and metrics
    local name=$1 g=$2 steps=$3; shift 3
    local flags=(--device gpu); [ "$g" -gt 1 ] && flags=(--gpus "$g" --timeout 300)
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((g - 1))) timeout 400 "$M" train "$W/$name.lua" --steps "$steps" \
        --run-dir "$W/r-$name-$g" --no-save "${flags[@]}" "$@" > "$OUT/$name-$g.log" 2>&1
    local rc=$?; cp "$W/r-$name-$g/metrics.jsonl" "$OUT/$name-$g-metrics.jsonl" 2>/dev/null
    [ $rc -eq 0 ] || say "FAIL: $name on $g GPU(s): rc $rc ($OUT/$name-$g.log)"
    rm -rf "$W/r-$name-$g"
}
py() { PYTHONPATH=$REPO/bench python3 - "$OUT" "$@" | tee -a "$SUM"; }   # runstats.py importable

if has dp; then
    say "== dp: tokens/s on 1, 2, $N GPUs (global batch fixed, grad_accum = $N)"
    derive wt2-ga wt2-moe8 "s/batch = 64,/batch = $((64 / N)), grad_accum = $N,/"
    derive large-ga dp-large "s/batch = 32, grad_accum = 2,/batch = $((64 / N)), grad_accum = $N,/"
    derive wt2-w wt2-moe8 "s/batch = 64,/batch = $((64 * N)),/"
    derive wt2-1 wt2-moe8 "s/seed = 1 }/seed = 1 }/"
    for s in wt2-ga:40 large-ga:20; do for g in 1 2 "$N"; do run "${s%%:*}" "$g" "${s##*:}"; done; done
    run wt2-1 1 30; run wt2-w "$N" 30
    py "$N" <<'PY'
import os, sys
from runstats import load, tokps
out, N = sys.argv[1], int(sys.argv[2])
def tps(name, g):
    return tokps(load(os.path.join(out, f"{name}-{g}-metrics.jsonl")))
for name in ["wt2-ga", "large-ga"]:
    try:
        t = {g: tps(name, g) for g in sorted({1, 2, N})}
    except (OSError, IndexError, KeyError) as e:
        print(f"{name}: no throughput ({e})"); continue
    print(f"{name}: " + ", ".join(f"{g} GPU {v:.0f} tok/s (eff {v / (g * t[1]):.3f})" for g, v in t.items()))
try:
    t1, tN = tps("wt2-1", 1), tps("wt2-w", N)
    print(f"wt2-moe8 weak scaling (64 rows per GPU): 1 GPU {t1:.0f} tok/s, {N} GPUs {tN:.0f} tok/s (eff {tN / (N * t1):.3f})")
except (OSError, IndexError, KeyError) as e:
    print(f"wt2-moe8 weak scaling: no throughput ({e})")
PY
fi

if has ep; then
    say "== ep: 32 and 64 experts at ep = $N, 300 steps"
    derive ep32 wt2-moe8 "s/experts = 8, top_k = 2, d_ff = 1024/experts = 32, top_k = 4, d_ff = 512/" \
        "s/parallel = { dp = 1, ep = 1 }/parallel = { dp = 1, ep = $N }/"
    derive ep64 wt2-moe8 "s/experts = 8, top_k = 2, d_ff = 1024/experts = 64, top_k = 8, d_ff = 256/" \
        "s/parallel = { dp = 1, ep = 1 }/parallel = { dp = 1, ep = $N }/"
    run ep32 "$N" 300; run ep64 "$N" 300
    py <<'PY'
import os, sys
from runstats import load, load_cv
out = sys.argv[1]
for name in ["ep32", "ep64"]:
    p = [f for f in os.listdir(out) if f.startswith(name + "-") and f.endswith("-metrics.jsonl")]
    if not p: print(f"{name}: no metrics"); continue
    L = load(os.path.join(out, p[0]))
    cv = load_cv(L)
    s = L[5:-1]
    share = sum(x.get("a2a_s", 0) for x in s) / (s[-1]["elapsed_s"] - L[4]["elapsed_s"])
    print(f"{name}: {L[-1]['step']} steps, load CV last 10% per layer " + " ".join(f"{c:.3f}" for c in cv) +
          f" (max {max(cv):.3f}, target < 0.20); all-to-all share of step time {share:.1%}")
PY
fi

if has curve; then
    say "== curve: wt2-moe8 (dropout 0) 50 steps, 1 GPU vs ep = $N"
    derive c1 wt2-moe8 "s/dropout = 0.2/dropout = 0/"
    derive cN wt2-moe8 "s/dropout = 0.2/dropout = 0/" "s/parallel = { dp = 1, ep = 1 }/parallel = { dp = 1, ep = $N }/"
    run c1 1 50; run cN "$N" 50
    py "$N" <<'PY'
import json, os, sys
out, N = sys.argv[1], sys.argv[2]
A = [json.loads(l) for l in open(os.path.join(out, "c1-1-metrics.jsonl"))]
B = [json.loads(l) for l in open(os.path.join(out, f"cN-{N}-metrics.jsonl"))]
n = min(len(A), len(B))
rel = [abs(A[i]["loss"] - B[i]["loss"]) / abs(A[i]["loss"]) for i in range(n)]
same = [l["load"] for l in A[0]["moe"]] == [l["load"] for l in B[0]["moe"]]
ok = n == 50 and rel[0] <= 5e-3 and max(rel) <= 3e-2 and same
print(f"{n} steps; step 1 rel {rel[0]:.2e}; max rel {max(rel):.2e}; step-1 loads {'identical' if same else 'DIFFER'}: "
      f"{'PASS' if ok else 'FAIL'}")
PY
fi
rm -rf "$W"
echo "== summary"; cat "$SUM"
! grep -q FAIL "$SUM"
