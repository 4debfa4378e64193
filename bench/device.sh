#!/bin/bash
# device: the wrapper of one call on the device machine (see /work/.library/device). It unpacks
# the carried Debian packages, builds once, runs the named parts (each a shell command line,
# separated by ';;'), in parallel when PARALLEL=1, and packs every log under $OUT into
# $OUT/logs.tgz, since a call returns at most 8 files. $OUT/summary.txt and parts.txt (every part's
# own summary.txt) stay unpacked.
#   bash bench/device.sh 'bench/train_wt2.sh check ;; bash bench/acceptance.sh'
set -u
cd "$(dirname "$0")/.."
for f in .deb/*.deb; do dpkg -x "$f" /; done; ldconfig
# the Debian -dev packages' lib*.so links name Debian's sonames (libz.so.1.2.13); where the
# device's Ubuntu has another minor version they dangle and ld falls back to the non-PIC .a
for l in /usr/lib/x86_64-linux-gnu/lib*.so /lib/x86_64-linux-gnu/lib*.so; do
    [ -L "$l" ] && [ ! -e "$l" ] && for t in "$l".[0-9]*; do [ -e "$t" ] && ln -sf "$(basename "$t")" "$l" && break; done
done
ROOT=${OUT:-bench/results/raw/device-$(date +%Y%m%d-%H%M)}
# logs live outside $OUT and are packed after every part: a call cut off by its time limit still
# returns what finished (only $OUT comes back, at most 8 files)
LOGS=$(mktemp -d /tmp/devlogs.XXXX); mkdir -p "$ROOT"
# A file back from $OUT may hold 16 MiB: files over 3 MiB (per-step metrics of many experts) stay
# out of the archive, named in big.txt, and each part's own summary.txt is also copied to parts.txt.
pack() {
    (cd "$LOGS" && find . -type f -size -3145729c | sort > /tmp/devpack.list && find . -type f -size +3145728c -printf '%s %p\n' > "$ROOT/big.txt")
    tar czf "$ROOT/logs.tgz.tmp" -C "$LOGS" -T /tmp/devpack.list && mv "$ROOT/logs.tgz.tmp" "$ROOT/logs.tgz"
    for f in "$LOGS"/p*/summary.txt; do [ -f "$f" ] && { echo "== ${f#$LOGS/}"; cat "$f"; }; done > "$ROOT/parts.txt"
}
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
S=$ROOT/summary.txt
echo "device.sh $(date -u +%FT%TZ) $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)" > "$S"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >> "$S"
t0=$(date +%s)
make -j"$(nproc)" all bench > "$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log" | tee -a "$S"; pack; exit 1; }
echo "build $(( $(date +%s) - t0 ))s" >> "$S"
IFS=$'\n' read -r -d '' -a parts < <(printf '%s' "$1" | sed 's/ *;; */\n/g'; printf '\0')
i=0
for p in "${parts[@]}"; do
    i=$((i + 1)); d=$LOGS/p$i; mkdir -p "$d"
    run_part() { local s=$(date +%s); OUT=$2 bash -c "$1" > "$2/console.log" 2>&1; local rc=$?
                 echo "part $3 rc=$rc $(( $(date +%s) - s ))s: $1" >> "$S"
                 # a part cut off by its own timeout can leave its moegen processes on the GPUs
                 [ "${PARALLEL:-0}" = 1 ] || { pkill -9 -x moegen 2>/dev/null; pkill -9 -f '^build/bench/mg_' 2>/dev/null; sleep 1; pack; }; }
    if [ "${PARALLEL:-0}" = 1 ]; then run_part "$p" "$d" $i & else run_part "$p" "$d" $i; fi
done
wait
pack && rm -rf "$LOGS"
cat "$S"
