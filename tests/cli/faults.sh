# The cluster under faults (loopback, CURVE on): a worker killed with SIGKILL mid-step, a worker killed
# during the prior farm, a parameter server killed and another started, the coordinator killed and
# restarted, a worker joining mid-job, a worker stopped with SIGSTOP past the heartbeat timeout and
# resumed, a worker stopped with SIGTERM (it says goodbye) — each job's LoRA files are byte-identical to one uninterrupted `booth train`, and the prior
# set to one `booth priors`. Kill points are chosen from `booth status` (after step N), and each
# worker waits BOOTH_TEST_TASK_DELAY_MS before answering a task so that the job lasts long enough
# to be hit; every wait has a deadline. Every process is stopped at the end, also on failure.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
C=$T/cluster
export BOOTH BOOTH_TEST_TASK_DELAY_MS=120
trap 'cluster/local stop "$C" --timeout 10 >/dev/null 2>&1 || true' EXIT
set -E
trap 'echo "failed at line $LINENO: $BASH_COMMAND"; tail -15 "$C/logs/coordinator.log" 2>/dev/null' ERR

JOB=(--model $MODEL --instance-prompt "a photo of sks robot" --class-prompt "a photo of robot"
    --with-prior-preservation --num-class-images 3 --class-inference-steps 2 --resolution 64
    --max-train-steps 10 --learning-rate 5e-3 --random-flip --seed 4 --checkpointing-steps 3
    --micro-batch-size 1 --train-text-encoder)

"$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 3 --steps 2 --resolution 64 --seed 4 \
    --out "$T/priors.h5" >/dev/null 2>&1
"$BOOTH" train "${JOB[@]}" --instance-data-dir $SUBJECT --class-data-dir "$T/priors.h5" \
    --output-dir "$T/single" >/dev/null 2>"$T/single.err"

cluster/local start "$C" --workers 2 --ps 2 --heartbeat-ms 250 --dead-after-ms 1500 >/dev/null
CO=(--coordinator "$(cat "$C/endpoint")" --keys "$C/keys")
pid() { cat "$C/pids/$1.pid"; }

field() { # job, field: a number from `booth status JOB --json` (empty while the coordinator is away)
    "$BOOTH" status "$1" --json "${CO[@]}" --timeout 2 2>/dev/null | grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2
}
wait_for() { # job, field, at least: bounded by 120 s
    local t0=$SECONDS v
    while :; do
        v=$(field "$1" "$2")
        [ -n "$v" ] && [ "$v" -ge "$3" ] && return 0
        [ $((SECONDS - t0)) -lt 120 ] || { echo "job $1 never reached $2 >= $3"; tail -20 "$C/logs/coordinator.log"; exit 1; }
        sleep 0.05
    done
}
submit() { # extra flags...: prints the job id
    "$BOOTH" submit "${CO[@]}" "${JOB[@]}" --instance-data-dir $SUBJECT "$@" | tail -1
}
finish() { # job, output dir: wait for the end, fetch, compare with the single process
    local t0=$SECONDS
    until "$BOOTH" status "$1" --json "${CO[@]}" --timeout 2 2>/dev/null | grep -q '"state":"\(done\|failed\|cancelled\)"'; do
        [ $((SECONDS - t0)) -lt 180 ] || { echo "job $1 did not end"; tail -30 "$C/logs/coordinator.log"; exit 1; }
        sleep 0.1
    done
    "$BOOTH" fetch "$1" --output-dir "$2" "${CO[@]}" >/dev/null || { tail -30 "$C/logs/coordinator.log"; exit 1; }
    cmp "$T/single/pytorch_lora_weights.safetensors" "$2/pytorch_lora_weights.safetensors"
    cmp "$T/single/pytorch_lora_weights_kohya.safetensors" "$2/pytorch_lora_weights_kohya.safetensors"
    cut -d, -f1-6 "$T/single/loss.csv" >"$T/a.csv"
    cut -d, -f1-6 "$2/loss.csv" >"$T/b.csv"
    cmp "$T/a.csv" "$T/b.csv"
}

# 1. a worker killed with SIGKILL mid-step: its micro-batch goes to the other worker
id=$(submit)
wait_for "$id" step 3
kill -KILL "$(pid worker1)"
finish "$id" "$T/kill-worker"
grep -q "worker worker1: .*declared dead" "$C/logs/coordinator.log" # silent, or unreachable: whichever came first

