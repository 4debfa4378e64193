# bench/dev/call_lib.sh: the helpers every bench/dev GPU-call script shares; source it after
# setting O (log folder), DEADLINE and LIMIT (seconds), and optionally BENCH_RUNS (10) and
# BENCH_T (60). It starts the clock (T0) and the summary ($O/summary.txt, in S).
#   note TEXT...                      a line to the summary (and stdout)
#   step NAME TIMEOUT LOG CMD...      CMD with its timeout cut to what is left of LIMIT, skipped
#                                     past DEADLINE; a summary line with rc, seconds, PASS/FAIL
#                                     counts; its start time in $O/marks.txt
#   bench TAG SHAPE [VAR=VALUE...]    one mg_bench_layer run ($RUNS or BENCH_RUNS runs), its
#                                     medians into the summary
#   st TAG DEFINES SPEC [BUDGET]      the MoE-part selftest of specs/SPEC.lua with MOEGEN_JIT_DEFINES
#                                     (timeout ST_T, 90 s; seed ST_SEED, 37; budget ST_BUDGET, 5e7),
#                                     its failures into the summary
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
st() { # tag defines spec [budget]
    step "selftest $3 moe $1" "${ST_T:-90}" st-$3-$1.log env "MOEGEN_JIT_DEFINES=$2" MOEGEN_SELFTEST_PART=moe \
        MOEGEN_SELFTEST_BUDGET=${4:-${ST_BUDGET:-5e7}} build/moegen selftest specs/$3.lua --seed "${ST_SEED:-37}"
    grep -a -m6 -A2 FAIL "$O/st-$3-$1.log" | tee -a "$S"
}
smi_sample() {
    local q=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu
    (nvidia-smi --query-gpu=$q,clocks_event_reasons.active --format=csv -lms 200 ||
        nvidia-smi --query-gpu=$q --format=csv -lms 200) > "$O/smi.csv" 2>&1 &
    trap 'pkill -f "nvidia-smi --query-gpu=timestamp" 2>/dev/null' EXIT
}
