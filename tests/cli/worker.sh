# worker.sh — `booth worker` on its own and against a bare coordinator (no job): usage errors and
# missing keys or model in one line; an unreachable coordinator neither crashes it nor keeps it from
# stopping cleanly on SIGTERM (exit 0, its work folder removed); started before the coordinator it
# registers once the coordinator is up, and again after the coordinator restarts (a new connection
# is a stranger to the coordinator); a key the coordinator does not allow is said in one line.
# Faults without a job: its heartbeats (its heartbeat thread's, naming its peer id) keep it alive
# past the coordinator's dead-after timeout; a coordinator killed with SIGKILL and restarted on the
# same port sees it register again without restarting it; stopped (SIGSTOP) past the timeout and
# resumed, it is told the coordinator does not know it and registers again; then SIGTERM still
# stops it at once, exit 0. A bad BOOTH_TEST_TASK_DELAY_MS is one error line.
# The training conversation itself is tests/cli/cluster.sh's, faults during a job faults.sh's.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
PY=/usr/bin/python3
[ -x $PY ] || PY=python3
PIDS=()
stop_all() { # every process this test started, by pid (a stopped one is resumed to take its SIGTERM)
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_all EXIT

one_error() { # expected status, expected substring, command...: that status and one line (--insecure's warning aside)
    local want_rc=$1 want=$2 rc=0
    shift 2
    "$@" >"$T/out" 2>"$T/err" || rc=$?
    [ "$rc" = "$want_rc" ] || { echo "exit $rc (want $want_rc): $*"; cat "$T/err"; exit 1; }
    [ "$(grep -vc "warning: INSECURE" "$T/err")" = 1 ] || { echo "not one error line:"; cat "$T/err"; exit 1; }
    grep -q -- "$want" "$T/err" || { echo "the line lacks '$want':"; cat "$T/err"; exit 1; }
}
free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # file, pattern, count: until the file has that many matching lines (20 s at most)
    for _ in $(seq 200); do
        [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
        sleep 0.1
    done
    echo "$1: no $3 line(s) matching '$2':"
    cat "$1"
    exit 1
}

"$BOOTH" worker --help >"$T/help.txt"
for opt in --coordinator --model --base-dtype --threads --work-dir --name --keys --coordinator-key --insecure; do
    grep -q -- "$opt" "$T/help.txt" || { echo "--help lacks $opt"; exit 1; }
done
one_error 2 "--coordinator is required" "$BOOTH" worker
one_error 2 "--model not given, and \$BOOTH_MODEL (/nonexistent) is not a diffusers model folder" \
    env BOOTH_MODEL=/nonexistent "$BOOTH" worker --coordinator tcp://127.0.0.1:1
one_error 2 "base-dtype" "$BOOTH" worker --coordinator tcp://127.0.0.1:1 --model $MODEL --base-dtype fp8
one_error 1 "--keys DIR is required" "$BOOTH" worker --coordinator tcp://127.0.0.1:1 --model $MODEL
one_error 1 "$T/nokeys/secret.key" "$BOOTH" worker --coordinator tcp://127.0.0.1:1 --model $MODEL --keys "$T/nokeys"
one_error 1 "$T/nomodel" "$BOOTH" worker --coordinator tcp://127.0.0.1:1 --model "$T/nomodel" --insecure
one_error 1 "not-an-endpoint" "$BOOTH" worker --coordinator not-an-endpoint --model $MODEL --insecure
one_error 1 "BOOTH_TEST_TASK_DELAY_MS=soon" env BOOTH_TEST_TASK_DELAY_MS=soon \
    "$BOOTH" worker --coordinator tcp://127.0.0.1:1 --model $MODEL --insecure

# nobody listens: the worker waits, and SIGTERM stops it cleanly, its work folder gone
TMPDIR="$T" "$BOOTH" worker --coordinator tcp://127.0.0.1:1 --model $MODEL --insecure --threads 1 \
    >"$T/alone.log" 2>&1 &
pid=$!
PIDS+=($pid)
wait_for "$T/alone.log" "files in $T/booth-worker-$pid" 1
test -d "$T/booth-worker-$pid"
sleep 2
kill -0 $pid
kill -TERM $pid
rc=0
wait $pid || rc=$?
[ $rc = 0 ] || { echo "SIGTERM: exit $rc"; cat "$T/alone.log"; exit 1; }
test ! -e "$T/booth-worker-$pid"
! grep -q "error" "$T/alone.log" || { cat "$T/alone.log"; exit 1; }

# the worker first, the coordinator later; then the coordinator restarts
"$BOOTH" keygen --out "$T/keys" >/dev/null
cp "$T/keys/public.key" "$T/keys/authorized_keys"
port=$(free_port)
CO=tcp://127.0.0.1:$port
"$BOOTH" worker --coordinator $CO --model $MODEL --keys "$T/keys" --threads 1 --name early \
    --work-dir "$T/work" >"$T/early.log" 2>&1 &
PIDS+=($!)
sleep 1
"$BOOTH" coordinator --bind $CO --state-dir "$T/state" --keys "$T/keys" >"$T/co1.log" 2>&1 &
co=$!
PIDS+=($co)
wait_for "$T/early.log" "worker early registered with $CO" 1
"$BOOTH" status --coordinator $CO --keys "$T/keys" --json --timeout 5 >"$T/status.json"
grep -q '"workers":\[{"name":"early"' "$T/status.json" || { cat "$T/status.json"; exit 1; }
kill -TERM $co
wait $co || true
wait_for "$T/early.log" "lost the coordinator at $CO" 1
"$BOOTH" coordinator --bind $CO --state-dir "$T/state" --keys "$T/keys" >"$T/co2.log" 2>&1 &
PIDS+=($!)
wait_for "$T/early.log" "worker early registered with $CO" 2
wait_for "$T/co2.log" "worker early registered" 1

# a worker whose key the coordinator does not allow: one error line saying so, and it goes on waiting
"$BOOTH" keygen --out "$T/stranger" >/dev/null
"$BOOTH" worker --coordinator $CO --model $MODEL --keys "$T/stranger" --coordinator-key "$T/keys/public.key" \
    --threads 1 --name stranger >"$T/stranger.log" 2>&1 &
PIDS+=($!)
wait_for "$T/stranger.log" "refused this worker's key" 1
sleep 1
[ "$(grep -c error "$T/stranger.log")" = 1 ] || { cat "$T/stranger.log"; exit 1; }
kill -0 "${PIDS[-1]}"

stop_all
PIDS=()
[ -d "$T/work" ] && [ -z "$(ls -A "$T/work")" ] # a given --work-dir stays; the job folders in it do not
! grep -q "error" "$T/early.log" || { cat "$T/early.log"; exit 1; }

# ---- faults, against a coordinator that declares a peer dead after 1.5 s without a heartbeat ----
# its port: bound once as tcp://127.0.0.1:*, then the restarted coordinator binds that same one
count() { grep -c -- "$2" "$1" 2>/dev/null || true; }
co_start() { # endpoint to bind; the log is appended to
    "$BOOTH" coordinator --insecure --bind "$1" --state-dir "$T/state3" --heartbeat-ms 200 --dead-after-ms 1500 \
        >>"$T/co3.log" 2>&1 &
    co=$!
    PIDS+=($co)
}
co_start 'tcp://127.0.0.1:*'
wait_for "$T/co3.log" "coordinator listening on tcp://127.0.0.1:[0-9]" 1
CO3=$(sed -n 's|.*coordinator listening on \(tcp://127\.0\.0\.1:[0-9]*\).*|\1|p' "$T/co3.log" | head -1)
TMPDIR="$T" BOOTH_TEST_TASK_DELAY_MS=250 "$BOOTH" worker --coordinator $CO3 --model $MODEL --insecure --threads 1 \
    --name faulty >"$T/faulty.log" 2>&1 &
wk=$!
PIDS+=($wk)
wait_for "$T/faulty.log" "test hook BOOTH_TEST_TASK_DELAY_MS: .* 250 ms late" 1
wait_for "$T/co3.log" "worker faulty registered" 1

# alive on heartbeats alone: three timeouts pass without "declared dead"
sleep 4.5
[ "$(count "$T/co3.log" "declared dead")" = 0 ] || { echo "a registered worker was declared dead:"; cat "$T/co3.log"; exit 1; }

# the coordinator killed and restarted on the same endpoint: the same worker process registers again
kill -KILL $co
wait $co 2>/dev/null || true
co_start $CO3
wait_for "$T/co3.log" "coordinator listening on $CO3" 2
wait_for "$T/co3.log" "worker faulty registered" 2
wait_for "$T/faulty.log" "worker faulty registered with $CO3" 2

# stopped past the timeout and resumed: the coordinator does not know it any more; it registers again
kill -STOP $wk
wait_for "$T/co3.log" "worker faulty: silent for .* declared dead" 1
kill -CONT $wk
wait_for "$T/faulty.log" "the coordinator at $CO3 does not know this worker (it restarted, or declared it dead): registering again" 1
wait_for "$T/co3.log" "worker faulty registered" 3
wait_for "$T/faulty.log" "worker faulty registered with $CO3" 3
sleep 3 # and stays: the heartbeats name the new peer id
[ "$(count "$T/co3.log" "declared dead")" = 1 ] || { echo "declared dead again:"; cat "$T/co3.log"; exit 1; }

# SIGTERM with the heartbeat thread running: exit 0 within 5 s
kill -TERM $wk
for _ in $(seq 50); do kill -0 $wk 2>/dev/null || break; sleep 0.1; done
kill -0 $wk 2>/dev/null && { echo "the worker still runs 5 s after SIGTERM"; cat "$T/faulty.log"; exit 1; }
rc=0
wait $wk || rc=$?
[ $rc = 0 ] || { echo "SIGTERM: exit $rc"; cat "$T/faulty.log"; exit 1; }
! grep -q "error" "$T/faulty.log" || { cat "$T/faulty.log"; exit 1; }
stop_all
PIDS=()
