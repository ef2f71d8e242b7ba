# cluster/ssh against a real sshd (Debian's openssh-server, installed if missing and root) on a loopback
# port, with a host key and a user key made here: two "hosts", 127.0.0.1 (coordinator, PS) and
# 127.0.0.2 (two workers, one with GPU index 0), a remote run dir whose name has a space and a quote;
# --dry-run prints the ssh commands and starts nothing; `start` brings up the cluster, the GPU index
# reaches the worker's environment, a tiny DreamBooth job submitted to it gives the LoRA file
# `booth train` writes with the same flags, byte for byte; `logs` and `stop` bring the logs back and
# stop every process. The hosts are this machine, so the booth binary and the model have the same
# absolute paths there. Everything started (cluster, sshd) is stopped at exit, also on failure.
T=$BOOTH_TEST_TMPDIR
BOOTH=$(cd "$(dirname "$BOOTH")" && pwd)/$(basename "$BOOTH")
export BOOTH
MODEL=$PWD/tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
S=$T/sshd
C="$T/cluster dir"
RD="$T/remote dir/it's"
HOSTS=$T/hosts

# ---- sshd on a loopback port ----------------------------------------------------------------------
SSHD=$(command -v sshd || true)
[ -n "$SSHD" ] || [ ! -x /usr/sbin/sshd ] || SSHD=/usr/sbin/sshd
if [ -z "$SSHD" ]; then
    [ "$(id -u)" = 0 ] || { echo "cli/ssh: needs sshd (apt-get install openssh-server), and is not root to install it"; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y openssh-server >"$T/apt.log" 2>&1 ||
        { apt-get update >>"$T/apt.log" 2>&1 && apt-get install -y openssh-server >>"$T/apt.log" 2>&1; } ||
        { echo "cli/ssh: apt-get install openssh-server failed:"; tail -5 "$T/apt.log"; exit 1; }
    SSHD=/usr/sbin/sshd
fi
command -v ssh >/dev/null || { echo "cli/ssh: no ssh client (openssh-client)"; exit 1; }

listens() { (: <>"/dev/tcp/$1/$2") 2>/dev/null; }
free_ports() { # N: the first of N consecutive ports nothing listens on, at 127.0.0.1 and 127.0.0.2
    local p k ok
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000)) ok=1
        for k in $(seq 0 $(($1 - 1))); do
            if listens 127.0.0.1 $((p + k)) || listens 127.0.0.2 $((p + k)); then ok=0; fi
        done
        [ $ok = 0 ] || { echo $p; return 0; }
    done
    return 1
}

mkdir -p "$S"
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd # sshd's privilege separation directory
ssh-keygen -q -t ed25519 -N '' -f "$S/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$S/user_key"
cp "$S/user_key.pub" "$S/authorized_keys"
SP=$(free_ports 1)
cat >"$S/sshd_config" <<EOF
Port $SP
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
EOF

