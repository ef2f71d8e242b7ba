#!/usr/bin/env bash
# bench/ps_scaling.sh — step throughput of a local cluster against its number of workers, when a
# worker's compute is a fixed sleep: the worker test hook BOOTH_TEST_TASK_DELAY_MS (worker/worker.c)
# makes each micro-batch task answer DELAY ms late, so a step of M micro-batches on N workers
# ideally takes ceil(M / N) x DELAY, and whatever the step takes beyond that is the cluster's
# overhead (task hand-out, pulls, pushes, GradReady/Apply, recording the step).
#
#   bench/ps_scaling.sh [--workers "1 2 4 8"] [--steps 3] [--delay-ms 2000] [--ps 1] [--markdown]
#
# One cluster (cluster/local, CURVE on) on the tiny model (tests/fixtures/tiny-sd) at 64 px; the job
# is 4 instance images + 4 class images a step (--train-batch-size 4 --with-prior-preservation) in
# micro-batches of one example: M = 8 micro-batches a step, UNet LoRA only. Workers are added between
# jobs (1, then 2, ...); the prior set is made by the first job and reused by the others. A step's
# time is the coordinator's (loss.csv's last column, fetched by `booth submit --wait --output-dir`);
# the first step of each job is left out (its workers load the job first). efficiency = (t1 / N) / tN,
# t1 the first row's time (times its N, when that is not 1).
# BOOTH: the booth binary (default build/booth). Timings only: not part of `make test`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$here/..
BOOTH=${BOOTH:-$root/build/booth}
[ -x "$BOOTH" ] || { echo "ps_scaling: no booth binary at $BOOTH (set BOOTH or run make)" >&2; exit 2; }
BOOTH=$(cd "$(dirname "$BOOTH")" && pwd)/$(basename "$BOOTH")

workers="1 2 4 8" steps=3 delay=2000 ps=1 markdown=0
while [ $# -gt 0 ]; do
    case "$1" in
    --workers) workers=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --delay-ms) delay=$2; shift 2 ;;
    --ps) ps=$2; shift 2 ;;
    --markdown) markdown=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ps_scaling: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$steps" -ge 2 ] || { echo "ps_scaling: --steps must be at least 2 (the first step is left out)" >&2; exit 2; }
M=8

T=$(mktemp -d /tmp/ps_scaling.XXXXXX)
C=$T/cluster
cd "$root"
export BOOTH BOOTH_TEST_TASK_DELAY_MS=$delay
trap 'cluster/local stop "$C" --timeout 10 >/dev/null 2>&1 || true' EXIT

JOB=(--model tests/fixtures/tiny-sd --instance-data-dir scripts/demo/subject
    --instance-prompt "a photo of sks robot" --class-prompt "a photo of robot" --with-prior-preservation
    --num-class-images 4 --class-inference-steps 2 --resolution 64 --train-batch-size 4 --micro-batch-size 1
    --max-train-steps "$steps" --checkpointing-steps 0 --seed 1)

have=0
t1=
if [ $markdown = 1 ]; then
    echo "| workers | micro-batches a step | ideal s/step | measured s/step (steps 2-$steps) | efficiency (t1/N)/tN |"
    echo "|---:|---:|---:|---:|---:|"
fi
for n in $workers; do
    if [ $have = 0 ]; then
        cluster/local start "$C" --workers "$n" --ps "$ps" >/dev/null
    else
        while [ $have -lt "$n" ]; do cluster/local add-worker "$C" >/dev/null; have=$((have + 1)); done
    fi
    have=$n
    out=$T/w$n
    "$BOOTH" submit --coordinator "$(cat "$C/endpoint")" --keys "$C/keys" "${JOB[@]}" --wait --output-dir "$out" \
        >"$out.log" 2>&1 || { echo "ps_scaling: the job on $n worker(s) failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
    grep -q "job-[0-9]*: .* $M micro-batches per step" "$C/logs/coordinator.log" ||
        { echo "ps_scaling: the coordinator did not cut the steps into $M micro-batches" >&2; exit 1; }
    # loss.csv: a header, then one row per step; the last column is the step's seconds
    tn=$(awk -F, 'NR > 2 { s += $NF; k++ } END { if (k) printf "%.3f", s / k }' "$out/loss.csv")
    [ -n "$tn" ] || { echo "ps_scaling: no steps after the first in $out/loss.csv" >&2; exit 1; }
    [ -n "$t1" ] || t1=$(awk -v t="$tn" -v n="$n" 'BEGIN { printf "%.3f", t * n }') # t1 from the first N
    ideal=$(awk -v m=$M -v n="$n" -v d="$delay" 'BEGIN { printf "%.1f", int((m + n - 1) / n) * d / 1000 }')
    eff=$(awk -v t1="$t1" -v n="$n" -v tn="$tn" 'BEGIN { printf "%.0f %%", 100 * (t1 / n) / tn }')
    if [ $markdown = 1 ]; then
        echo "| $n | $M | $ideal | $tn | $eff |"
    else
        echo "workers $n: $tn s/step (ideal $ideal s, $M micro-batches of ${delay} ms), efficiency $eff"
    fi
done
cluster/local stop "$C" --timeout 10 >/dev/null
rm -rf "$T"
