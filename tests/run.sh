#!/bin/sh
# Runs each cmocka suite, then prints one closing line: "N passed, N failed".
pass=0; fail=0; failed=""
for t in "$@"; do
    echo "== $t"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    f=$(printf '%s\n' "$out" | sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {print s+0}')
    pass=$((pass + p)); fail=$((fail + f))
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then fail=$((fail + 1)); fi
    [ $rc -ne 0 ] && failed="$failed $t"
done
echo
[ -n "$failed" ] && echo "failing suites:$failed"
echo "tests: $pass passed, $fail failed"
[ $fail -eq 0 ] && [ -z "$failed" ]
