# train_flags.sh — booth train as a diffusers user types it (issue 14): the README example of
# diffusers' train_dreambooth_lora.py with its underscores and '=', the flags booth adds from it
# (epochs, gradient accumulation, --scale-lr, the schedulers, center/random crop, --logging-dir),
# the flags it accepts with a note, every range error naming flag, value and range before any model
# is loaded, diffusers' conflict warnings, and the output folder's rules.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
fail() { echo "$*"; cat "$T/err" 2>/dev/null; exit 1; }
error_is() { # expected-substring, args...: exit 2, the substring on stderr, no model loaded
    local want=$1
    shift
    set +e
    "$BOOTH" train "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    set -e
    [ "$rc" -eq 2 ] || fail "exit $rc, expected 2: $*"
    grep -qF -- "$want" "$T/err" || fail "stderr lacks '$want':"
    ! grep -q "encoding images" "$T/err" || fail "the model was loaded before the check:"
}
BASE=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" --output-dir "$T/x")

# diffusers' README example, as pasted (accelerate launch left out), at 64 px for 2 steps
"$BOOTH" train \
    --pretrained_model_name_or_path=$MODEL \
    --instance_data_dir=$SUBJECT \
    --output_dir="$T/readme/" \
    --instance_prompt="a photo of sks dog" \
    --resolution=64 \
    --train_batch_size=1 \
    --gradient_accumulation_steps=1 \
    --checkpointing_steps=1 \
    --learning_rate=1e-4 \
    --report_to="wandb" \
    --lr_scheduler="constant" \
    --lr_warmup_steps=0 \
    --max_train_steps=2 \
    --validation_prompt="A photo of sks dog in a bucket" \
    --validation_epochs=50 \
    --num_validation_images=1 \
    --seed="0" \
    --push_to_hub >"$T/out" 2>"$T/err" || fail "the README example failed:"
for f in pytorch_lora_weights.safetensors checkpoint-1.h5 checkpoint-2.h5 validation/step-000002.png; do
    test -s "$T/readme/$f" || fail "missing $f"
done
grep -q "note: --report-to wandb ignored: booth writes loss.csv" "$T/err" || fail "no --report-to note"
grep -q "note: --push-to-hub ignored" "$T/err" || fail "no --push-to-hub note"
# each checkpoint and validation image is named as it is written, paths without '//'
grep -qx "checkpoint: $T/readme/checkpoint-1.h5" "$T/err" || fail "checkpoint-1 not named:"
grep -qx "validation: $T/readme/validation/step-000002.png" "$T/err" || fail "validation image not named:"
! grep -q "//" "$T/out" "$T/err" || fail "a doubled slash:"
grep -q " random crop" "$T/err" || fail "diffusers' default is a random crop:"

# every flag booth ignores is accepted, none is an unknown option
"$BOOTH" train "${BASE[@]}" --mixed_precision=fp16 --revision main --variant fp16 --allow_tf32 \
    --enable_xformers_memory_efficient_attention --use_8bit_adam --dataloader_num_workers 4 --local_rank=-1 \
    --hub_token x --hub_model_id y --tokenizer_name z --set_grads_to_none --pre_compute_text_embeddings \
    --help >/dev/null 2>"$T/err" || fail "ignored flags refused:"
"$BOOTH" train --help >"$T/help" # a file, not a pipe into grep -q (SIGPIPE under pipefail)
grep -q "accepted from diffusers' scripts" "$T/help" || fail "--help lacks the ignored flags"
grep -q -- "--logging-dir DIR .*CSV" "$T/help" || fail "--help does not say loss.csv is a CSV"
error_is "--mixed-precision needs a value" "${BASE[@]}" --mixed-precision

# range errors: flag, value and range, one line, before the model loads
error_is "--rank 0 is outside 1..1024" "${BASE[@]}" --rank 0
error_is "--train-batch-size 0 is outside 1..128" "${BASE[@]}" --train-batch-size 0
error_is "--resolution 7 is outside 8..4096" "${BASE[@]}" --resolution 7
error_is "--resolution 100 is not a multiple of 8" "${BASE[@]}" --resolution 100
error_is "--max-train-steps 0 is outside 1..100000000" "${BASE[@]}" --max-train-steps 0
error_is "--num-class-images 100001 is outside 1..100000" "${BASE[@]}" --num-class-images 100001
error_is "--gradient-accumulation-steps 0 is outside 1..128" "${BASE[@]}" --gradient-accumulation-steps 0
error_is "--train-batch-size 16 x --gradient-accumulation-steps 16 = 256" "${BASE[@]}" --train-batch-size 16 \
    --gradient-accumulation-steps 16
error_is "--num-train-epochs 0 is outside 1..1000000" "${BASE[@]}" --num-train-epochs 0
error_is "--lr-num-cycles 0 is outside 1..1000000" "${BASE[@]}" --lr-num-cycles 0
error_is "--lr-power -1 is outside [0, 1000)" "${BASE[@]}" --lr-power -1
error_is "--lora-alpha 0 is outside (0, 1e6)" "${BASE[@]}" --lora-alpha 0
error_is "--learning-rate 1e-08 must be above lr_end 1e-07" "${BASE[@]}" --lr-scheduler polynomial --learning-rate 1e-8
error_is "is not constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial" "${BASE[@]}" \
    --lr-scheduler exponential
error_is "--prior-generation-precision 'fp64' is not no, fp32, fp16 or bf16" "${BASE[@]}" --prior-generation-precision fp64
error_is "--validation-steps and --validation-epochs" "${BASE[@]}" --validation-prompt v --validation-steps 2 \
    --validation-epochs 1

