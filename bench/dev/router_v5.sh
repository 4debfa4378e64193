#!/bin/bash
# router_v5: one GPU call for the router rewrite (branch router-v5: tiled fwd/dx/dwg). Run from
# the repo root after `make -j all bench`; for the base times also build the commit before the
# rewrite (38f3fad) elsewhere and copy its build/moegen and build/bench/mg_bench_layer into
# build/base/ (skipped when absent). Logs under $OUT (summary.txt, logs.tgz).
# Parts (PARTS="1 2 3 4" by default):
#   1. selftests, MoE part only, all at once: tiny, ci-cpu (fp32), bench-small, bench-olmoe,
#      fine128, switch-cf125 and five specs written below (E = 40, 100, 200, 256; fp16, fp32,
#      sigmoid, switch; d not a multiple of 128)
#   2. the router kernels' times under ncu (us/launch), new and base, small and olmoe
#   3. mg_bench_layer fwd/bwd, new and base
#   4. racecheck of the router kernels in the tiny selftest
# Predicted on an H100 (from bytes and FLOPs): olmoe fwd ~25-30 us (was 901), dx ~45-50 (270),
# dwg + dwgsum ~35-40 (231); small fwd ~10, dx ~17, dwg ~10.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/router_v5}; L=/tmp/router_v5_logs; mkdir -p "$OUT" "$L" /tmp/rspecs
export MOEGEN_CACHE_DIR=/tmp/mgc MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=${BUDGET:-1e9}
S=$OUT/summary.txt
PARTS=${PARTS:-1 2 3 4}
part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$S"
# CUDA libraries moegen links that a device may keep elsewhere (NCCL: PyTorch's copy)
for lib in $(ldd build/moegen | sed -n 's/^\s*\(lib[^ ]*\) => not found/\1/p'); do
    p=$(find / -name "$lib" -not -path '/proc/*' 2>/dev/null | head -1)
    [ -n "$p" ] && export LD_LIBRARY_PATH=$(dirname "$p")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
ldd build/moegen | grep 'not found' >> "$S"

spec() { # name d_model experts top_k router dtype
    printf 'return { name = "%s", model = { vocab = 512, d_model = %s, n_layer = 1, n_head = 4, seq_len = 64 },\n  moe = { experts = %s, top_k = %s, d_ff = 64, activation = "swiglu", router = "%s" }, dtype = "%s" }\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" > "/tmp/rspecs/$1.lua"
}
spec r-e256-bf16 256 256 8 softmax_topk bf16
spec r-e256-fp16 128 256 4 sigmoid_topk fp16
spec r-e200-fp32 96 200 1 switch fp32
spec r-e100-bf16 288 100 6 sigmoid_topk bf16
spec r-e40-fp16 64 40 3 softmax_topk fp16

# (1) selftests, all at once (the CPU reference is one core each)
part 1 && for s in specs/tiny.lua specs/ci-cpu.lua specs/bench-small.lua specs/bench-olmoe.lua specs/fine128.lua \
         specs/switch-cf125.lua /tmp/rspecs/*.lua; do
    n=$(basename "$s" .lua)
    ( timeout "${ST_LIMIT:-240}" build/moegen selftest "$s" > "$L/selftest-$n.log" 2>&1
      echo "selftest $n rc=$? $(grep -E '[0-9]+ passed|[0-9]+/[0-9]+' "$L/selftest-$n.log" | tail -1)" >> "$L/st.txt" ) &
done
wait
part 1 && sort "$L/st.txt" >> "$S"
part 1 && grep -h -B2 -A6 -E 'FAIL|fail ' "$L"/selftest-*.log | head -80 > "$OUT/selftest-failures.txt"

# (2) router kernels under ncu, new and base
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
part 2 && for sh in small olmoe; do
    for v in new $([ -x build/base/mg_bench_layer ] && echo base); do
        bin=build/bench/mg_bench_layer; [ $v = base ] && bin=build/base/mg_bench_layer
        timeout 240 "$NCU" --csv --page raw --metrics gpu__time_duration.sum --clock-control none --print-units base \
            -k regex:router --log-file "$L/ncu-$v-$sh.csv" "$bin" --shape "$sh" --runs 3 --warmup 1 > "$L/ncu-$v-$sh.log" 2>&1
        echo "== ncu $v $sh (rc=$?)" >> "$S"
        python3 bench/ncu_sum.py "$L/ncu-$v-$sh.csv" >> "$S" 2>&1
    done
done

# (3) the layer, new and base (no profiler)
part 3 && for sh in small olmoe; do
    for v in new $([ -x build/base/mg_bench_layer ] && echo base); do
        bin=build/bench/mg_bench_layer; [ $v = base ] && bin=build/base/mg_bench_layer
        timeout 120 "$bin" --shape "$sh" --runs 10 --warmup 2 > "$L/layer-$v-$sh.log" 2>&1
        echo "== layer $v $sh (rc=$?): $(tail -3 "$L/layer-$v-$sh.log" | tr '\n' ' ')" >> "$S"
    done
done

# (4) racecheck on the router kernels of a tiny selftest
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
part 4 && MOEGEN_SELFTEST_BUDGET=2e7 timeout 240 "$CS" --tool racecheck --kernel-name regex:router \
    build/moegen selftest specs/tiny.lua > "$L/racecheck.log" 2>&1
part 4 && echo "racecheck rc=$? $(grep -E 'RACECHECK SUMMARY|hazard' "$L/racecheck.log" | tail -2 | tr '\n' ' ')" >> "$S"
tar czf "$OUT/logs.tgz" -C "$L" .
cat "$S"