# 2. a worker joining mid-job is handed work from the next task on
id=$(submit)
wait_for "$id" step 2
cluster/local add-worker "$C" --name late >/dev/null
finish "$id" "$T/join"
grep -q "micro-batch .*($id)" "$C/logs/late.log"

# 3. a worker stopped past the heartbeat timeout, then resumed: it is declared dead, comes back, and
#    a result it sends late is counted once at most
id=$(submit)
wait_for "$id" step 2
kill -STOP "$(pid worker2)"
t0=$SECONDS
until grep -q "worker worker2: silent for" "$C/logs/coordinator.log"; do
    [ $((SECONDS - t0)) -lt 30 ] || { echo "worker2 was never declared dead"; exit 1; }
    sleep 0.05
done
kill -CONT "$(pid worker2)"
finish "$id" "$T/stop-worker"
t0=$SECONDS
until [ "$(grep -c "worker worker2 registered" "$C/logs/coordinator.log")" -ge 2 ]; do
    [ $((SECONDS - t0)) -lt 30 ] || { echo "worker2 did not register again"; exit 1; }
    sleep 0.05
done

# 4. a parameter server killed and another started: the tensors are reloaded from the last
#    checkpoint and the steps since then computed again
id=$(submit)
wait_for "$id" step 5
kill -KILL "$(pid ps1)"
cluster/local add-ps "$C" --name ps3 >/dev/null
finish "$id" "$T/kill-ps"
grep -q "lost parameter server" "$C/logs/coordinator.log"

# 5. the coordinator killed and restarted: the job goes on from its state dir and last checkpoint;
#    workers and parameter servers register again by themselves; `submit --wait` carries on
"$BOOTH" submit "${CO[@]}" "${JOB[@]}" --instance-data-dir $SUBJECT --wait --timeout 60 \
    --output-dir "$T/kill-co-wait" >"$T/wait.out" 2>"$T/wait.err" &
waiter=$!
t0=$SECONDS
until id=$(head -1 "$T/wait.out" 2>/dev/null) && [ -n "$id" ]; do
    [ $((SECONDS - t0)) -lt 30 ] || { echo "no job id from submit --wait"; exit 1; }
    sleep 0.05
done
wait_for "$id" step 4
kill -KILL "$(pid coordinator)"
cluster/local restart-coordinator "$C" >/dev/null
wait "$waiter" || { echo "submit --wait did not carry on:"; cat "$T/wait.err"; tail -30 "$C/logs/coordinator.log"; exit 1; }
finish "$id" "$T/kill-co"
cmp "$T/single/pytorch_lora_weights.safetensors" "$T/kill-co-wait/pytorch_lora_weights.safetensors"
grep -q "resumes from .*checkpoint-" "$C/logs/coordinator.log"

# 6. a worker killed during the prior farm: its range goes to a live worker; the set is the one
#    `booth priors` makes
"$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 8 --steps 2 --resolution 64 --seed 9 \
    --out "$T/farm-single.h5" >/dev/null 2>&1
id=$("$BOOTH" submit "${CO[@]}" --priors-only --model $MODEL --class-prompt "a photo of robot" --num 8 --steps 2 \
    --resolution 64 --seed 9 | tail -1)
wait_for "$id" priors_done 2
kill -KILL "$(pid late)"
t0=$SECONDS
until "$BOOTH" status "$id" --json "${CO[@]}" --timeout 2 2>/dev/null | grep -q '"state":"done"'; do
    [ $((SECONDS - t0)) -lt 120 ] || { echo "the farm did not finish"; tail -20 "$C/logs/coordinator.log"; exit 1; }
    sleep 0.1
done
"$BOOTH" fetch "$id" --output-dir "$T/farm" "${CO[@]}" >/dev/null
for d in images latent_mean latent_logvar index; do
    h5dump -d /prior/$d "$T/farm-single.h5" | tail -n +2 >"$T/a.dump"
    h5dump -d /prior/$d "$T/farm/priors.h5" | tail -n +2 >"$T/b.dump"
    cmp "$T/a.dump" "$T/b.dump"
done

# 7. a worker stopped cleanly (SIGTERM) mid-job says goodbye: its task is handed out at once
cluster/local add-worker "$C" --name polite >/dev/null
id=$(submit)
wait_for "$id" step 2
kill -TERM "$(pid polite)"
finish "$id" "$T/term-worker"
grep -q "worker polite: left (stopped (SIGTERM)); declared dead" "$C/logs/coordinator.log"

cluster/local stop "$C" --timeout 10
