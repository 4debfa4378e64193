#!/bin/bash
# s7: one GPU call for session 7's Hopper GEMM work (bench/NOTES.md, "v10"); every candidate is a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c) or env, so one call A/Bs it.
# (after call 4 the clamp is the only path and MG_WG_MN_AHEAD, MG_WG_EPI_L2PF and MG_WG_MN_CLAMP were
# removed, each measured level: in ah and pf their settings are now no-ops; so are gl's
# MG_WG_GATHER_L2 and MG_WG_TMA_L2, removed after call 8, level, and bk's MG_WG_BK_WGRAD, removed
# after call 9: more, shallower stages level, its 64 x 16 da boxes 0.6 ms slower; bkb's env
# MOEGEN_WG_BK_WGRAD, da boxes of the stage's rows, removed after call 11, level)
# usage: bench/dev/s7.sh [prof] [src] [ab] [ah] [srcw] [pf] [bandk] [gl] [bk] [bkb] ...   from the repo root after `make -j all bench`;
# logs under $OUT. nvidia-smi samples clocks, power and throttle reasons every 200 ms into
# smi.csv while it runs (marks.txt: when each step started), to tell run-to-run noise from
# power capping. Steps have timeouts cut to what is left of LIMIT.
set -u
O=${OUT:-/tmp/s7}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
BENCH_RUNS=20 ST_T=90 ST_SEED=37
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st, smi_sample; T0, S
smi_sample
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-prof} "
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
if [[ $PH == *" prof "* ]]; then   # Mixtral's kernels one by one (ncu, clocks not locked)
step "prof_layer mixtral" 150 prof.log env OUT="$O/prof" bench/prof_layer.sh mixtral
cat "$O"/prof/prof-*.txt 2>/dev/null | head -12 | tee -a "$S"
fi
if [[ $PH == *" src "* ]]; then   # where the warps of Mixtral's slow GEMMs stall, per SASS line
for k in ${SRC_K:-"upwgrad|up_swiglu.*_wgrad" "upfwd|up_swiglu.*_fwd" "dndgrad|down_swiglu.*_dgrad"}; do
    tag=${k%%|*}; re=${k#*|}
    step "ncu src mixtral $tag" 150 ncu-src-$tag.txt "$NCU" --section WarpStateStats \
        --section SourceCounters --section SpeedOfLight --section MemoryWorkloadAnalysis --clock-control none \
        -k "regex:$re" -s 2 -c 1 -f -o "$O/rep-$tag" build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
    "$NCU" -i "$O/rep-$tag.ncu-rep" --page source --csv --print-source sass > "$O/sass-$tag.csv" 2> "$O/sass-$tag.err"
    "$NCU" -i "$O/rep-$tag.ncu-rep" --page details --print-details all > "$O/details-$tag.txt" 2>&1
    rm -f "$O/rep-$tag.ncu-rep"
done
fi
if [[ $PH == *" ab "* ]]; then   # Mixtral: the existing knobs again, on the lean producer
bench default mixtral
bench dd128 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BN_DN_DGRAD=128
bench uf128 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BN_UP_FWD=128
bench pairs mixtral MOEGEN_WG_CLUSTER=2
bench band8 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BAND=8
bench default mixtral
fi
if [[ $PH == *" ah "* ]]; then   # up wgrad's gather rows read further ahead (MG_WG_MN_AHEAD), clamped rows (MG_WG_MN_CLAMP)
A2="-DMG_WG_MN_AHEAD=2 -DMG_WG_MN_CLAMP=1"; A3="-DMG_WG_MN_AHEAD=3 -DMG_WG_MN_CLAMP=1"
st ah2c "$A2" tiny
st ah3c "$A3" tiny
st ah3ccoop "$A3 -DMG_WG_PINGPONG=0" tiny
st ah3c "$A3" bench-small
bench default mixtral
bench clamp mixtral MOEGEN_JIT_DEFINES=-DMG_WG_MN_CLAMP=1
bench ah2 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_MN_AHEAD=2
bench ah2c mixtral MOEGEN_JIT_DEFINES="$A2"
bench ah3c mixtral MOEGEN_JIT_DEFINES="$A3"
bench ah4c mixtral MOEGEN_JIT_DEFINES="-DMG_WG_MN_AHEAD=4 -DMG_WG_MN_CLAMP=1"
bench default mixtral
for sh in olmoe finegrained small; do
    bench default $sh
    bench ah2c $sh MOEGEN_JIT_DEFINES="$A2"
    bench ah3c $sh MOEGEN_JIT_DEFINES="$A3"
done
fi
if [[ $PH == *" srcw "* ]]; then   # up wgrad's stalls with the candidate
step "ncu src mixtral upwgrad ah3c" 150 ncu-src-upwgrad-ah3c.txt env MOEGEN_JIT_DEFINES="-DMG_WG_MN_AHEAD=3 -DMG_WG_MN_CLAMP=1" \
    "$NCU" --section WarpStateStats --section SourceCounters --section SpeedOfLight --clock-control none \
    -k "regex:up_swiglu.*_wgrad" -s 2 -c 1 -f -o "$O/rep-ah3c" build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
"$NCU" -i "$O/rep-ah3c.ncu-rep" --page source --csv --print-source sass > "$O/sass-upwgrad-ah3c.csv" 2>&1
"$NCU" -i "$O/rep-ah3c.ncu-rep" --page details --print-details all > "$O/details-upwgrad-ah3c.txt" 2>&1
rm -f "$O/rep-ah3c.ncu-rep"
fi
if [[ $PH == *" pf "* ]]; then   # down dgrad's a prefetched into L2 before the epilogue (MG_WG_EPI_L2PF), with the clamp on
C="-DMG_WG_MN_CLAMP=1"
st pf6 "$C -DMG_WG_EPI_L2PF=6" tiny
st pf6coop "$C -DMG_WG_EPI_L2PF=6 -DMG_WG_PINGPONG=0" tiny
st pf6 "$C -DMG_WG_EPI_L2PF=6" bench-small
for v in 0 4 8 16; do   # down dgrad alone, ncu's duration of 4 launches (clocks not locked)
    step "ncu dndgrad pf$v" 60 ncu-dndgrad-pf$v.csv env MOEGEN_JIT_DEFINES="$C -DMG_WG_EPI_L2PF=$v" "$NCU" --csv --page raw \
        --metrics gpu__time_duration.sum --clock-control none -k "regex:down_swiglu.*_dgrad" -c 4 \
        build/bench/mg_bench_layer --shape mixtral --runs 2 --warmup 1
    grep -a "dgrad" "$O/ncu-dndgrad-pf$v.csv" | awk -F'","' '{print $NF}' | tr -d '"' | tr '\n' ' ' | sed "s/^/dndgrad pf$v us: /" | tee -a "$S"; echo | tee -a "$S"
done
bench clamp mixtral MOEGEN_JIT_DEFINES="$C"
bench pf8 mixtral MOEGEN_JIT_DEFINES="$C -DMG_WG_EPI_L2PF=8"
bench pf16 mixtral MOEGEN_JIT_DEFINES="$C -DMG_WG_EPI_L2PF=16"
bench clamp mixtral MOEGEN_JIT_DEFINES="$C"
for sh in olmoe finegrained small; do
    bench clamp $sh MOEGEN_JIT_DEFINES="$C"
    bench pf8 $sh MOEGEN_JIT_DEFINES="$C -DMG_WG_EPI_L2PF=8"
done
fi
if [[ $PH == *" bandk "* ]]; then   # Mixtral's kernels one by one under each raster band width, and with CTA pairs
for b in 1 2 4 8 16; do
    step "prof_layer mixtral band$b" 60 prof-band$b.log env OUT="$O/prof-band$b" MOEGEN_JIT_DEFINES=-DMG_WG_BAND=$b bench/prof_layer.sh mixtral
    sed -n 3,8p "$O"/prof-band$b/prof-mixtral.txt 2>/dev/null | awk -v b=$b '{print "band" b, $1, $NF}' | tee -a "$S"
done
step "prof_layer mixtral pairs" 60 prof-pairs.log env OUT="$O/prof-pairs" MOEGEN_WG_CLUSTER=2 bench/prof_layer.sh mixtral
sed -n 3,8p "$O"/prof-pairs/prof-mixtral.txt 2>/dev/null | awk '{print "pairs", $1, $NF}' | tee -a "$S"
fi
if [[ $PH == *" gl "* ]]; then   # evict-last L2 policies: gathered x rows (MG_WG_GATHER_L2 1: up fwd and up wgrad, 2: up wgrad), TMA boxes (MG_WG_TMA_L2 1: rows, 2: columns)
st gl1 "-DMG_WG_GATHER_L2=1" tiny
for v in gl0:-DMG_WG_GATHER_L2=0 gl1:-DMG_WG_GATHER_L2=1 gl2:-DMG_WG_GATHER_L2=2 tl1:-DMG_WG_TMA_L2=1 tl2:-DMG_WG_TMA_L2=2; do
    tag=${v%%:*}
    step "prof_layer mixtral $tag" 60 prof-$tag.log env OUT="$O/prof-$tag" MOEGEN_JIT_DEFINES=${v#*:} bench/prof_layer.sh mixtral
    sed -n 3,8p "$O"/prof-$tag/prof-mixtral.txt 2>/dev/null | awk -v b=$tag '{print b, $1, $NF}' | tee -a "$S"
done
st tl "-DMG_WG_TMA_L2=1" tiny
bench default mixtral
bench gl1 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_GATHER_L2=1
bench gl2 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_GATHER_L2=2
bench tl1 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_TMA_L2=1
bench tl2 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_TMA_L2=2
bench default mixtral
for sh in olmoe finegrained small; do
    bench default $sh
    bench gl1 $sh MOEGEN_JIT_DEFINES=-DMG_WG_GATHER_L2=1
    bench gl2 $sh MOEGEN_JIT_DEFINES=-DMG_WG_GATHER_L2=2
done
fi
if [[ $PH == *" bk "* ]]; then   # up wgrad's stage depth (MG_WG_BK_WGRAD: 64, 48, 32 k rows; more stages below 64)
st bk48 "-DMG_WG_BK_WGRAD=48" tiny
st bk32coop "-DMG_WG_BK_WGRAD=32 -DMG_WG_PINGPONG=0" tiny
st bk48 "-DMG_WG_BK_WGRAD=48" bench-small
st bk32 "-DMG_WG_BK_WGRAD=32" switch-cf125
for v in 64 48 32; do
    step "prof_layer mixtral bk$v" 60 prof-bk$v.log env OUT="$O/prof-bk$v" MOEGEN_JIT_DEFINES=-DMG_WG_BK_WGRAD=$v bench/prof_layer.sh mixtral
    sed -n 3,8p "$O"/prof-bk$v/prof-mixtral.txt 2>/dev/null | awk -v b=bk$v '{print b, $1, $NF}' | tee -a "$S"
done
for sh in mixtral olmoe finegrained small; do
    bench bk64 $sh
    bench bk48 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BK_WGRAD=48
    bench bk32 $sh MOEGEN_JIT_DEFINES=-DMG_WG_BK_WGRAD=32
done
bench bk64 mixtral
bench bk48 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BK_WGRAD=48
bench bk32 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BK_WGRAD=32
fi
if [[ $PH == *" bkb "* ]]; then   # up wgrad's stage depth with da boxes of as many rows (env MOEGEN_WG_BK_WGRAD)
stb() { # bk pp spec
    step "selftest $3 moe bk$1 pp$2" 120 st-$3-bk$1-pp$2.log env MOEGEN_WG_BK_WGRAD=$1 MOEGEN_JIT_DEFINES=-DMG_WG_PINGPONG=$2 \
        MOEGEN_SELFTEST_PART=moe MOEGEN_SELFTEST_BUDGET=5e7 build/moegen selftest specs/$3.lua --seed 38
    grep -a -m6 -A2 FAIL "$O/st-$3-bk$1-pp$2.log" | tee -a "$S"
}
stb 48 1 tiny; stb 32 0 tiny; stb 48 1 bench-small; stb 32 1 switch-cf125
for v in 64 48 32; do
    step "prof_layer mixtral bkb$v" 60 prof-bkb$v.log env OUT="$O/prof-bkb$v" MOEGEN_WG_BK_WGRAD=$v bench/prof_layer.sh mixtral
    sed -n 3,8p "$O"/prof-bkb$v/prof-mixtral.txt 2>/dev/null | awk -v b=bkb$v '{print b, $1, $NF}' | tee -a "$S"
done
for sh in mixtral olmoe finegrained small mixtral; do
    bench bk64 $sh
    bench bk48 $sh MOEGEN_WG_BK_WGRAD=48
    bench bk32 $sh MOEGEN_WG_BK_WGRAD=32
done
fi
note "total $(( $(date +%s) - T0 ))s"
