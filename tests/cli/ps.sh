# ps.sh — `booth ps`: --help; one clear error line without --keys or --insecure;
# a run that logs the endpoint it bound and advertises, and stops cleanly (exit 0)
# on SIGTERM within a couple of seconds, with no coordinator to talk to.
# Against a coordinator that declares a peer dead after 1.5 s without a heartbeat: the
# PS's heartbeats keep it alive; killed (SIGKILL) and restarted on the same port, the
# coordinator answers the PS's next heartbeat with Error{reregister} and the same PS
# process registers again; stopped (SIGSTOP) past the timeout and resumed, it does too.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.

tmp="$BOOTH_TEST_TMPDIR"
pid=
PIDS=() # every other process this test starts
stop_all() { # a stopped process is resumed to take its SIGTERM
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_all EXIT

"$BOOTH" ps --help >"$tmp/help"
grep -q '^usage: booth ps --coordinator ADDR' "$tmp/help" || { echo "bad usage line:"; cat "$tmp/help"; exit 1; }
for opt in --bind --advertise --threads --keys --insecure --coordinator-key; do
    grep -q -- "$opt" "$tmp/help" || { echo "--help does not list $opt"; exit 1; }
done

# usage errors exit 2
set +e
"$BOOTH" ps --insecure 2>"$tmp/err"; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "missing --coordinator: exit $rc, expected 2"; exit 1; }
grep -q -- '--coordinator' "$tmp/err" || { echo "missing --coordinator not named:"; cat "$tmp/err"; exit 1; }

# neither --keys nor --insecure: exactly one line, naming both ways out
set +e
"$BOOTH" ps --coordinator tcp://127.0.0.1:1 >"$tmp/out" 2>"$tmp/err"; rc=$?
set -e
[ "$rc" -ne 0 ] || { echo "no keys: exit status 0"; exit 1; }
[ "$(wc -l <"$tmp/err")" -eq 1 ] || { echo "expected one error line:"; cat "$tmp/err"; exit 1; }
grep -q -- '--keys DIR' "$tmp/err" && grep -q -- '--insecure' "$tmp/err" || { echo "unclear:"; cat "$tmp/err"; exit 1; }
[ ! -s "$tmp/out" ] || { echo "unexpected stdout:"; cat "$tmp/out"; exit 1; }

# Waits up to $2 tenths of a second for the log $1 to match $3.
wait_log() {
    for _ in $(seq "$2"); do
        grep -Eq "$3" "$1" && return 0
        sleep 0.1
    done
    echo "no line matching '$3' in $1:"; cat "$1"; return 1
}

# Sends SIGTERM to $pid and expects exit 0 within 3 s.
stop_ps() {
    kill -TERM "$pid"
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then echo "booth ps still runs 3 s after SIGTERM"; cat "$1"; exit 1; fi
    set +e
    wait "$pid"; rc=$?
    set -e
    pid=
    [ "$rc" -eq 0 ] || { echo "booth ps exit status $rc after SIGTERM"; cat "$1"; exit 1; }
}

# default bind: every interface, any free port; advertised on the loopback
"$BOOTH" ps --insecure --coordinator tcp://127.0.0.1:1 --threads 1 2>"$tmp/log1" &
pid=$!
wait_log "$tmp/log1" 50 'listening on tcp://0\.0\.0\.0:[1-9][0-9]*, advertised to workers as tcp://127\.0\.0\.1:[1-9][0-9]*'
grep -q 'INSECURE' "$tmp/log1" || { echo "--insecure not announced:"; cat "$tmp/log1"; exit 1; }
port=$(sed -n 's/.*listening on tcp:\/\/0\.0\.0\.0:\([0-9]*\),.*/\1/p' "$tmp/log1")
grep -q "advertised to workers as tcp://127.0.0.1:$port" "$tmp/log1" || { echo "other port advertised:"; cat "$tmp/log1"; exit 1; }
sleep 0.3
stop_ps "$tmp/log1"

