#!/bin/bash
# wg_probe: what limits the Hopper GEMMs (bench/NOTES.md, v5). One GPU call, logs under $OUT:
#   1. mg_bench_layer on the four shapes, default against device-only knobs (MOEGEN_JIT_DEFINES):
#      128 x 256 tiles (MG_WG_BN_DEV=256: half the B traffic per FLOP), ping-pong off;
#   2. ncu stall reasons / memory sections for the three slowest kernels of small and Mixtral's up fwd.
set -u
O=${OUT:-/tmp/wg_probe}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache}
S="$O/summary.txt"; : > "$S"
B=build/bench/mg_bench_layer
for sh in small olmoe finegrained mixtral; do
    for v in "default|" "bn256|-DMG_WG_BN_DEV=256" "pp0|-DMG_WG_PINGPONG=0"; do
        tag=${v%%|*}; def=${v#*|}
        MOEGEN_JIT_DEFINES="$def" timeout 90 $B --shape $sh --runs 10 --warmup 3 > "$O/bench-$sh-$tag.log" 2>&1
        echo "rc=$? $sh $tag" >> "$S"
        grep -a median "$O/bench-$sh-$tag.log" | sed "s/^/$sh $tag /" >> "$S"
    done
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section SchedulerStats"
for k in "small|up_swiglu.*_fwd" "small|down_swiglu.*_dgrad" "small|up_swiglu.*_wgrad" "mixtral|up_swiglu.*_fwd"; do
    sh=${k%%|*}; re=${k#*|}
    timeout 120 "$NCU" $sec --clock-control none -k "regex:$re" -s 2 -c 1 $B --shape $sh --runs 2 --warmup 1 \
        > "$O/ncu-$sh-${re//[^a-z]/}.txt" 2>&1
    echo "ncu rc=$? $sh $re" >> "$S"
done
cat "$S"
