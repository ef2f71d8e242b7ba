# booth train --train-unet full (the original DreamBooth: every UNet weight trains) on the tiny model:
# the output is a diffusers model folder that generate loads; the same seed gives the same bytes; a
# run resumed from its checkpoint, and the checkpoint exported with --format model, give the same
# UNet as the uninterrupted run; what does not fit is refused in one line. With --train-text-encoder
# every text-encoder weight trains too: the folder's text_encoder/model.safetensors is the trained
# one, generate loads it, resume and export give the same bytes.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
ARGS=(--model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot"
    --class-prompt "a photo of robot" --with-prior-preservation --num-class-images 2 --class-inference-steps 2
    --resolution 64 --max-train-steps 4 --learning-rate 1e-3 --train-unet full --seed 4)

"$BOOTH" train "${ARGS[@]}" --checkpointing-steps 2 --validation-prompt "a sks robot" --num-validation-images 1 \
    --output-dir "$T/run" >"$T/out.txt" 2>"$T/err.txt"
grep -q "every UNet weight" "$T/err.txt"
for f in model_index.json unet/config.json unet/diffusion_pytorch_model.safetensors text_encoder/config.json \
    vae/diffusion_pytorch_model.safetensors tokenizer/vocab.json scheduler/scheduler_config.json loss.csv loss.png \
    checkpoint-2.h5 checkpoint-4.h5 validation/step-000004.png; do
    test -s "$T/run/$f" || { echo "missing $f"; cat "$T/err.txt"; exit 1; }
done
grep -q "unet/diffusion_pytorch_model.safetensors" "$T/out.txt"
! test -e "$T/run/pytorch_lora_weights.safetensors"
# the UNet changed; the other parts are the base's, byte for byte
! cmp -s $MODEL/unet/diffusion_pytorch_model.safetensors "$T/run/unet/diffusion_pytorch_model.safetensors"
cmp $MODEL/vae/diffusion_pytorch_model.safetensors "$T/run/vae/diffusion_pytorch_model.safetensors"
cmp $MODEL/unet/config.json "$T/run/unet/config.json"

# the folder is a model: generate draws from it, and differently from the base
gen() {
    "$BOOTH" generate --model "$1" --prompt "a sks robot" --steps 3 --width 64 --height 64 --seed 1 \
        --save-latents "$2" --out "$T/g.png" >/dev/null 2>"$T/gen.err" || { cat "$T/gen.err"; exit 1; }
}
gen "$T/run" "$T/tuned.safetensors"
gen $MODEL "$T/base.safetensors"
! cmp -s "$T/tuned.safetensors" "$T/base.safetensors"

# the same seed, the same UNet bytes (class images reused from the first run)
"$BOOTH" train "${ARGS[@]}" --class-data-dir "$T/run/class_images" --output-dir "$T/run2" >/dev/null 2>&1
cmp "$T/run/unet/diffusion_pytorch_model.safetensors" "$T/run2/unet/diffusion_pytorch_model.safetensors"

# resumed from step 2: the same UNet as the run that never stopped
mkdir -p "$T/resumed"
"$BOOTH" train "${ARGS[@]}" --class-data-dir "$T/run/class_images" --resume-from-checkpoint "$T/run/checkpoint-2.h5" \
    --output-dir "$T/resumed" >/dev/null 2>"$T/resume.err" || { cat "$T/resume.err"; exit 1; }
grep -q "resumed from" "$T/resume.err"
cmp "$T/run/unet/diffusion_pytorch_model.safetensors" "$T/resumed/unet/diffusion_pytorch_model.safetensors"

# the last checkpoint exported as a model folder is the run's result; inspect says what it holds
"$BOOTH" export "$T/run/checkpoint-4.h5" --format model -o "$T/exported" >/dev/null
cmp "$T/run/unet/diffusion_pytorch_model.safetensors" "$T/exported/unet/diffusion_pytorch_model.safetensors"
cmp "$T/run/model_index.json" "$T/exported/model_index.json"
"$BOOTH" inspect "$T/run/checkpoint-2.h5" >"$T/inspect.txt"
grep -q "full fine-tuning: every UNet weight" "$T/inspect.txt"

