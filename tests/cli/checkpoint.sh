# HDF5 checkpoints end to end on the tiny model: rotation, inspect, export, h5dump and h5py
# reading what booth wrote, a writer killed in the middle of a checkpoint (deterministically
# with the BOOTH_TEST_H5_STALL hook, and at a random moment), byte-identical resume, and the
# one-line errors for checkpoints that cannot be resumed.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
PY=/usr/bin/python3
[ -x $PY ] || PY=python3

JOB=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot"
    --class-prompt "a photo of robot" --with-prior-preservation --num-class-images 3
    --class-data-dir "$T/class" --class-inference-steps 2 --resolution 64 --max-train-steps 6
    --learning-rate 5e-3 --train-text-encoder --random-flip --seed 4)
train() { # output-dir, extra args...
    local out=$1
    shift
    "$BOOTH" train "${JOB[@]}" --output-dir "$out" "$@"
}
check_error() { # expected-substring, command...: fails with exactly one error line, naming the cause
    local want=$1
    shift
    if "$@" >/dev/null 2>"$T/err"; then echo "expected failure: $*"; exit 1; fi
    test "$(grep -c "error" "$T/err")" = 1 || { echo "not one error line:"; cat "$T/err"; exit 1; }
    grep "error" "$T/err" | grep -q -- "$want" || { echo "the error line lacks '$want':"; cat "$T/err"; exit 1; }
}

# the uninterrupted run: checkpoints every 2 steps, the last two kept
train "$T/a" --checkpointing-steps 2 --checkpoints-total-limit 2 >/dev/null 2>"$T/a.err"
ls "$T/a"/checkpoint-*.h5 | sed 's|.*/||' | sort >"$T/a.list"
printf 'checkpoint-4.h5\ncheckpoint-6.h5\n' | cmp - "$T/a.list"
CK="$T/a/checkpoint-6.h5"

# inspect: the summary, JSON, images, contact sheet
"$BOOTH" inspect "$CK" >"$T/inspect.txt"
grep -q "step 6 of 6" "$T/inspect.txt"
grep -q "^loss history (6 steps)" "$T/inspect.txt"
grep -q "lora/unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight *f32 \[4, 32\] *norm" \
    "$T/inspect.txt"
grep -q "optimizer/v/text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" "$T/inspect.txt"
grep -q '^instance images: 5 at 64x64 px, prompt "a photo of sks robot"' "$T/inspect.txt"
grep -q '^prior images: 3 at 64x64 px, prompt "a photo of robot"' "$T/inspect.txt"
"$BOOTH" inspect "$CK" --json >"$T/inspect.json"
$PY -c "
import json, sys
j = json.load(open('$T/inspect.json'))
assert j['step'] == 6 and j['job']['learning_rate'] == 0.005 and len(j['history']['loss']) == 6, j['step']
assert len([t for t in j['tensors'] if t['name'].startswith('lora/')]) * 3 == len(j['tensors'])
assert j['instance']['count'] == 5 and j['prior']['count'] == 3 and j['prior']['prompts'] == ['a photo of robot'] * 3
"
"$BOOTH" inspect "$CK" --images "$T/imgs" --contact-sheet "$T/sheet.png" >"$T/imgs.list"
test "$(grep -c 'instance-' "$T/imgs.list")" = 5 && test "$(grep -c 'prior-' "$T/imgs.list")" = 3
test "$(head -c 8 "$T/sheet.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a
# the stored prior images are the class images the run trained on, pixel for pixel (even the PNG text)
cmp "$T/imgs/prior-00001.png" "$T/class/class-00001.png"

# export: the same bytes the run wrote at that step
"$BOOTH" export "$CK" --format diffusers -o "$T/diffusers.safetensors" >/dev/null
"$BOOTH" export "$CK" --format kohya -o "$T/kohya.safetensors" >/dev/null
"$BOOTH" export "$CK" --format peft --out "$T/peft.safetensors" >/dev/null
cmp "$T/diffusers.safetensors" "$T/a/pytorch_lora_weights.safetensors"
cmp "$T/kohya.safetensors" "$T/a/pytorch_lora_weights_kohya.safetensors"

