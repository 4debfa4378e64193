#!/bin/bash
# balance_wt2: issue #8's load-balancing comparison on wt2-moe8 as the training issue trains it
# (the spec's 4000-step cosine schedule, bf16, dropout 0.2): aux loss (the spec as shipped),
# aux-loss-free bias (DeepSeek-V3), both (aux turned down to 0.001) and neither. The four runs
# share one GPU at once, so each one's tokens/s here says nothing; the step counts, the load CV
# over the last 10% of steps per layer and the best validation perplexity are compared.
#   on the GPU: run(command="bash bench/balance_wt2.sh", carry=["data", ...])
# Needs the corpus in data/shared/wikitext-2 (bench/train_wt2.sh prepare). Logs to $OUT.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/bench/results/raw/balance-wt2-$(date +%Y%m%d-%H%M)}
LIMIT=${LIMIT:-480}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} MOEGEN_DATA_DIR=$REPO/data/shared
mkdir -p "$OUT"
M=$REPO/build/moegen
[ -x "$M" ] || (cd "$REPO" && make -j"$(nproc)" all > /tmp/build.log 2>&1) || { tail -30 /tmp/build.log; exit 1; }
W=$(mktemp -d /tmp/bal.XXXX) && cd "$W" || exit 1
"$M" data --corpus wikitext-2 --tokenizer word -o wikitext-2 > "$OUT/data.log" 2>&1 || { cat "$OUT/data.log"; exit 1; }
variant() { # name aux rate
    sed -e "s/name = \"wt2-moe8\"/name = \"wt2-moe8-$1\"/" -e "s/aux_loss = 0.01,/aux_loss = $2, bias_update_rate = $3,/" \
        "$REPO/specs/wt2-moe8.lua" > "$OUT/$1.lua"
    grep -q "bias_update_rate = $3" "$OUT/$1.lua" || { echo "balance_wt2: could not derive $1 from wt2-moe8.lua"; exit 1; }
}
variant aux 0.01 0; variant auxfree 0 0.001; variant both 0.001 0.001; variant neither 0 0
# compile once (the four share the kernel cache) before they start together
"$M" compile "$OUT/aux.lua" > "$OUT/compile.log" 2>&1
for v in aux auxfree both neither; do
    timeout -s INT "$LIMIT" "$M" train "$OUT/$v.lua" --run-dir "$W/$v" > "$OUT/$v.log" 2>&1 &
done
wait
for v in aux auxfree both neither; do cp "$W/$v/metrics.jsonl" "$OUT/$v-metrics.jsonl" 2>/dev/null; done
PYTHONPATH=$REPO/bench python3 - "$OUT" <<'PY'
import json, os, sys
from runstats import load_cv
out = sys.argv[1]
print(f"{'variant':9} {'steps':>6} {'best val ppl':>12} {'at step':>7}  load CV per layer, mean over the last 10% of steps (max)")
for v in ["aux", "auxfree", "both", "neither"]:
    p = os.path.join(out, f"{v}-metrics.jsonl")
    if not os.path.exists(p):
        print(f"{v:9} no metrics"); continue
    L = [json.loads(l) for l in open(p)]
    val = [(x["val_ppl"], x["step"]) for x in L if "val_ppl" in x]
    cv = load_cv(L)
    b = min(val) if val else (float("nan"), 0)
    print(f"{v:9} {L[-1]['step']:6d} {b[0]:12.2f} {b[1]:7d}  " + " ".join(f"{c:.3f}" for c in cv) + (f"  (max {max(cv):.3f})" if cv else ""))
PY
