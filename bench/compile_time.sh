#!/bin/sh
# Cold and warm (cached) `moegen compile` wall time for a spec, median of N runs.
# usage: bench/compile_time.sh [SPEC] [N] [ARCH]   (CPU only: NVRTC needs no GPU)
set -e
spec=${1:-specs/wt2-moe8.lua}; n=${2:-9}; arch=${3:-sm_90a}
bin=${MOEGEN:-build/moegen}
cache=$(mktemp -d); out=$(mktemp -d)
trap 'rm -rf "$cache" "$out"' EXIT
export MOEGEN_CACHE_DIR=$cache
ms() { s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }
cold=""; warm=""
for i in $(seq $n); do
    rm -rf "$cache"/*
    cold="$cold $(ms "$bin" compile "$spec" --arch "$arch" -o "$out/o")"
done
for i in $(seq $n); do warm="$warm $(ms "$bin" compile "$spec" --arch "$arch" -o "$out/o")"; done
c=$(echo $cold | tr ' ' '\n' | median); w=$(echo $warm | tr ' ' '\n' | median)
echo "spec=$spec arch=$arch runs=$n cores=$(nproc) cold_ms=$c warm_ms=$w (whole process: load spec, gen, cache lookups, write out dir)"
