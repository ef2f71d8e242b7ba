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
h5dump -a /step "$D/run/checkpoint-1.h5" | grep -q "(0): 1"
test -z "$(ls "$D/run" | grep '\.tmp\.' || true)"
# space freed (the disk grows): the run goes on from checkpoint-1, to the same bytes
mount -o remount,size=16m "$D"
"$BOOTH" train "${TRAIN[@]}" --output-dir "$D/run" --resume-from-checkpoint latest >/dev/null 2>&1
"$BOOTH" train "${TRAIN[@]}" --output-dir "$T/straight" >/dev/null 2>&1
cmp "$D/run/pytorch_lora_weights.safetensors" "$T/straight/pytorch_lora_weights.safetensors"
