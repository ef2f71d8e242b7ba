# client.sh — the cluster's client commands without a cluster: `booth submit`, `status`,
# `cancel` and `fetch` show their --help; usage mistakes are one line and exit 2; against
# a coordinator that is not there, a request gives up after --timeout with one line naming
# the address, and exit 1. (A coordinator's answers — ids, progress, fetched files, refused
# file names — are tested end to end with a real cluster elsewhere.)
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
NOWHERE=(--insecure --coordinator tcp://127.0.0.1:1 --timeout 1)
JOB=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" --max-train-steps 2)

for cmd in submit status cancel fetch; do
    "$BOOTH" $cmd --help >"$T/help.txt"
    grep -q "^usage: booth $cmd" "$T/help.txt" || { echo "$cmd --help:"; cat "$T/help.txt"; exit 1; }
    grep -q -- "--coordinator ADDR" "$T/help.txt" || { echo "$cmd --help lacks --coordinator"; exit 1; }
    grep -q -- "--timeout S" "$T/help.txt" || { echo "$cmd --help lacks --timeout"; exit 1; }
done
# submit takes booth train's flags, the prior options under booth priors' names, and a job file
"$BOOTH" submit --help >"$T/help.txt"
for opt in --instance-prompt --learning-rate --class-guidance --num --steps --guidance --job --priors-only --wait; do
    grep -q -- "^  $opt " "$T/help.txt" || { echo "submit --help lacks $opt"; exit 1; }
done

# expect_usage WANT ARGS...: exit 2, one line on stderr containing WANT, nothing on stdout
expect_usage() {
    local want=$1 rc=0
    shift
    "$BOOTH" "$@" >"$T/out" 2>"$T/err" || rc=$?
    [ "$rc" -eq 2 ] || { echo "$*: exit $rc, expected 2"; cat "$T/err"; exit 1; }
    [ "$(wc -l <"$T/err")" -eq 1 ] || { echo "$*: expected one line:"; cat "$T/err"; exit 1; }
    grep -q -- "$want" "$T/err" || { echo "$*: expected '$want':"; cat "$T/err"; exit 1; }
    [ ! -s "$T/out" ] || { echo "$*: unexpected stdout:"; cat "$T/out"; exit 1; }
}
expect_usage "--coordinator ADDR is required" submit
expect_usage "--coordinator ADDR is required" submit "${JOB[@]}"
expect_usage "--coordinator ADDR is required" status
expect_usage "which job" cancel --coordinator tcp://127.0.0.1:1
expect_usage "--output-dir DIR are required" fetch j1 --coordinator tcp://127.0.0.1:1
expect_usage "not supported on a cluster yet" submit "${NOWHERE[@]}" "${JOB[@]}" --resume-from-checkpoint latest
expect_usage "--output-dir needs --wait" submit "${NOWHERE[@]}" "${JOB[@]}" --output-dir "$T/out-dir"
expect_usage "--priors-only needs --model and --class-prompt" submit "${NOWHERE[@]}" --priors-only --model $MODEL
expect_usage "--rank cannot be given with it" submit "${NOWHERE[@]}" --job "$T/job.json" --rank 8
expect_usage "--timeout must be more than 0" status --insecure --coordinator tcp://127.0.0.1:1 --timeout 0

# a job file that sd_job_parse refuses: one line naming the file and the key, exit 1, nothing sent
echo '{"pretrained_model_name_or_path": "m", "no_such_setting": 1}' >"$T/bad.json"
rc=0
"$BOOTH" submit "${NOWHERE[@]}" --job "$T/bad.json" >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" -eq 1 ] || { echo "bad job file: exit $rc, expected 1"; cat "$T/err"; exit 1; }
[ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "bad.json.*no_such_setting" "$T/err" || { echo "bad job file:"; cat "$T/err"; exit 1; }

# no coordinator at the address: one "no answer" line after --timeout, exit 1, within a few seconds
expect_no_answer() {
    local rc=0 start=$SECONDS
    "$BOOTH" "$@" >"$T/out" 2>"$T/err" || rc=$?
    [ "$rc" -eq 1 ] || { echo "$*: exit $rc, expected 1"; cat "$T/err"; exit 1; }
    [ $((SECONDS - start)) -le 5 ] || { echo "$*: took $((SECONDS - start)) s with --timeout 1"; exit 1; }
    [ "$(wc -l <"$T/err")" -eq 1 ] || { echo "$*: expected one line:"; cat "$T/err"; exit 1; }
    grep -q "tcp://127.0.0.1:1: no answer from the coordinator in 1 s (is it running? right --coordinator-key?)" \
        "$T/err" || { echo "$*: no 'no answer' line:"; cat "$T/err"; exit 1; }
    [ ! -s "$T/out" ] || { echo "$*: unexpected stdout:"; cat "$T/out"; exit 1; }
}
expect_no_answer submit "${NOWHERE[@]}" "${JOB[@]}"
expect_no_answer submit "${NOWHERE[@]}" "${JOB[@]}" --wait --output-dir "$T/out-dir"
expect_no_answer submit "${NOWHERE[@]}" --priors-only --model $MODEL --class-prompt "a photo of robot" --num 4
expect_no_answer status "${NOWHERE[@]}"
expect_no_answer status j1 --json "${NOWHERE[@]}"
expect_no_answer cancel j1 "${NOWHERE[@]}"
expect_no_answer fetch j1 --output-dir "$T/out-dir" "${NOWHERE[@]}"
[ ! -e "$T/out-dir" ] || { echo "fetch without an answer created its output folder"; exit 1; }
echo "client.sh: ok"
