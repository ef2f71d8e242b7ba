# ps.sh — `booth ps`: --help; one clear error line without --keys or --insecure;
# a run that logs the endpoint it bound and advertises, and stops cleanly (exit 0)
# on SIGTERM within a couple of seconds, with no coordinator to talk to.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.

tmp="$BOOTH_TEST_TMPDIR"
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; true' EXIT

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
echo "ps.sh: ok"
