#!/bin/bash
# ep_2gpu: the expert-parallel checks of issue 6 on one host with 2 GPUs (H100), ~6 minutes:
#
#   (a) wt2-moe8, 50 steps on 1 GPU (ep = 1) and on 2 GPUs (--gpus 2, ep = 2), same global batch
#       (64 × 256) and seed, dropout 0 (dropout masks are counter-based per rank's rows, so they
#       would differ): the loss curves compared (max relative deviation; bf16 bound 3e-2 over
#       50 steps, 5e-3 at step 1) and the first step's per-expert routing counts compared exactly
#       (metrics.jsonl "moe" loads of every layer);
#   (b) build/bench/mg_bench_a2a: mg_comm_all_to_all_v against NCCL's grouped send/recv
#       all-to-all on the same GPU pair, ratio >= 0.70;
#   (c) specs/ep-capacity.lua (5.8 B parameters: 99 GiB on one GPU, ~52 GiB per GPU with ep = 2)
#       training 30 steps on 2 GPUs (--no-save: a checkpoint would be ~70 GB), falling loss, GPU memory;
#   (s) wt2-moe8 with one shared expert (moe.shared_experts = 1), as (a): 1 GPU against 2 GPUs ep = 2
#       (same bounds, step-1 routing identical), and ep = 2 again with MOEGEN_EP_OVERLAP=0 (the shared
#       experts before each exchange instead of beside it): its losses must equal the overlapped run's
#       bit for bit (a race would show here), and the steady tokens/s of the two plus the exchanges'
#       a2a_s / a2a_hidden_s per step tell what the overlap gains (2x H200: bench/results/2026-11-26-s4).
#
#   here, once:  bench/train_wt2.sh prepare                  # data/shared/wikitext-2 for the device
#   on the GPU:  run(command="bench/ep_2gpu.sh", carry=["data"], kind="nvidia-h100-x2")
#   one part:    bench/ep_2gpu.sh a|b|c|s
# Logs, metrics and a summary (summary.txt) go to $OUT (the run call's output folder).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/bench/results/raw/ep-2gpu-$(date +%Y%m%d-%H%M)}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} MOEGEN_DATA_DIR=$REPO/data/shared
mkdir -p "$OUT"
M=$REPO/build/moegen
W=$(mktemp -d /tmp/ep2.XXXX)
SUM=$OUT/summary.txt