# refusals, one line each
refused() { # expected text, command...
    local want=$1
    shift
    if "$@" >"$T/r.out" 2>"$T/r.err"; then
        echo "accepted: $*"
        exit 1
    fi
    grep -q -- "$want" "$T/r.err" || { echo "no '$want' in:"; cat "$T/r.err"; exit 1; }
}
refused "a full fine-tuning checkpoint" "$BOOTH" export "$T/run/checkpoint-2.h5" --format diffusers -o "$T/x.safetensors"
refused "trained on a model with content hash" "$BOOTH" export "$T/run/checkpoint-2.h5" --format model \
    -o "$T/x" --model tests/fixtures/variant/model
refused "trains float32 weights" "$BOOTH" train "${ARGS[@]}" --base-dtype fp16 --output-dir "$T/x"
refused "is not lora or full" "$BOOTH" train "${ARGS[@]}" --train-unet most --output-dir "$T/x"
# a LoRA run cannot resume a full fine-tuning checkpoint (the job differs)
refused "trained with --train-unet full, this run has lora" "$BOOTH" train "${ARGS[@]/full/lora}" --class-data-dir "$T/run/class_images" \
    --resume-from-checkpoint "$T/run/checkpoint-2.h5" --output-dir "$T/y"

# --train-text-encoder: the text encoder trains in full too
"$BOOTH" train "${ARGS[@]}" --class-data-dir "$T/run/class_images" --train-text-encoder --checkpointing-steps 2 \
    --validation-prompt "a sks robot" --num-validation-images 1 --output-dir "$T/te" >"$T/te.out" 2>"$T/te.err" ||
    { cat "$T/te.err"; exit 1; }
grep -q "every UNet and text-encoder weight" "$T/te.err"
grep -q "text_encoder/model.safetensors" "$T/te.out"
test -s "$T/te/validation/step-000004.png"
# only the trained file in text_encoder/: none of the base's weight files beside it
test "$(ls "$T/te/text_encoder" | tr '\n' ' ')" = "config.json model.safetensors "
cmp $MODEL/text_encoder/config.json "$T/te/text_encoder/config.json"
! cmp -s $MODEL/text_encoder/model.safetensors "$T/te/text_encoder/model.safetensors"
cmp $MODEL/vae/diffusion_pytorch_model.safetensors "$T/te/vae/diffusion_pytorch_model.safetensors"
# the UNet trained on prompts the training text encoder embeds: not the frozen-encoder run's
! cmp -s "$T/run/unet/diffusion_pytorch_model.safetensors" "$T/te/unet/diffusion_pytorch_model.safetensors"
"$BOOTH" inspect "$T/te/checkpoint-2.h5" >"$T/te_inspect.txt"
grep -q "every UNet weight and every text-encoder weight" "$T/te_inspect.txt"
# generate loads the trained text encoder: with the run's UNet and the base's text encoder, the
# same prompt draws something else
gen "$T/te" "$T/te.safetensors"
mkdir -p "$T/mixed"
cp -r "$T/te/." "$T/mixed/"
cp $MODEL/text_encoder/model.safetensors "$T/mixed/text_encoder/model.safetensors"
gen "$T/mixed" "$T/mixed.safetensors"
! cmp -s "$T/te.safetensors" "$T/mixed.safetensors"
# resumed from step 2, and the last checkpoint exported: the same text encoder and UNet
mkdir -p "$T/te_resumed"
"$BOOTH" train "${ARGS[@]}" --class-data-dir "$T/run/class_images" --train-text-encoder \
    --resume-from-checkpoint "$T/te/checkpoint-2.h5" --output-dir "$T/te_resumed" >/dev/null 2>"$T/te_resume.err" ||
    { cat "$T/te_resume.err"; exit 1; }
"$BOOTH" export "$T/te/checkpoint-4.h5" --format model -o "$T/te_exported" >/dev/null
for d in te_resumed te_exported; do
    cmp "$T/te/text_encoder/model.safetensors" "$T/$d/text_encoder/model.safetensors"
    cmp "$T/te/unet/diffusion_pytorch_model.safetensors" "$T/$d/unet/diffusion_pytorch_model.safetensors"
done
# a frozen-encoder checkpoint exports the base's text encoder files as they are
cmp $MODEL/text_encoder/model.safetensors "$T/exported/text_encoder/model.safetensors"
