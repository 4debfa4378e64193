#!/bin/bash
# acceptance: the GPU acceptance checks in one short call. Independent jobs run in parallel
# (the CPU reference of each selftest is single-threaded; the GPU work is small), each under
# its own time limit, each logging to $OUT/<job>.log; a summary line per job at the end.
set -u
OUT=${OUT:-bench/results/raw/acceptance-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0
LIMIT=${LIMIT:-280}
echo "acceptance $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)" | tee "$OUT/summary.txt"
make -j"$(nproc)" all bench > /tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }

selftests() { # part budget specs...
    local part=$1 budget=$2; shift 2
    for s in "$@"; do
        echo "=== selftest $s (part $part)"
        MOEGEN_SELFTEST_PART=$part MOEGEN_SELFTEST_BUDGET=$budget build/moegen selftest specs/$s.lua --seed 21 \
            ${MOEGEN_SELFTEST_ARCH:+--arch $MOEGEN_SELFTEST_ARCH}
        echo "=== rc=$? $s"
    done
}
job() { # name command...
    local name=$1; shift
    ( s=$(date +%s); timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1; rc=$?
      echo "$(printf '%-12s rc=%-3d %4ds' "$name" $rc $(( $(date +%s) - s )))" >> "$OUT/summary.txt" ) &
}
job moe-small  bash -c "$(declare -f selftests); selftests moe 3e8 tiny wt2-moe8 switch-cf125 wt2-dense sweep-experts ci-cpu"
job moe-large  bash -c "$(declare -f selftests); selftests moe 3e8 olmoe-1b-7b fine128 mixtral-8x7b"
job lm         bash -c "$(declare -f selftests); selftests lm 3e8 wt2-moe8 tiny"
job sanitizer  bash -c "MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 compute-sanitizer --tool memcheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 22; echo memcheck rc=\$?; \
                        MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 compute-sanitizer --tool racecheck --error-exitcode 3 build/moegen selftest specs/tiny.lua --seed 23; echo racecheck rc=\$?"
job ptx        bash -c "$(declare -f selftests); MOEGEN_SELFTEST_ARCH=compute_80; selftests moe 3e8 tiny wt2-moe8 2>&1 | sed 's/^/[compute_80] /'"
job examples   bash -c "make -C examples/embed-c && examples/embed-c/build/embed-c && examples/embed-c/build/embed-c --image ptx --tokens 1000 && make -C examples/cpp && examples/cpp/build/moe-cpp && \
                        make install PREFIX=/tmp/mgp >/dev/null && PKG_CONFIG_PATH=/tmp/mgp/lib/pkgconfig make -C examples/pkgconfig && examples/pkgconfig/build/moe-runtime specs/tiny.lua; echo examples rc=\$?"
wait
# the bundle-vs-moegen timing wants a quiet GPU: after the parallel jobs, alone
job bundle-time build/bench/mg_bench_bundle; wait
cat "$OUT/summary.txt"
grep -hE "^selftest:|=== rc|rc=|ERROR SUMMARY|RACECHECK SUMMARY|PASS$|embed-c:|moe-cpp" "$OUT"/*.log | grep -v "  PASS$" | head -60
