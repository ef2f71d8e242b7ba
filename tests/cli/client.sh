# client.sh — the cluster's client commands without a cluster: `booth submit`, `status`,
# `cancel` and `fetch` show their --help; usage mistakes are one line and exit 2; against
# a coordinator that is not there, a request gives up after --timeout with one line naming
# the address, and exit 1. (A coordinator's answers — ids, progress, fetched files, refused
# file names — are tested end to end with a real cluster elsewhere.)
# A coordinator killed and restarted on the same endpoint, without a job running: `status`
# started while it is down is answered by the restarted one; a request the first one took
# and died with is sent again to the next one (a fake coordinator that reads one message and
# exits: it needs python3, no ZeroMQ module); a Submit it died with is never sent again, and
# the client says the job may or may not have been queued; `submit --wait` on a queued job
# says the coordinator is not answering, carries on when it is back, and gives up with one
# line after --timeout seconds of silence.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
NOWHERE=(--insecure --coordinator tcp://127.0.0.1:1 --timeout 1)
JOB=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" --max-train-steps 2)
PY=/usr/bin/python3
[ -x $PY ] || PY=python3
PIDS=()
stop_all() { # every process this test started, by pid: SIGTERM (timeout passes it on), SIGKILL after 5 s
    local p alive
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap stop_all EXIT

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

# ---- a coordinator killed (SIGKILL) and restarted with the same --state-dir on the same endpoint ----
wait_for() { # file, pattern, count: until the file has that many matching lines (20 s at most)
    local n
    for _ in $(seq 200); do
        n=$(grep -c -- "$2" "$1" 2>/dev/null) || true
        [ "${n:-0}" -ge "$3" ] && return 0
        sleep 0.1
    done
    echo "$1: no $3 line(s) matching '$2':"
    cat "$1"
    exit 1
}
co_start() { # endpoint to bind; the log is appended to; $co is its pid
    "$BOOTH" coordinator --insecure --bind "$1" --state-dir "$T/state" >>"$T/co.log" 2>&1 &
    co=$!
    PIDS+=($co)
}
co_kill() {
    kill -KILL $co
    wait $co 2>/dev/null || true
}
# bg OUT COMMAND...: COMMAND in the background, stdout to OUT, stderr to OUT.err, at most 60 s; $bg is its pid
bg() {
    local out=$1
    shift
    timeout 60 "$@" >"$out" 2>"$out.err" &
    bg=$!
    PIDS+=($bg)
}
expect_exit() { # pid, status, what, log: it ended with that status (timeout's 124 after 60 s), else the log is shown
    local rc=0
    wait "$1" || rc=$?
    [ "$rc" = "$2" ] || { echo "$3: exit $rc, expected $2"; cat "$4"; exit 1; }
}

co_start 'tcp://127.0.0.1:*'
wait_for "$T/co.log" "coordinator listening on tcp://127.0.0.1:[0-9]" 1
CO=$(sed -n 's|.*coordinator listening on \(tcp://127\.0\.0\.1:[0-9]*\).*|\1|p' "$T/co.log" | head -1)
co_kill
# status asks while nobody listens; the coordinator restarted a second later answers
bg "$T/st1" "$BOOTH" status --coordinator $CO --insecure --timeout 20
sleep 1
co_start $CO
wait_for "$T/co.log" "coordinator listening on $CO" 2
expect_exit $bg 0 "status across a coordinator restart" "$T/st1.err"
grep -qx "no jobs" "$T/st1" || { echo "status across a restart printed:"; cat "$T/st1" "$T/st1.err"; exit 1; }
co_kill

# A fake coordinator on a port of its own: the ZMTP 3.0 NULL handshake as a ROUTER, then it
# reads one message (the client's READY and pings are commands, skipped), writes its frame
# count to the port file's .took and exits without answering: a coordinator that died with
# the request. The port goes to $1 (written whole, then renamed).
fake_coordinator() {
    timeout 30 $PY - "$1" <<'EOF' &
import os, socket, struct, sys
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(1)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d\n" % ls.getsockname()[1])
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
ls.settimeout(20)
class Closed(Exception):
    pass
def exact(c, n):
    b = b""
    while len(b) < n:
        k = c.recv(n - len(b))
        if not k:
            raise Closed()
        b += k
    return b
def one_message(c):  # its frame count
    c.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\0" + b"\0" * 31)
    exact(c, 64)
    ready = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"ROUTER"
    c.sendall(bytes([0x04, len(ready)]) + ready)
    frames = 0
    while True:
        flags = exact(c, 1)[0]
        size = struct.unpack(">Q", exact(c, 8))[0] if flags & 0x02 else exact(c, 1)[0]
        exact(c, size)
        if flags & 0x04:
            continue
        frames += 1
        if not flags & 0x01:
            return frames
while True:  # a connection the client drops before its message (it connects twice at start) is not it
    c, _ = ls.accept()
    c.settimeout(20)
    try:
        frames = one_message(c)
        break
    except (Closed, ConnectionError):
        c.close()
with open(sys.argv[1] + ".took", "w") as f:
    f.write("%d\n" % frames)
ls.close()
c.close()
EOF
    fake=$!
    PIDS+=($fake)
    for _ in $(seq 200); do
        [ -s "$1" ] && break
        sleep 0.1
    done
    [ -s "$1" ] || { echo "the fake coordinator did not start"; exit 1; }
}

# status: the fake takes its request and dies; the coordinator started on that port gets it again
fake_coordinator "$T/fake1.port"
FAKE=tcp://127.0.0.1:$(cat "$T/fake1.port")
bg "$T/st2" "$BOOTH" status --coordinator $FAKE --insecure --timeout 20
expect_exit $fake 0 "the fake coordinator" "$T/st2.err"
[ "$(cat "$T/fake1.port.took")" = 1 ] || { echo "the fake took no status request"; cat "$T/st2.err"; exit 1; }
co_start $FAKE
wait_for "$T/co.log" "coordinator listening on $FAKE" 1
expect_exit $bg 0 "status whose request the first coordinator died with" "$T/st2.err"
grep -qx "no jobs" "$T/st2" || { echo "status after a lost request printed:"; cat "$T/st2" "$T/st2.err"; exit 1; }
co_kill

# submit: the fake takes the job (envelope and photos) and dies; it is not sent again to the
# coordinator started on that port, and the client says it may or may not have been queued
fake_coordinator "$T/fake2.port"
FAKE=tcp://127.0.0.1:$(cat "$T/fake2.port")
bg "$T/sub1" "$BOOTH" submit "${JOB[@]}" --coordinator $FAKE --insecure --timeout 4
expect_exit $fake 0 "the fake coordinator" "$T/sub1.err"
[ "$(cat "$T/fake2.port.took")" -gt 1 ] || { echo "the fake took no job with photos"; cat "$T/sub1.err"; exit 1; }
co_start $FAKE
wait_for "$T/co.log" "coordinator listening on $FAKE" 1
expect_exit $bg 1 "submit whose job the first coordinator died with" "$T/sub1.err"
[ "$(grep -vc "warning: INSECURE" "$T/sub1.err")" = 1 ] &&
    grep -q "$FAKE: no answer from the coordinator in 4 s .*the job was sent and may or may not have been queued: \`booth status --coordinator $FAKE\` tells" \
        "$T/sub1.err" || { echo "submit without an answer said:"; cat "$T/sub1.err"; exit 1; }
[ ! -s "$T/sub1" ] || { echo "submit without an answer printed:"; cat "$T/sub1"; exit 1; }
"$BOOTH" status --coordinator $FAKE --insecure --timeout 10 >"$T/st3" 2>/dev/null
grep -qx "no jobs" "$T/st3" || { echo "a Submit was sent again:"; cat "$T/st3"; exit 1; }
co_kill

# submit --wait on a job that stays queued (no workers): the coordinator killed, the client
# says it is not answering; restarted (the job reloaded, same id), the client carries on;
# the job cancelled, it ends with exit 1 and the cancel line
co_start $CO
wait_for "$T/co.log" "coordinator listening on $CO" 3
bg "$T/sub2" "$BOOTH" submit "${JOB[@]}" --coordinator $CO --insecure --timeout 20 --wait
wait_for "$T/sub2.err" "booth submit: job .* queued" 1
ID=$(head -1 "$T/sub2")
co_kill
wait_for "$T/sub2.err" "booth submit: job $ID: the coordinator at $CO is not answering, retrying" 1
co_start $CO
wait_for "$T/sub2.err" "booth submit: job $ID: the coordinator at $CO is answering again" 1
"$BOOTH" cancel $ID --coordinator $CO --insecure --timeout 10 >"$T/cancel" 2>/dev/null
grep -qx "$ID: cancelled" "$T/cancel" || { echo "cancel after the restart:"; cat "$T/cancel"; exit 1; }
expect_exit $bg 1 "submit --wait across a restart" "$T/sub2.err"
grep -q "error: job $ID was cancelled" "$T/sub2.err" || { echo "submit --wait said:"; cat "$T/sub2.err"; exit 1; }

# submit --wait gives up after --timeout seconds without any answer, in one line
bg "$T/sub3" "$BOOTH" submit "${JOB[@]}" --coordinator $CO --insecure --timeout 3 --wait
wait_for "$T/sub3.err" "booth submit: job .* queued" 1
ID=$(head -1 "$T/sub3")
co_kill
expect_exit $bg 1 "submit --wait without answers" "$T/sub3.err"
grep -q "error: no answer from the coordinator at $CO for 3 s; job $ID may still be running" "$T/sub3.err" ||
    { echo "submit --wait without answers said:"; cat "$T/sub3.err"; exit 1; }

# --max-open-jobs: a submit beyond the jobs queued or running is refused in one line (they hold
# their photos in the coordinator's memory); a cancel makes room
"$BOOTH" coordinator --insecure --bind "tcp://127.0.0.1:*" --state-dir "$T/state-full" --max-open-jobs 2 \
    >"$T/full.log" 2>&1 &
PIDS+=($!)
wait_for "$T/full.log" "coordinator listening on" 1
CF=$(sed -n 's|.*coordinator listening on \(tcp://127\.0\.0\.1:[0-9]*\).*|\1|p' "$T/full.log" | head -1)
for k in 1 2; do "$BOOTH" submit "${JOB[@]}" --coordinator $CF --insecure --timeout 10 >"$T/full$k" 2>/dev/null; done
rc=0
"$BOOTH" submit "${JOB[@]}" --coordinator $CF --insecure --timeout 10 >"$T/full3" 2>"$T/full3.err" || rc=$?
[ $rc = 1 ] && grep -q "the queue is full: 2 jobs are waiting or running; cancel some or submit later" "$T/full3.err" ||
    { echo "a third job with --max-open-jobs 2: exit $rc"; cat "$T/full3.err"; exit 1; }
"$BOOTH" cancel "$(head -1 "$T/full1")" --coordinator $CF --insecure --timeout 10 >/dev/null 2>&1
"$BOOTH" submit "${JOB[@]}" --coordinator $CF --insecure --timeout 10 >"$T/full4" 2>/dev/null
echo "client.sh: ok"
