# A disk that fills up while booth train writes a checkpoint (a 2.6 MB tmpfs, mounted by this test as
# root): one line naming the file and "no space left" (libhdf5 used to crash in its object copy and
# leave a partial temporary file), the earlier checkpoint intact, no temporary file left, and after
# space is freed --resume-from-checkpoint latest goes on to the bytes of a run that never stopped.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
D=$T/small
mkdir -p "$D"
[ "$(id -u)" = 0 ] || { echo "full_disk.sh mounts a tmpfs and needs root"; exit 1; }
mount -t tmpfs -o size=2600k tmpfs "$D" || { echo "cannot mount a tmpfs at $D"; exit 1; }
trap 'umount "$D" 2>/dev/null || true' EXIT
TRAIN=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" --resolution 64
    --max-train-steps 4 --checkpointing-steps 1 --learning-rate 5e-3 --seed 1)
st=0
"$BOOTH" train "${TRAIN[@]}" --output-dir "$D/run" >/dev/null 2>"$T/err" || st=$?
test $st = 1 || { echo "exit status $st (139 is the old crash)"; cat "$T/err"; exit 1; }
test "$(grep -c "error" "$T/err")" = 1 || { cat "$T/err"; exit 1; }
grep -q "checkpoint-2.h5: no space left on its disk .*--resume-from-checkpoint latest" "$T/err"
test -s "$D/run/checkpoint-1.h5"
h5dump -a /step "$D/run/checkpoint-1.h5" >"$T/step.txt"
grep -q "(0): 1" "$T/step.txt"
test -z "$(ls "$D/run" | grep '\.tmp\.' || true)"
# space freed (the disk grows): the run goes on from checkpoint-1, to the same bytes
mount -o remount,size=16m "$D"
"$BOOTH" train "${TRAIN[@]}" --output-dir "$D/run" --resume-from-checkpoint latest >/dev/null 2>&1
"$BOOTH" train "${TRAIN[@]}" --output-dir "$T/straight" >/dev/null 2>&1
cmp "$D/run/pytorch_lora_weights.safetensors" "$T/straight/pytorch_lora_weights.safetensors"

# a read-only file system (as root, file modes do not stop a write: a read-only mount does): every
# command that writes says so in one line naming the path, before any work where it can, and
# leaves nothing behind
R=$T/ro
mkdir -p "$R"
mount -t tmpfs -o size=1m tmpfs "$R"
mkdir -p "$R/out"
mount -o remount,ro "$R"
trap 'umount "$D" 2>/dev/null || true; umount "$R" 2>/dev/null || true' EXIT
one_error() { # substring, command...
    local want=$1 st=0
    shift
    "$@" >/dev/null 2>"$T/err" || st=$?
    test $st != 0 || { echo "no failure: $*"; exit 1; }
    test "$(grep -c -- "$want" "$T/err")" = 1 || { echo "not one line naming $want: $*"; cat "$T/err"; exit 1; }
    grep -q -i "read-only" "$T/err" || { echo "the cause is not named: $*"; cat "$T/err"; exit 1; }
}
one_error "$R/out" "$BOOTH" generate --model $MODEL --prompt "a photo of sks robot" --steps 1 --out "$R/out/x.png"
one_error "$R/out" "$BOOTH" train "${TRAIN[@]}" --output-dir "$R/out/run"
one_error "$R/out" "$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 1 --steps 1 \
    --resolution 16 --out "$R/out/p.h5"
test -z "$(ls -A "$R/out")"
