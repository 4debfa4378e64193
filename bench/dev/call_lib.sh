# bench/dev/call_lib.sh: the helpers every bench/dev GPU-call script shares; source it after
# setting O (log folder), DEADLINE and LIMIT (seconds), and optionally BENCH_RUNS (10) and
# BENCH_T (60). It starts the clock (T0) and the summary ($O/summary.txt, in S).
#   note TEXT...                      a line to the summary (and stdout)
#   step NAME TIMEOUT LOG CMD...      CMD with its timeout cut to what is left of LIMIT, skipped
#                                     past DEADLINE; a summary line with rc, seconds, PASS/FAIL
#                                     counts; its start time in $O/marks.txt
#   bench TAG SHAPE [VAR=VALUE...]    one mg_bench_layer run ($RUNS or BENCH_RUNS runs), its
#                                     medians into the summary
#   st TAG DEFINES SPEC [BUDGET]      the MoE-part selftest of specs/SPEC.lua (or SPEC, a path) with
#                                     MOEGEN_JIT_DEFINES (timeout ST_T, 90 s; seed ST_SEED, 37; budget
#                                     ST_BUDGET, 5e7), its failures into the summary
#   prof TAG DEFINES                  Mixtral's kernels one by one under ncu, µs a launch into the summary
#   ncu_src "TAG|REGEX"...            ncu per-SASS-line samples of those kernels (SRC_D, SRC_SHAPE)
#   smi_sample                        nvidia-smi's clocks, power and throttle reasons every 200 ms
#                                     into $O/smi.csv until the script exits
mkdir -p "$O"
T0=$(date +%s)
S="$O/summary.txt"; : > "$S"
note() { echo "$*" | tee -a "$S"; }
step() { # name timeout log command...   (env assignments go through `env`)
    local name=$1 t=$2 log=$3; shift 3
    local el=$(( $(date +%s) - T0 ))
    if (( el > DEADLINE )); then note "$(printf '%-44s skipped (%ds elapsed)' "$name" $el)"; return 99; fi
    local s=$(date +%s)
    echo "$(date -u +%T.%N | cut -c1-12) $name" >> "$O/marks.txt"
    (( t > LIMIT - el )) && t=$(( LIMIT - el ))
    timeout "$t" "$@" > "$O/$log" 2>&1
    local rc=$?
    note "$(printf '%-44s rc=%-3d %4ds  %s' "$name" $rc $(( $(date +%s) - s )) \
        "$(grep -ac PASS "$O/$log") PASS $(grep -ac FAIL "$O/$log") FAIL")"
    return $rc
}
bench() { # tag shape env...
    local tag=$1 sh=$2; shift 2
    step "bench $sh $tag" "${BENCH_T:-60}" bench-$sh-$tag.log env "$@" build/bench/mg_bench_layer --shape $sh \
        --runs "${RUNS:-${BENCH_RUNS:-10}}" --warmup 3
    grep -a median "$O/bench-$sh-$tag.log" | sed "s/^/$sh $tag /" | tee -a "$S"
}
st() { # tag defines spec [budget]   (spec: a name under specs/, or a path to a .lua)
    local sp=specs/$3.lua n=$3
    [[ $3 == */* ]] && { sp=$3; n=$(basename "$3" .lua); }
    step "selftest $n moe $1" "${ST_T:-90}" st-$n-$1.log env "MOEGEN_JIT_DEFINES=$2" MOEGEN_SELFTEST_PART=moe \
        MOEGEN_SELFTEST_BUDGET=${4:-${ST_BUDGET:-5e7}} build/moegen selftest "$sp" --seed "${ST_SEED:-37}"
    grep -a -m6 -A2 FAIL "$O/st-$n-$1.log" | tee -a "$S"
}
prof() { # tag defines: Mixtral's kernels one by one (ncu µs a launch, clocks not locked)
    step "prof_layer mixtral $1" 90 prof-$1.log env OUT="$O/prof-$1" MOEGEN_JIT_DEFINES="$2" bench/prof_layer.sh mixtral
    sed -n 3,8p "$O"/prof-$1/prof-mixtral.txt 2>/dev/null | awk -v b=$1 '{print b, $1, $NF}' | tee -a "$S"
}
ncu_src() { # "tag|kernel-regex"...: ncu per-SASS-line samples of those kernels of the layer bench
    # (SRC_D: MOEGEN_JIT_DEFINES, SRC_SHAPE: mg_bench_layer's shape, mixtral)
    local ncu k tag re
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    for k in "$@"; do
        tag=${k%%|*}; re=${k#*|}
        step "ncu src ${SRC_SHAPE:-mixtral} $tag" 150 ncu-src-$tag.txt env MOEGEN_JIT_DEFINES="${SRC_D:-}" "$ncu" \
            --section WarpStateStats --section SourceCounters --section SpeedOfLight --section MemoryWorkloadAnalysis \
            --clock-control none -k "regex:$re" -s 2 -c 1 -f -o "$O/rep-$tag" \
            build/bench/mg_bench_layer --shape "${SRC_SHAPE:-mixtral}" --runs 2 --warmup 1
        "$ncu" -i "$O/rep-$tag.ncu-rep" --page source --csv --print-source sass | gzip > "$O/sass-$tag.csv.gz" 2> "$O/sass-$tag.err"
        "$ncu" -i "$O/rep-$tag.ncu-rep" --page details --print-details all > "$O/details-$tag.txt" 2>&1
        rm -f "$O/rep-$tag.ncu-rep"
    done
}
smi_sample() {
    local q=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu
    (nvidia-smi --query-gpu=$q,clocks_event_reasons.active --format=csv -lms 200 ||
        nvidia-smi --query-gpu=$q --format=csv -lms 200) > "$O/smi.csv" 2>&1 &
    trap 'pkill -f "nvidia-smi --query-gpu=timestamp" 2>/dev/null' EXIT
}