# --bind and --advertise as given
"$BOOTH" ps --insecure --coordinator tcp://127.0.0.1:1 --bind 'tcp://127.0.0.1:*' \
    --advertise tcp://ps.example:6000 2>"$tmp/log2" &
pid=$!
wait_log "$tmp/log2" 50 'listening on tcp://127\.0\.0\.1:[1-9][0-9]*, advertised to workers as tcp://ps\.example:6000;'
stop_ps "$tmp/log2"

# a bad endpoint is a usage error, said in one line
set +e
"$BOOTH" ps --insecure --coordinator 'http://x' 2>"$tmp/err"; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "bad --coordinator: exit $rc, expected 2"; exit 1; }
[ "$(wc -l <"$tmp/err")" -eq 1 ] || { echo "expected one error line:"; cat "$tmp/err"; exit 1; }

# ---- faults: the coordinator's port is bound once as tcp://127.0.0.1:*, a restart binds the same one
count() { grep -c -- "$2" "$1" 2>/dev/null || true; }
wait_count() { # file, pattern, n: until the file has n matching lines (20 s at most)
    for _ in $(seq 200); do
        [ "$(count "$1" "$2")" -ge "$3" ] && return 0
        sleep 0.1
    done
    echo "$1: not $3 line(s) matching '$2':"; cat "$1"; return 1
}
co_start() { # endpoint to bind; the log is appended to
    "$BOOTH" coordinator --insecure --bind "$1" --state-dir "$tmp/state" --heartbeat-ms 200 --dead-after-ms 1500 \
        >>"$tmp/co.log" 2>&1 &
    co=$!
    PIDS+=($co)
}
co_start 'tcp://127.0.0.1:*'
wait_log "$tmp/co.log" 200 'coordinator listening on tcp://127\.0\.0\.1:[0-9]'
CO=$(sed -n 's|.*coordinator listening on \(tcp://127\.0\.0\.1:[0-9]*\).*|\1|p' "$tmp/co.log" | head -1)
"$BOOTH" ps --insecure --coordinator "$CO" --bind 'tcp://127.0.0.1:*' --threads 1 2>"$tmp/log3" &
pid=$!
wait_log "$tmp/co.log" 200 'parameter server .* registered at tcp://127\.0\.0\.1:'
wait_log "$tmp/log3" 200 "ps: registered with the coordinator at $CO as peer [0-9]"

# alive on heartbeats alone: three timeouts pass without "declared dead"
sleep 4.5
[ "$(count "$tmp/co.log" "declared dead")" = 0 ] || { echo "a registered PS was declared dead:"; cat "$tmp/co.log"; exit 1; }

# the coordinator killed and restarted on the same endpoint: the same PS registers again
kill -KILL $co
wait $co 2>/dev/null || true
co_start "$CO"
wait_count "$tmp/co.log" "coordinator listening on $CO" 2
wait_count "$tmp/co.log" "parameter server .* registered" 2
wait_log "$tmp/log3" 200 "the coordinator at $CO does not know this parameter server \(it restarted, or declared it dead\): registering again"

# stopped past the timeout and resumed: it registers again
kill -STOP $pid
wait_log "$tmp/co.log" 200 'parameter server .*: silent for .* declared dead'
kill -CONT $pid
wait_count "$tmp/co.log" "parameter server .* registered" 3
[ "$(count "$tmp/log3" "ps: registered with the coordinator at $CO")" = 3 ] || { echo "not 3 registrations:"; cat "$tmp/log3"; exit 1; }
sleep 3 # and stays: the heartbeats name the new peer id
[ "$(count "$tmp/co.log" "declared dead")" = 1 ] || { echo "declared dead again:"; cat "$tmp/co.log"; exit 1; }
! grep -q "error" "$tmp/log3" || { cat "$tmp/log3"; exit 1; }
stop_ps "$tmp/log3"
echo "ps.sh: ok"
