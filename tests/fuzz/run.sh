#!/usr/bin/env bash
# run.sh BUILD SECONDS [libFuzzer flags...] — runs every harness of BUILD/fuzz/
# for SECONDS each, one after the other, over a copy of its committed corpus,
# and prints one line per harness: executions, coverage, peak memory, verdict.
# Environment: FUZZ_ONLY="name ..." runs those only; FUZZ_JOBS=N runs N at once; FUZZ_RUNS=N
# stops a harness after N executions (default 10 million), SECONDS stops it first.
set -uo pipefail
build=$1 secs=$2
shift 2
cd "$(dirname "$0")/../.."
names=${FUZZ_ONLY:-$(cd "$build/fuzz" 2>/dev/null && for f in *; do [ -x "$f" ] && [ "${f%.d}" = "$f" ] && echo "$f"; done)}
[ -n "$names" ] || { echo "fuzz: no harness in $build/fuzz (make fuzz-bins)"; exit 1; }
mkdir -p "$build/logs"
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0}
status=0
run_one() {
    local n=$1 corpus=$build/corpus/$1 crashes=$build/crashes/$1/ log=$build/logs/$1.log
    shift
    mkdir -p "$corpus" "$crashes"
    cp -n tests/fuzz/corpus/"$n"/* "$corpus"/ 2>/dev/null || true
    local dicts=() regress=()
    [ -f tests/fuzz/dict/"$n".dict ] && dicts=(-dict=tests/fuzz/dict/"$n".dict)
    [ -d tests/fuzz/regress/"$n" ] && regress=(tests/fuzz/regress/"$n")
    local t0=$SECONDS rc
    # CPU seconds (user + system) beside the wall clock: the harnesses of the daemons run two threads
    local TIMEFORMAT='cpu %U %S'
    { time "$build/fuzz/$n" -max_total_time="$secs" -runs="${FUZZ_RUNS:-10000000}" -timeout=30 \
        -rss_limit_mb=4096 -malloc_limit_mb=2048 -max_len=262144 -print_final_stats=1 \
        -artifact_prefix="$crashes" "${dicts[@]}" "$@" "$corpus" "${regress[@]}" >"$log" 2>&1; } 2>"$log.cpu"
    rc=$?
    local dt=$((SECONDS - t0)) cpu
    cpu=$(awk '/^cpu/ {printf "%.0f", $2 + $3}' "$log.cpu")
    local execs cov ft rss
    execs=$(awk '/stat::number_of_executed_units:/ {v=$2} END {print v}' "$log")
    cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    ft=$(grep -ao 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    rss=$(awk '/stat::peak_rss_mb:/ {v=$2} END {print v}' "$log")
    if [ $rc = 0 ]; then verdict=clean; else verdict="FOUND SOMETHING (exit $rc): $log, inputs in $crashes"; fi
    printf 'fuzz %-12s %9s execs %5s s (cpu %5s s)  cov %5s  ft %6s  rss %5s MB  corpus %5s  %s\n' "$n" \
        "${execs:-?}" "$dt" "${cpu:-?}" "${cov:-?}" "${ft:-?}" "${rss:-?}" "$(ls "$corpus" | wc -l)" "$verdict"
    return $rc
}
jobs=${FUZZ_JOBS:-1}
for n in $names; do
    if [ "$jobs" -gt 1 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || status=1; done
        run_one "$n" "$@" &
    else
        run_one "$n" "$@" || status=1
    fi
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
exit $status