# other tools read it: h5dump (hdf5-tools) and h5py
h5dump -H "$CK" >"$T/h5dump.txt"
grep -q 'DATASET "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"' "$T/h5dump.txt"
grep -q 'GROUP "optimizer"' "$T/h5dump.txt"
test "$(h5dump -a /step "$CK" | grep -c '(0): 6')" = 1
h5dump -d /prior/images -s 0,0,0,0 -c 1,2,2,3 "$CK" >"$T/h5dump-pixels.txt"
grep -q "(0,0,0,0):" "$T/h5dump-pixels.txt"
"$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 3 --steps 2 --resolution 64 --seed 4 \
    --out "$T/priors.h5" >/dev/null 2>&1
$PY scripts/check_h5.py "$CK" "$T/peft.safetensors" "$T/priors.h5"

# killed in the middle of writing checkpoint 4 (hook: stop at its 5th dataset) ...
BOOTH_TEST_H5_STALL="checkpoint-4.h5:5" "$BOOTH" train "${JOB[@]}" --output-dir "$T/b" --checkpointing-steps 1 \
    >/dev/null 2>"$T/b.err" &
PID=$!
for _ in $(seq 600); do grep -q "stalled writing" "$T/b.err" && break; sleep 0.05; done
grep -q "stalled writing .*checkpoint-4.h5.tmp.$PID" "$T/b.err"
kill -9 $PID
wait $PID 2>/dev/null || true
# ... leaves checkpoint 3 loadable, no checkpoint 4, and a temporary readers refuse in one line
test -f "$T/b/checkpoint-3.h5" && test ! -e "$T/b/checkpoint-4.h5"
"$BOOTH" inspect "$T/b/checkpoint-3.h5" >"$T/b3.txt"
grep -q "step 3 of 6" "$T/b3.txt"
check_error "unfinished HDF5 file" "$BOOTH" inspect "$T/b/checkpoint-4.h5.tmp.$PID"
# resuming from the latest good checkpoint finishes with the uninterrupted run's bytes
train "$T/b" --checkpointing-steps 1 --checkpoints-total-limit 2 --resume-from-checkpoint latest >/dev/null \
    2>"$T/b2.err"
grep -q "resumed from .*checkpoint-3.h5 at step 3" "$T/b2.err"
cmp "$T/a/pytorch_lora_weights.safetensors" "$T/b/pytorch_lora_weights.safetensors"
cmp "$T/a/pytorch_lora_weights_kohya.safetensors" "$T/b/pytorch_lora_weights_kohya.safetensors"
diff <(cut -d, -f1-6 "$T/a/loss.csv") <(cut -d, -f1-6 "$T/b/loss.csv")
# rotation kept two and cleared the dead writer's temporary
test "$(ls "$T/b" | grep -c '^checkpoint-')" = 2 && test ! -e "$T/b/checkpoint-4.h5.tmp.$PID"

# killed at a random moment (mid-step, mid-checkpoint, or not at all): whatever is there loads
# and resuming still ends on the same bytes
"$BOOTH" train "${JOB[@]}" --output-dir "$T/c" --checkpointing-steps 1 >/dev/null 2>&1 &
PID=$!
sleep "0.$((RANDOM % 9 + 1))"
kill -9 $PID 2>/dev/null || true
wait $PID 2>/dev/null || true
for f in "$T/c"/checkpoint-*.h5; do
    [ -e "$f" ] || continue
    "$BOOTH" inspect "$f" >/dev/null
done
# (--base-dtype fp32 keeps this float32 model's weights exact, as auto does: it resumes)
train "$T/c" --checkpointing-steps 1 --resume-from-checkpoint latest --base-dtype fp32 >/dev/null 2>&1
cmp "$T/a/pytorch_lora_weights.safetensors" "$T/c/pytorch_lora_weights.safetensors"

# a checkpoint from before booth recorded base_weights: its weights were the files', so it resumes
# with them (to the same bytes) and refuses rounded ones
# (an edit in place breaks booth's seal, which the first check below sees; then the edited
# files lose their seal, as a file written by another tool or before the seal has none)
unseal() { $PY -c 'import sys; f = open(sys.argv[1], "r+b"); f.write(bytes(512))' "$1"; }
cp "$T/a/checkpoint-4.h5" "$T/old.h5"
$PY - "$T/old.h5" <<'EOF'
import json, sys
import h5py
with h5py.File(sys.argv[1], "r+") as f:
    job = json.loads(f.attrs["job"])
    del job["base_weights"]
    f.attrs["job"] = json.dumps(job)
