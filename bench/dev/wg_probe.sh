#!/bin/bash
# wg_probe: what limits the Hopper GEMMs (bench/NOTES.md, v5). One GPU call, logs under $OUT.
# usage: bench/dev/wg_probe.sh [SECTION...]   (no argument: knobs ncu, as before)
#   knobs: mg_bench_layer on the four shapes, default against device-only knobs
#      (MOEGEN_JIT_DEFINES): 128 x 256 tiles (MG_WG_BN_DEV=256: half the B traffic per FLOP),
#      ping-pong off;
#   ncu: ncu stall reasons / memory sections for the three slowest kernels of small and
#      Mixtral's up fwd;
#   bn: the per-GEMM tile width knobs (templates/moe_params.h, MG_WG_BN_{UP,DN}_*): the four
#      shapes with each of the six forced to 128 (one at a time, the others default) and the
#      default; fwd knobs move the fwd median, dgrad/wgrad ones the bwd's.
set -u
O=${OUT:-/tmp/wg_probe}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache}
S="$O/summary.txt"; : > "$S"
B=build/bench/mg_bench_layer
SECTIONS=${*:-knobs ncu}
for sec in $SECTIONS; do
    case $sec in knobs|ncu|bn) ;; *) echo "wg_probe: unknown section '$sec' (knobs, ncu, bn)" >&2; exit 2 ;; esac
done
has() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

if has knobs; then
for sh in small olmoe finegrained mixtral; do
    for v in "default|" "bn256|-DMG_WG_BN_DEV=256" "pp0|-DMG_WG_PINGPONG=0"; do
        tag=${v%%|*}; def=${v#*|}
        MOEGEN_JIT_DEFINES="$def" timeout 90 $B --shape $sh --runs 10 --warmup 3 > "$O/bench-$sh-$tag.log" 2>&1
        echo "rc=$? $sh $tag" >> "$S"
        grep -a median "$O/bench-$sh-$tag.log" | sed "s/^/$sh $tag /" >> "$S"
    done
done
fi

if has ncu; then
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
sec="--section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section SchedulerStats"
for k in "small|up_swiglu.*_fwd" "small|down_swiglu.*_dgrad" "small|up_swiglu.*_wgrad" "mixtral|up_swiglu.*_fwd"; do
    sh=${k%%|*}; re=${k#*|}
    timeout 120 "$NCU" $sec --clock-control none -k "regex:$re" -s 2 -c 1 $B --shape $sh --runs 2 --warmup 1 \
        > "$O/ncu-$sh-${re//[^a-z]/}.txt" 2>&1
    echo "ncu rc=$? $sh $re" >> "$S"
done
fi

if has bn; then
T="$O/bn-table.txt"; : > "$T"
for sh in small olmoe finegrained mixtral; do
    for v in default UP_FWD UP_DGRAD UP_WGRAD DN_FWD DN_DGRAD DN_WGRAD; do
        tag=bn-$v; def=; [ $v = default ] || { tag=bn128-$v; def="-DMG_WG_BN_$v=128"; }
        MOEGEN_JIT_DEFINES="$def" timeout 90 $B --shape $sh --runs 10 --warmup 3 > "$O/bench-$sh-$tag.log" 2>&1
        echo "rc=$? $sh $tag" >> "$S"
        grep -a median "$O/bench-$sh-$tag.log" | sed "s/^/$sh $tag /" >> "$S"
        # one row: shape, variant, then the fwd+bwd, fwd and bwd medians (ms)
        awk -v sh=$sh -v tag=$tag '/ median /{for(i=1;i<NF;i++) if($i=="median"){m[$2]=$(i+1)}}
            END{printf "%-12s %-16s %10s %10s %10s\n", sh, tag, m["fwd+bwd"], m["fwd"], m["bwd"]}' \
            "$O/bench-$sh-$tag.log" >> "$T"
    done
done
{ echo "== bn: medians (ms), each knob forced to 128 against the default (256 where n >= 256)"
  printf '%-12s %-16s %10s %10s %10s\n' shape variant fwd+bwd fwd bwd; cat "$T"; } >> "$S"
fi
cat "$S"
