# cluster/slurm.sbatch under a real Slurm: munged, slurmctld and slurmd of this test's own on localhost
# (one node, 2 CPUs; Debian's packages, installed here when missing), sbatch with 2 tasks = 2 CPU
# workers. One-shot mode: the batch script submits the tiny DreamBooth job itself (the train flags
# after --, or a job file) and exits with its status (0 when done, not 0 when the job cannot run);
# the LoRA files are byte-identical to `booth train` with the same flags, and `booth export` of the
# checkpoint gives the same bytes.
# Service mode: `booth submit` against the endpoint file gives the same bytes again, each task
# took its own CUDA_VISIBLE_DEVICES, scancel stops it all. Every daemon is stopped by its pid file,
# and its state removed, in an EXIT trap (also on failure); nothing is left running.
# Needs root: it starts the daemons. The system's own munged and Slurm (if any) are not touched.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
M=$T/munge S=$T/slurm
export BOOTH SLURM_CONF=$S/slurm.conf

[ "$(id -u)" = 0 ] || { echo "tests/cli/slurm.sh needs root: it starts munged, slurmctld and slurmd"; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
    ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >"$T/apt.log" 2>&1 ||
        { echo "slurmctld/slurmd/slurm-client/munge missing, apt-get install failed: $(tail -1 "$T/apt.log")"; exit 1; }
fi

sjobs=()
daemons=("slurmd:$S/slurmd.pid" "slurmctld:$S/slurmctld.pid" "munged:$M/munged.pid")
cleanup() {
    local rc=$? d pid t0 left
    set +e
    trap - ERR
    # the jobs first: slurmd stopped under a running job would leave its steps behind
    if [ ${#sjobs[@]} -gt 0 ] && [ -f "$S/slurmctld.pid" ]; then
        scancel "${sjobs[@]}" 2>/dev/null
        t0=$SECONDS
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $((SECONDS - t0)) -lt 40 ]; do sleep 0.2; done
    fi
    for d in "${daemons[@]}"; do
        pid=$(cat "${d#*:}" 2>/dev/null) || continue
        kill -TERM "$pid" 2>/dev/null || continue
        t0=$SECONDS
        while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - t0)) -lt 10 ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "${d%%:*} still runs 10 s after SIGTERM: killed"
            kill -KILL "$pid"
            rc=1
        fi
    done
    wait 2>/dev/null
    # whatever still names this test's folder 3 s on: job processes, a daemon without its pid file
    for _ in $(seq 30); do
        left=$(pgrep -f "$T" | tr '\n' ' ')
        [ -n "$left" ] || break
        sleep 0.1
    done
    if [ -n "$left" ]; then
        echo "left running, now killed: $(pgrep -a -f "$T" | tr '\n' ';')"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
        rc=1
    fi
    rm -rf "$S" "$M"
    exit $rc
}
trap cleanup EXIT
set -E
failed() { # line, command: names them and shows the logs' tails
    local f
    for f in "$T"/*.log "$T"/*/logs/*.log "$S"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -4 "$f"; }; done
    echo "failed at line $1: $2"
}
trap 'failed $LINENO "$BASH_COMMAND"' ERR

handed=" "
free_port() { # N: sets $port to a P with P..P+N-1 in use nowhere on this host, nor handed out before
    local used k ok
    used=" $({ cat /proc/net/tcp /proc/net/tcp6 2>/dev/null || true; } |
        awk '$2 ~ /:[0-9A-F]+$/ { split($2, a, ":"); print a[2] }' | while read -r h; do printf '%d ' "0x$h"; done)$handed"
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 30000)) ok=1
        for k in $(seq 0 $(($1 - 1))); do [[ $used == *" $((port + k)) "* ]] && ok=0; done
        if [ $ok = 1 ]; then
            for k in $(seq 0 $(($1 - 1))); do handed+="$((port + k)) "; done
            return 0
        fi
    done
    echo "no free port"
    return 1
}

# munged of our own: its own key (1024 random bytes, mode 400, owned by the user munged runs as:
# root here), socket, pid, log and seed files; slurm reaches it through AuthInfo=socket=
mkdir -p "$M" "$S/state" "$S/spool" "$T/tmp"
head -c 1024 /dev/urandom >"$M/munge.key"
chmod 400 "$M/munge.key"
munged --foreground --force --key-file="$M/munge.key" --socket="$M/socket" --pid-file="$M/munged.pid" \
    --log-file="$M/munged.log" --seed-file="$M/munged.seed" >>"$M/munged.log" 2>&1 &
for _ in $(seq 100); do [ -S "$M/socket" ] && break; sleep 0.1; done
[ -S "$M/socket" ] || { echo "munged did not start: $(tail -2 "$M/munged.log")"; exit 1; }

H=$(hostname -s)
free_port 1
ctld_port=$port
free_port 1
slurmd_port=$port
: >"$S/plugstack.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=boothtest
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$M/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
PlugStackConfig=$S/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
NodeName=$H NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=booth Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF
# in the foreground (-D) as this test's children: a runner that times the test out kills them too
slurmctld -D -f "$SLURM_CONF" >>"$S/slurmctld.out" 2>&1 &
slurmd -D -f "$SLURM_CONF" >>"$S/slurmd.out" 2>&1 &
for _ in $(seq 150); do [ "$(sinfo -h -n "$H" -o %t 2>/dev/null)" = idle ] && break; sleep 0.2; done
[ "$(sinfo -h -n "$H" -o %t 2>/dev/null)" = idle ] ||
    { echo "node $H not idle within 30 s: $(sinfo -h -N -o '%N %t %E' 2>&1) $(tail -2 "$S/slurmctld.log")"; exit 1; }

# sbatch --wait checks at growing intervals (42 s for a 13 s job here): ask scontrol every 0.2 s
wait_job() { # id, seconds: waits until the job has ended; prints "JobState=S ExitCode=E"
    local t0=$SECONDS st
    while :; do
        st=$(scontrol show job "$1" -o 2>/dev/null | grep -o -E '(JobState|ExitCode)=[^ ]*' | tr '\n' ' ')
        case "$st" in "" | *=PENDING* | *=RUNNING* | *=COMPLETING*) ;; *) echo "${st% }"; return 0 ;; esac
        [ $((SECONDS - t0)) -lt "$2" ] || { echo "still not ended after $2 s: $st"; return 0; }
        sleep 0.2
    done
}
none_left() { # pattern: fails naming the processes whose command line has it 3 s from now
    local left
    for _ in $(seq 30); do
        left=$(pgrep -a -f "$1" | grep -v "^$$ " || true)
        [ -n "$left" ] || return 0
        sleep 0.1
    done
    echo "still running: $left"
    return 1
}
sb() { # sbatch with 2 tasks of 1 CPU each, the workers' files under $T; prints the job id
    local id
    id=$(TMPDIR=$T/tmp sbatch --parsable -n 2 --cpus-per-task 1 --chdir "$PWD" "$@")
    echo "$id"
}

JOB=(--model "$MODEL" --instance-data-dir "$SUBJECT" --instance-prompt "a photo of sks robot"
    --class-prompt "a photo of robot" --with-prior-preservation --num-class-images 2 --class-inference-steps 2
    --resolution 64 --max-train-steps 3 --checkpointing-steps 3 --learning-rate 5e-3 --seed 7)

# one process, on the prior set the coordinator's farm makes (a file, as the cluster keeps it)
"$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 2 --steps 2 --resolution 64 --seed 7 \
    --out "$T/priors.h5" >/dev/null 2>&1
"$BOOTH" train "${JOB[@]}" --class-data-dir "$T/priors.h5" --output-dir "$T/single" >/dev/null 2>"$T/single.err"

same() { # output dir: the LoRA files `booth train` wrote, and the checkpoint exports to them
    cmp "$T/single/pytorch_lora_weights.safetensors" "$1/pytorch_lora_weights.safetensors"
    cmp "$T/single/pytorch_lora_weights_kohya.safetensors" "$1/pytorch_lora_weights_kohya.safetensors"
    "$BOOTH" export "$1/checkpoint-3.h5" --format diffusers -o "$1/exported.safetensors" >/dev/null
    cmp "$1/pytorch_lora_weights.safetensors" "$1/exported.safetensors"
    "$BOOTH" export "$1/checkpoint-3.h5" --format kohya -o "$1/exported-kohya.safetensors" >/dev/null
    cmp "$1/pytorch_lora_weights_kohya.safetensors" "$1/exported-kohya.safetensors"
}

# one-shot: one sbatch = one training, its status the job's
free_port 2
id=$(BOOTH_SLURM_DIR=$T/once BOOTH_SLURM_PORT=$port sb -o "$T/once.log" cluster/slurm.sbatch \
    -- "${JOB[@]}" --output-dir "$T/once-out")
sjobs+=("$id")
st=$(wait_job "$id" 60)
[ "$st" = "JobState=COMPLETED ExitCode=0:0" ] || { echo "one-shot job $id: $st"; cat "$T/once.log"; exit 1; }
grep -q "ready: coordinator tcp://127.0.0.1:[0-9]*, 1 PS, 2 worker(s)" "$T/once.log"
grep -q "the job is done" "$T/once.log"
same "$T/once-out"
none_left "$T/once"

# a job file (BOOTH_SLURM_JOB; the workers load its model) whose photos are missing: the batch
# script fails with the job
printf '{"pretrained_model_name_or_path": "%s", "instance_data_dir": "%s", "instance_prompt": "a sks robot"}\n' \
    "$MODEL" "$T/no-such-photos" >"$T/bad.json"
free_port 2
id=$(BOOTH_SLURM_JOB=$T/bad.json BOOTH_SLURM_DIR=$T/bad BOOTH_SLURM_PORT=$port sb -o "$T/bad.log" cluster/slurm.sbatch)
sjobs+=("$id")
st=$(wait_job "$id" 60)
[[ $st == "JobState=FAILED ExitCode="[1-9]* ]] || { echo "job $id with no photos: $st"; cat "$T/bad.log"; exit 1; }
grep -q "ready: coordinator .* 2 worker(s)" "$T/bad.log"
grep -q "the job did not finish" "$T/bad.log"
none_left "$T/bad/"

# service mode: clients submit against the endpoint file until scancel; each task its own GPU
free_port 2
id=$(CUDA_VISIBLE_DEVICES=4,7 BOOTH_SLURM_MODEL=$MODEL BOOTH_SLURM_DIR=$T/svc BOOTH_SLURM_PORT=$port \
    sb -o "$T/svc.log" cluster/slurm.sbatch)
sjobs+=("$id")
for _ in $(seq 300); do
    [ -s "$T/svc/endpoint" ] && break
    scontrol show job "$id" -o | grep -q -E 'JobState=(PENDING|RUNNING)' || { cat "$T/svc.log"; exit 1; }
    sleep 0.2
done
timeout 120 "$BOOTH" submit --coordinator "$(cat "$T/svc/endpoint")" --keys "$T/svc/keys" "${JOB[@]}" --wait \
    --output-dir "$T/svc-out" >"$T/svc-submit.log" 2>&1
same "$T/svc-out"
grep -h "CUDA_VISIBLE_DEVICES" "$T"/svc/logs/worker-*.log | sort >"$T/gpus"
printf '%s\n' "booth slurm: worker0@$H: CUDA_VISIBLE_DEVICES=4, threads 1" \
    "booth slurm: worker1@$H: CUDA_VISIBLE_DEVICES=7, threads 1" | cmp - "$T/gpus"
scancel "$id"
st=$(wait_job "$id" 40)
[[ $st == "JobState=CANCELLED "* ]] || { echo "service job $id after scancel: $st"; cat "$T/svc.log"; exit 1; }
grep -q "SIGTERM: stopping" "$T/svc.log"
if grep "killed:" "$T/svc.log"; then exit 1; fi
[ ! -e "$T/svc/endpoint" ]
none_left "$T/svc/"
[ -z "$(ls -A "$T/tmp")" ] # every worker removed its files