EOF
check_error "old.h5: changed since booth wrote it: [0-9]* bytes, booth wrote [0-9]*" train "$T/e" --resume-from-checkpoint "$T/old.h5"
unseal "$T/old.h5"
train "$T/e" --resume-from-checkpoint "$T/old.h5" >/dev/null 2>&1
cmp "$T/a/pytorch_lora_weights.safetensors" "$T/e/pytorch_lora_weights.safetensors"

# checkpoints that cannot be resumed: one line each, the cause named
check_error "trained with --learning-rate 0.005, this run has 0.001" \
    train "$T/d" --resume-from-checkpoint "$CK" --learning-rate 1e-3
check_error "trained with --rank 4, this run has 8" train "$T/d" --resume-from-checkpoint "$CK" --rank 8
check_error "trained with --seed 4, this run has 5" train "$T/d" --resume-from-checkpoint "$CK" --seed 5
check_error "trained with --base-dtype (weights) \"exact\", this run has \"fp16\"" \
    train "$T/d" --resume-from-checkpoint "$CK" --base-dtype fp16
check_error "trained with --base-dtype (weights) \"exact\", this run has \"bf16\"" \
    train "$T/d" --resume-from-checkpoint "$T/old.h5" --base-dtype bf16
head -c 5000 "$CK" >"$T/trunc.h5"
check_error "trunc.h5: truncated: 5000 of the [0-9]* bytes booth wrote" train "$T/d" --resume-from-checkpoint "$T/trunc.h5"
cp "$T/sheet.png" "$T/foreign.h5"
check_error "foreign.h5: not an HDF5 file" train "$T/d" --resume-from-checkpoint "$T/foreign.h5"
check_error "a booth-priors file, not a booth-checkpoint" train "$T/d" --resume-from-checkpoint "$T/priors.h5"
check_error "missing.h5: cannot open" "$BOOTH" inspect "$T/missing.h5"
# two corrupted bytes (inspect --json used to crash in libhdf5's global heap on such a file): the
# seal is checked first, for every command that reads the file
cp "$CK" "$T/two.h5"
$PY -c 'import sys; f = open(sys.argv[1], "r+b"); n = f.seek(0, 2); f.seek(n // 2); f.write(b"\xff\x00")' "$T/two.h5"
check_error "two.h5: corrupt: its checksum does not match" "$BOOTH" inspect --json "$T/two.h5"
check_error "two.h5: corrupt: its checksum does not match" "$BOOTH" export "$T/two.h5" --format kohya -o "$T/z.safetensors"
check_error "two.h5: corrupt: its checksum does not match" train "$T/d" --resume-from-checkpoint "$T/two.h5"
test ! -e "$T/z.safetensors"

# files edited outside booth (h5py): a tensor of the wrong shape, a format from the future, an HDF5
# file that is not booth's
cp "$CK" "$T/shape.h5"
cp "$CK" "$T/future.h5"
$PY - "$T/shape.h5" "$T/future.h5" "$T/alien.h5" <<'EOF'
import sys
import h5py
import numpy as np
name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
with h5py.File(sys.argv[1], "r+") as f:
    a = f["lora"][name][...]
    del f["lora"][name]
    f["lora"][name] = a.T.copy()
with h5py.File(sys.argv[2], "r+") as f:
    f.attrs["booth_format_version"] = 2
with h5py.File(sys.argv[3], "w") as f:
    f["x"] = np.zeros(3)
EOF
unseal "$T/shape.h5"
unseal "$T/future.h5"
check_error "to_q.lora_A.weight' has shape \[32, 4\], expected \[4, 32\]" \
    train "$T/d" --resume-from-checkpoint "$T/shape.h5"
check_error "booth-checkpoint format version 2; this booth reads version 1" "$BOOTH" inspect "$T/future.h5"
check_error "alien.h5: an HDF5 file, but not one of booth's" \
    "$BOOTH" export "$T/alien.h5" --format kohya -o "$T/y.safetensors"
check_error "trunc.h5: truncated" "$BOOTH" export "$T/trunc.h5" --format kohya -o "$T/x.safetensors"
test ! -e "$T/x.safetensors"