stop_all() {
    cluster/ssh stop "$HOSTS" "$C" --timeout 5 >/dev/null 2>&1 || true
    # the "hosts" are this machine: whatever a failed stop left, by its pid file
    for f in "$RD"/pids/*.pid; do [ ! -f "$f" ] || kill -KILL "$(cat "$f")" 2>/dev/null || true; done
    if [ -f "$S/sshd.pid" ]; then kill -TERM "$(cat "$S/sshd.pid")" 2>/dev/null || true; fi
}
trap stop_all EXIT
set -E
trap 'echo "failed at line $LINENO: $BASH_COMMAND"; tail -5 "$S/sshd.log" "$C"/logs/*.log "$RD"/logs/*.log 2>/dev/null' ERR

# -D: sshd stays in the foreground, in the runner's process group (which is killed on a timeout)
"$SSHD" -D -f "$S/sshd_config" -E "$S/sshd.log" &
SSH_OPTS="-p $SP -i $S/user_key -l $(id -un) -o StrictHostKeyChecking=no -o UserKnownHostsFile=$S/known_hosts -o BatchMode=yes -o LogLevel=ERROR"
# shellcheck disable=SC2086
for h in 127.0.0.1 127.0.0.2; do
    t0=$SECONDS
    until ssh $SSH_OPTS -o ConnectTimeout=2 $h true 2>"$T/ssh.err"; do
        [ $((SECONDS - t0)) -lt 15 ] || { echo "sshd does not accept at $h:$SP:"; cat "$T/ssh.err" "$S/sshd.log"; exit 1; }
        sleep 0.2
    done
done
[ "$(cat "$S/sshd.pid")" = $! ]

# ---- the hosts file -------------------------------------------------------------------------------
cat >"$HOSTS" <<'EOF'
# the head node
root@127.0.0.1 coordinator
root@127.0.0.1 ps
127.0.0.2      worker 0   # GPU 0
127.0.0.2      worker
EOF
P=$(free_ports 2)
START=(--ssh-opts "$SSH_OPTS" --remote-dir "$RD" --port "$P" --model "$MODEL" --threads 1 --timeout 40)
# an ssh session starts with a fresh environment: this one's choices of kernels (OpenBLAS's, and
# booth's BOOTH_GEMM_KERNELS / BOOTH_ATTN_KERNELS: hence which roundings) go along, or the workers'
# bits could differ from `booth train`'s here
for v in $(compgen -e | grep -E '^(OPENBLAS_|BOOTH_(GEMM|ATTN)_KERNELS$)' || true); do START+=(--env "$v"); done

# --dry-run: every ssh command printed, nothing started or created
cluster/ssh start "$HOSTS" "$T/dry" "${START[@]}" --dry-run >"$T/dry.out"
test "$(grep -c "^ssh -n .* root@127.0.0.1 " "$T/dry.out")" = 2 # the coordinator, then the PS
test "$(grep -c "^ssh -n .* 127.0.0.2 " "$T/dry.out")" = 1        # both workers at once
test "$(grep -c " | ssh .*tar " "$T/dry.out")" = 2      # the keys, to each host
grep -q "booth.* coordinator --bind.*tcp://127.0.0.1:$P" "$T/dry.out"
grep -q "CUDA_VISIBLE_DEVICES=0.*worker --coordinator.*tcp://127.0.0.1:$P" "$T/dry.out"
grep -q "ps --coordinator tcp://127.0.0.1:$P --bind tcp://127.0.0.1:$((P + 1)) --advertise tcp://127.0.0.1:$((P + 1))" "$T/dry.out"
[ ! -e "$T/dry" ] && [ ! -e "$RD" ] && ! listens 127.0.0.1 "$P"
cluster/ssh stop "$HOSTS" "$T/dry" --dry-run --ssh-opts "$SSH_OPTS" >"$T/dry-stop.out"
test "$(grep -c "^ssh -n .*kill -TERM" "$T/dry-stop.out")" = 2

# a bad hosts file is refused with the line named
printf '127.0.0.1 coordinator\n127.0.0.1 ps 0\n127.0.0.2 worker\n' >"$T/bad-hosts"
if cluster/ssh start "$T/bad-hosts" "$T/bad" --dry-run 2>"$T/bad.err"; then exit 1; fi
grep -q "bad-hosts:2: a GPU index is for workers only" "$T/bad.err"

# ---- the cluster ----------------------------------------------------------------------------------
cluster/ssh start "$HOSTS" "$C" "${START[@]}" >"$T/start.out"
grep -q "coordinator at tcp://127.0.0.1:$P, 1 PS, 2 worker(s) on 2 host(s)" "$T/start.out"
test "$(stat -c %a "$RD/keys/secret.key")" = 600
# the GPU index reached the worker's environment (read on its host, through ssh), and only that one's
# shellcheck disable=SC2086
genv() { ssh $SSH_OPTS 127.0.0.2 "cat /proc/\$(cat $(printf %q "$RD/pids/127.0.0.2-worker-$1.pid"))/environ" | tr '\0' '\n'; }
genv 1 >"$T/env1"; genv 2 >"$T/env2" # files, not pipes into grep -q (SIGPIPE under pipefail)
grep -qx CUDA_VISIBLE_DEVICES=0 "$T/env1"
! grep -q CUDA_VISIBLE_DEVICES "$T/env2"
# the same job in one process, on the prior set `booth priors` makes with the same settings
JOB=(--model "$MODEL" --instance-prompt "a photo of sks robot" --class-prompt "a photo of robot"
    --with-prior-preservation --num-class-images 2 --class-inference-steps 2 --resolution 64
    --max-train-steps 3 --learning-rate 5e-3 --seed 7 --micro-batch-size 1)
"$BOOTH" priors --model "$MODEL" --class-prompt "a photo of robot" --num 2 --steps 2 --resolution 64 --seed 7 \
    --out "$T/priors.h5" >/dev/null 2>&1
"$BOOTH" train "${JOB[@]}" --instance-data-dir $SUBJECT --class-data-dir "$T/priors.h5" \
    --output-dir "$T/single" >/dev/null 2>"$T/single.err"
cluster/ssh env "$C" >"$T/env.out"
grep -qx "BOOTH_COORDINATOR=tcp://127.0.0.1:$P" "$T/env.out"
"$BOOTH" submit --coordinator "tcp://127.0.0.1:$P" --keys "$C/keys" "${JOB[@]}" --instance-data-dir $SUBJECT \
    --wait --output-dir "$T/out" >"$T/submit.out" 2>"$T/submit.err" || { cat "$T/submit.err"; exit 1; }
cmp "$T/single/pytorch_lora_weights.safetensors" "$T/out/pytorch_lora_weights.safetensors"
cmp "$T/single/pytorch_lora_weights_kohya.safetensors" "$T/out/pytorch_lora_weights_kohya.safetensors"

# logs come back, named HOST-ROLE-N; the micro-batches were computed on 127.0.0.2
cluster/ssh logs "$HOSTS" "$C" >/dev/null
for n in 127.0.0.1-coordinator-1 127.0.0.1-ps-1 127.0.0.2-worker-1 127.0.0.2-worker-2; do
    test -s "$C/logs/$n.log"
done
grep -q "prior images to generate" "$C/logs/127.0.0.1-coordinator-1.log"
grep -q "micro-batch" "$C"/logs/127.0.0.2-worker-*.log

# stop: every process ends on SIGTERM (none killed), the logs are collected again
pids=$(cat "$RD"/pids/*.pid)
test "$(wc -w <<<"$pids")" = 4
cluster/ssh stop "$HOSTS" "$C" >"$T/stop.out"
grep -q "stopped" "$T/stop.out"
for p in $pids; do ! kill -0 "$p" 2>/dev/null; done
[ ! -e "$C/running" ] && [ -z "$(ls "$RD/pids")" ]
grep -q "micro-batch" "$C"/logs/127.0.0.2-worker-*.log

# sshd, by its pid file
kill -TERM "$(cat "$S/sshd.pid")"
t0=$SECONDS
while kill -0 "$(cat "$S/sshd.pid")" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt 10 ] || { echo "sshd did not stop"; exit 1; }
    sleep 0.1
done