# diffusers' warnings: class settings without prior preservation, validation intervals without a prompt
TINY=(--resolution 64 --max-train-steps 1)
"$BOOTH" train "${BASE[@]}" "${TINY[@]}" --output-dir "$T/w" --class-prompt "a robot" --validation-steps 1 \
    >/dev/null 2>"$T/err" || fail "warnings stopped the run:"
grep -q "warning: --class-prompt is not used without --with-prior-preservation" "$T/err" || fail "no class warning:"
grep -q "warning: --validation-steps does nothing without --validation-prompt" "$T/err" || fail "no validation warning:"

# epochs as diffusers counts them: 5 photos, batch 2 -> 3 batches, 2 accumulated -> 2 steps an epoch;
# 2 epochs = 4 steps; --scale-lr: 1e-4 x 2 x 2; cosine_with_restarts with 2 cycles: 1, .5, 1, .5
"$BOOTH" train "${BASE[@]}" --output-dir "$T/ep" --resolution 64 --num_train_epochs=2 --train-batch-size 2 \
    --gradient-accumulation-steps 2 --scale-lr --lr-scheduler cosine_with_restarts --lr-num-cycles 2 \
    --logging-dir logs --center-crop >"$T/out" 2>"$T/err" || fail "the epoch run failed:"
grep -q "4 steps, batch 4 (2 x 2 accumulated), lr 0.0004 (cosine_with_restarts)" "$T/err" || fail "epochs:"
grep -q " center crop" "$T/err" || fail "--center-crop not taken:"
test "$(cut -d, -f5 "$T/ep/logs/loss.csv" | tr '\n' ' ')" = "lr 0.0004 0.0002 0.0004 0.0002 " ||
    fail "lr column: $(cut -d, -f5 "$T/ep/logs/loss.csv")"
grep -qx "$T/ep/logs/loss.csv" "$T/out" || fail "the loss log's path is not printed"
test ! -e "$T/ep/loss.csv" || fail "loss.csv is in --output-dir as well"

# random crop (the default) against --center-crop: the same seed, other photos' squares, other bits;
# random crops are a function of the seed: a second run gives the same bytes
R=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a sks robot" --resolution 64 --max-train-steps 2)
"$BOOTH" train "${R[@]}" --output-dir "$T/rc1" >/dev/null 2>&1
"$BOOTH" train "${R[@]}" --output-dir "$T/rc2" >/dev/null 2>&1
"$BOOTH" train "${R[@]}" --output-dir "$T/cc" --center-crop >/dev/null 2>&1
cmp -s "$T/rc1/pytorch_lora_weights.safetensors" "$T/rc2/pytorch_lora_weights.safetensors" || fail "random crop varies"
! cmp -s "$T/rc1/pytorch_lora_weights.safetensors" "$T/cc/pytorch_lora_weights.safetensors" || fail "crop ignored"

# the model's own resolution when --resolution is not given (the tiny model: 16 latents x 8 = 128 px)
"$BOOTH" train --model $MODEL --instance-data-dir $SUBJECT --instance-prompt x --output-dir "$T/native" \
    --max-train-steps 1 >/dev/null 2>"$T/err" || fail "native resolution run failed:"
grep -q ", 128 px," "$T/err" || fail "not the model's resolution:"

# a photo smaller than the resolution is named before it is upscaled
grep -q "robot-1.png: 200x150 is smaller than the training resolution 256" <(
    "$BOOTH" train "${BASE[@]}" --resolution 256 --max-train-steps 1 --output-dir "$T/small" 2>&1 >/dev/null) ||
    fail "small photo not named"

# output folders: another run's checkpoints are not mixed in; --overwrite starts over
error_is "holds 2 checkpoints of an earlier run (newest $T/readme/checkpoint-2.h5)" "${BASE[@]}" "${TINY[@]}" \
    --output-dir "$T/readme"
"$BOOTH" train "${BASE[@]}" "${TINY[@]}" --output-dir "$T/readme" --overwrite >/dev/null 2>"$T/err" ||
    fail "--overwrite failed:"
grep -q "deleted 2 checkpoints in $T/readme" "$T/err" || fail "--overwrite did not say what it deleted:"
test ! -e "$T/readme/checkpoint-2.h5" || fail "the old checkpoint is still there"
# ... nor inside the photos (a second run would train on loss.png)
mkdir -p "$T/photos"
cp $SUBJECT/* "$T/photos/"
error_is "is inside --instance-data-dir" "${BASE[@]}" --instance-data-dir "$T/photos" --output-dir "$T/photos/out"
error_is "is inside --instance-data-dir" "${BASE[@]}" --instance-data-dir "$T/photos/" --output-dir "$T/photos"
# a corrupt newest checkpoint: named, and the previous one offered by its path
"$BOOTH" train "${BASE[@]}" --resolution 64 --max-train-steps 2 --checkpointing-steps 1 --output-dir "$T/rs" \
    >/dev/null 2>&1
printf 'garbage' >"$T/rs/checkpoint-3.h5"
set +e
"$BOOTH" train "${BASE[@]}" --resolution 64 --max-train-steps 4 --output-dir "$T/rs/" \
    --resume-from-checkpoint latest >/dev/null 2>"$T/err"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "corrupt checkpoint: exit $rc"
grep -q "the newest checkpoint, $T/rs/checkpoint-3.h5, cannot be resumed from" "$T/err" || fail "not named:"
grep -q -- "--resume-from-checkpoint $T/rs/checkpoint-2.h5" "$T/err" || fail "previous not offered:"
"$BOOTH" train "${BASE[@]}" --resolution 64 --max-train-steps 4 --output-dir "$T/rs" \
    --resume-from-checkpoint "$T/rs/checkpoint-2.h5" >/dev/null 2>"$T/err" || fail "resume from the previous failed:"
echo "train_flags.sh: ok"
