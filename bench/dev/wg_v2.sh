#!/bin/bash
# Device run of the Hopper GEMM v2 (TMA producer): build, selftests with every GEMM on the
# Hopper path, layer bench with dgrad/wgrad on wgmma (MOEGEN_WG_BWD=1) and on mma.sync (=0),
# torch grouped_mm peer in the same call. Logs under $OUT (bench/NOTES.md, v2).
set -u
O=${OUT:-/tmp/wgout}; mkdir -p "$O"
make -j16 >"$O/build.log" 2>&1 && make bench -j16 >>"$O/build.log" 2>&1 || { tail -30 "$O/build.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
git rev-parse --short HEAD; git status --short | head -20
for s in wt2-moe8 tiny switch-cf125; do
  MOEGEN_WG_BWD=1 timeout 60 build/moegen selftest specs/$s.lua --seed 1 >"$O/st-$s.log" 2>&1
  echo "selftest $s rc=$? $(grep -c PASS "$O/st-$s.log") PASS, $(grep -c FAIL "$O/st-$s.log") FAIL"; grep -m5 FAIL "$O/st-$s.log"
done
MOEGEN_WG_BWD=1 timeout 100 build/bench/mg_bench_layer --runs 10 --warmup 3 >"$O/bench-bwd1.log" 2>&1; echo "bench bwd1 rc=$?"
timeout 80 python3 bench/peer_torch.py --skip-hf --runs 10 >"$O/peer.log" 2>&1; echo "peer rc=$?"
MOEGEN_WG_BWD=0 timeout 70 build/bench/mg_bench_layer --runs 5 --warmup 2 >"$O/bench-bwd0.log" 2>&1; echo "bench bwd0 rc=$?"
grep -h "fwd+bwd\|  fwd \|  bwd " "$O"/bench-bwd1.log | sed 's/^/bwd1 /'
grep -h "fwd+bwd\|  fwd \|  bwd " "$O"/bench-bwd0.log | sed 's/^/bwd0 /'
tail -12 "$O/peer.log"