(cd "$REPO" && make -j"$(nproc)" all bench > "$OUT/build.log" 2>&1) || { tail -30 "$OUT/build.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# train.data = "wikitext-2" resolves to ./wikitext-2 (train.tok, valid.tok) first
(cd "$W" && "$M" data --corpus wikitext-2 --tokenizer word -o wikitext-2 > "$OUT/data.log" 2>&1) ||
    { cat "$OUT/data.log"; exit 1; }
cd "$W" || exit 1

variant() {   # variant NAME EP [SHARED]: wt2-moe8 with dropout 0, parallel.ep = EP, moe.shared_experts = SHARED (0)
    local sh=${3:-0}
    sed -e "s/name = \"wt2-moe8\"/name = \"$1\"/" -e 's/dropout = 0.2/dropout = 0/' \
        -e "s/shared_experts = 0 }/shared_experts = $sh }/" \
        -e "s/parallel = { dp = 1, ep = 1 }/parallel = { dp = 1, ep = $2 }/" "$REPO/specs/wt2-moe8.lua" > "$W/$1.lua"
    grep -q "ep = $2 }" "$W/$1.lua" && grep -q "dropout = 0," "$W/$1.lua" && grep -q "shared_experts = $sh }" "$W/$1.lua" ||
        { echo "variant $1: sed missed"; exit 1; }
}

part_a() {
    echo "=== (a) wt2-moe8 50 steps: 1 GPU vs 2 GPUs ep=2" | tee -a "$SUM"
    variant wt2-ep1 1
    variant wt2-ep2 2
    CUDA_VISIBLE_DEVICES=0 timeout 120 "$M" train "$W/wt2-ep1.lua" --device gpu --steps 50 --run-dir "$W/ep1" \
        > "$OUT/a-ep1.log" 2>&1; echo "1 GPU: rc=$?" | tee -a "$SUM"
    timeout 120 "$M" train "$W/wt2-ep2.lua" --gpus 2 --steps 50 --run-dir "$W/ep2" --timeout 120 \
        > "$OUT/a-ep2.log" 2>&1; echo "2 GPUs: rc=$?" | tee -a "$SUM"
    tail -3 "$OUT/a-ep1.log" "$OUT/a-ep2.log"
    cp "$W/ep1/metrics.jsonl" "$OUT/a-ep1-metrics.jsonl" 2>/dev/null
    cp "$W/ep2/metrics.jsonl" "$OUT/a-ep2-metrics.jsonl" 2>/dev/null
    python3 - "$OUT/a-ep1-metrics.jsonl" "$OUT/a-ep2-metrics.jsonl" <<'PY' 2>&1 | tee -a "$SUM"
import json, sys
try:
    A = [json.loads(l) for l in open(sys.argv[1])]
    B = [json.loads(l) for l in open(sys.argv[2])]
except OSError as e:
    sys.exit(f"(a) FAIL: {e}")
n = min(len(A), len(B))
rel = [abs(A[i]["loss"] - B[i]["loss"]) / abs(A[i]["loss"]) for i in range(n)]
worst = max(range(n), key=lambda i: rel[i]) if n else 0
print(f"steps compared {n} (1 GPU {len(A)}, 2 GPUs {len(B)}); step 1 loss {A[0]['loss']:.6f} vs {B[0]['loss']:.6f} "
      f"(rel {rel[0]:.2e}, bound 5e-3); max rel deviation {rel[worst]:.2e} at step {worst + 1} (bound 3e-2); "
      f"last {A[n-1]['loss']:.4f} vs {B[n-1]['loss']:.4f}")
la = [l["load"] for l in A[0].get("moe", [])]
lb = [l["load"] for l in B[0].get("moe", [])]
same = la == lb and len(la) > 0
print(f"step 1 routing counts per expert, {len(la)} layers: {'identical' if same else 'DIFFER'}")
if not same:
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y: print(f"  layer {i}: 1 GPU {x}\n           2 GPUs {y}")
ok = n == 50 and rel[0] <= 5e-3 and rel[worst] <= 3e-2 and same
print("(a)", "PASS" if ok else "FAIL")
PY
}

part_b() {
    echo "=== (b) all-to-all bandwidth: mg_comm vs NCCL" | tee -a "$SUM"
    timeout 120 "$REPO/build/bench/mg_bench_a2a" --gpus 2 --iters 50 --sizes 1,4,8,16,64 2>&1 | tee "$OUT/b-a2a.log"
    echo "rc=${PIPESTATUS[0]}" | tee -a "$SUM"
    tail -1 "$OUT/b-a2a.log" >> "$SUM"
}

part_c() {
    echo "=== (c) ep-capacity (5.8 B params) on 2 GPUs" | tee -a "$SUM"
    timeout 200 "$M" train "$REPO/specs/ep-capacity.lua" --gpus 2 --steps 30 --no-save --run-dir "$W/cap" \
        --timeout 190 > "$OUT/c-capacity.log" 2>&1; echo "rc=$?" | tee -a "$SUM"
    tail -5 "$OUT/c-capacity.log"
    cp "$W/cap/metrics.jsonl" "$OUT/c-metrics.jsonl" 2>/dev/null
    python3 - "$OUT/c-metrics.jsonl" <<'PY' 2>&1 | tee -a "$SUM"
import json, sys
try:
    L = [json.loads(l) for l in open(sys.argv[1])]
except OSError as e:
    sys.exit(f"(c) FAIL: {e}")
a, b = L[0]["loss"], L[-1]["loss"]
print(f"steps {len(L)}, loss {a:.3f} -> {b:.3f}, {L[-1]['tok_per_s']:.0f} tok/s")
print("(c)", "PASS" if len(L) >= 30 and b < a else "FAIL")
PY
    grep -h "GPU memory" "$OUT/c-capacity.log" | tail -2 | tee -a "$SUM"
}

part_s() {
    echo "=== (s) wt2-moe8 + 1 shared expert, 50 steps: 1 GPU vs 2 GPUs ep=2 (overlapped, and in series)" | tee -a "$SUM"
    variant wt2s-ep1 1 1
    variant wt2s-ep2 2 1
    CUDA_VISIBLE_DEVICES=0 timeout 150 "$M" train "$W/wt2s-ep1.lua" --device gpu --steps 50 --run-dir "$W/s1" \
        > "$OUT/s-ep1.log" 2>&1; echo "1 GPU: rc=$?" | tee -a "$SUM"
    timeout 150 "$M" train "$W/wt2s-ep2.lua" --gpus 2 --steps 50 --run-dir "$W/s2" --timeout 120 \
        > "$OUT/s-ep2.log" 2>&1; echo "2 GPUs, overlap: rc=$?" | tee -a "$SUM"
    MOEGEN_EP_OVERLAP=0 timeout 150 "$M" train "$W/wt2s-ep2.lua" --gpus 2 --steps 50 --run-dir "$W/s2x" --timeout 120 \
        > "$OUT/s-ep2-serial.log" 2>&1; echo "2 GPUs, MOEGEN_EP_OVERLAP=0: rc=$?" | tee -a "$SUM"
    tail -3 "$OUT/s-ep1.log" "$OUT/s-ep2.log" "$OUT/s-ep2-serial.log"
    for r in s1 s2 s2x; do cp "$W/$r/metrics.jsonl" "$OUT/s-$r-metrics.jsonl" 2>/dev/null; done
    python3 - "$REPO/bench" "$OUT/s-s1-metrics.jsonl" "$OUT/s-s2-metrics.jsonl" "$OUT/s-s2x-metrics.jsonl" <<'PY' 2>&1 | tee -a "$SUM"
import json, sys
sys.path.insert(0, sys.argv[1])
from runstats import tokps
try:
    A, B, C = ([json.loads(l) for l in open(p)] for p in sys.argv[2:5])
except OSError as e:
    sys.exit(f"(s) FAIL: {e}")
n = min(len(A), len(B))
rel = [abs(A[i]["loss"] - B[i]["loss"]) / abs(A[i]["loss"]) for i in range(n)]
worst = max(range(n), key=lambda i: rel[i]) if n else 0
print(f"steps compared {n} (1 GPU {len(A)}, 2 GPUs {len(B)}); step 1 loss {A[0]['loss']:.6f} vs {B[0]['loss']:.6f} "
      f"(rel {rel[0]:.2e}, bound 5e-3); max rel deviation {rel[worst]:.2e} at step {worst + 1} (bound 3e-2); "
      f"last {A[n-1]['loss']:.4f} vs {B[n-1]['loss']:.4f}")
la = [l["load"] for l in A[0].get("moe", [])]
lb = [l["load"] for l in B[0].get("moe", [])]
same = la == lb and len(la) > 0
print(f"step 1 routing counts per expert, {len(la)} layers: {'identical' if same else 'DIFFER'}")
m = min(len(B), len(C))
diff = [i + 1 for i in range(m) if B[i]["loss"] != C[i]["loss"]]
bitwise = m == 50 and not diff
print(f"overlap vs MOEGEN_EP_OVERLAP=0: {m} steps, losses {'bitwise equal' if bitwise else f'DIFFER at steps {diff[:5]}'}")
def a2a(R):
    s = R[5:-1]
    return sum(x.get("a2a_s", 0) for x in s) / len(s), sum(x.get("a2a_hidden_s", 0) for x in s) / len(s)
if len(B) > 8 and len(C) > 8:
    tb, tc = tokps(B), tokps(C)
    (xb, hb), (xc, hc) = a2a(B), a2a(C)
    print(f"steady tok/s: overlap {tb:.0f}, in series {tc:.0f} (x{tb / tc:.3f}); per step a2a_s {xb * 1e3:.2f} ms "
          f"of which hidden {hb * 1e3:.2f} ms (in series: a2a_s {xc * 1e3:.2f} ms, hidden {hc * 1e3:.2f})")
ok = n == 50 and rel[0] <= 5e-3 and rel[worst] <= 3e-2 and same and bitwise
print("(s)", "PASS" if ok else "FAIL")
PY
}

case "${1:-all}" in
a) part_a ;;
b) part_b ;;
c) part_c ;;
s) part_s ;;
all) part_b; part_a; part_s; part_c ;;
*) echo "usage: ep_2gpu.sh [a|b|c|s|all]"; exit 1 ;;
esac
echo "=== summary"; cat "$SUM"
