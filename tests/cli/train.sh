# booth train -> LoRA files -> generate --lora (both layouts) -> grid, on the oracle's tiny model.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject

# (no pipe into grep -q: it exits at the match, and the long help then dies of SIGPIPE under pipefail)
"$BOOTH" train --help >"$T/help.txt"
grep -q -- "--with-prior-preservation" "$T/help.txt"
"$BOOTH" train --model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" \
    --class-prompt "a photo of robot" --with-prior-preservation --num-class-images 2 \
    --class-inference-steps 3 --resolution 64 --max-train-steps 6 --learning-rate 5e-3 \
    --train-text-encoder --random-flip --checkpointing-steps 3 --validation-prompt "a sks robot" \
    --validation-steps 3 --num-validation-images 2 --seed 4 --output-dir "$T/run" >"$T/out.txt" 2>"$T/err.txt"
for f in pytorch_lora_weights.safetensors pytorch_lora_weights_kohya.safetensors loss.csv loss.png \
    validation/step-000003.png validation/step-000006.png checkpoint-3.h5 checkpoint-6.h5 \
    class_images/class-00000.png class_images/class-00001.png; do
    test -s "$T/run/$f" || { echo "missing $f"; cat "$T/err.txt"; exit 1; }
done
test "$(wc -l <"$T/run/loss.csv")" = 7
head -1 "$T/run/loss.csv" | grep -q "^step,loss,loss_instance,loss_prior,lr,grad_norm,seconds$"

# a second run with the same seed writes the same LoRA bytes; the class images are reused
"$BOOTH" train --model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" \
    --class-prompt "a photo of robot" --with-prior-preservation --num-class-images 2 \
    --class-data-dir "$T/run/class_images" --resolution 64 --max-train-steps 6 --learning-rate 5e-3 \
    --train-text-encoder --random-flip --seed 4 --output-dir "$T/run2" >/dev/null 2>"$T/err2.txt"
cmp "$T/run/pytorch_lora_weights.safetensors" "$T/run2/pytorch_lora_weights.safetensors"
! grep -q "generated" "$T/err2.txt"

# both layouts load into generate and give the same latents (the PNGs differ only in
# their "parameters" text, which names the LoRA file)
gen() { # out-stem, extra args...
    local out=$1
    shift
    "$BOOTH" generate --model $MODEL --prompt "a sks robot in the snow" --steps 3 --sampler ddim --seed 1 \
        --width 64 --height 64 --out "$T/$out.png" --save-latents "$T/$out.safetensors" "$@" >/dev/null 2>&1
}
gen diffusers --lora "$T/run/pytorch_lora_weights.safetensors"
gen kohya --lora "$T/run/pytorch_lora_weights_kohya.safetensors"
cmp "$T/diffusers.safetensors" "$T/kohya.safetensors"
# scale 0 is the base model; scale 1 is not
gen scale0 --lora "$T/run/pytorch_lora_weights.safetensors" --lora-scale-unet 0 --lora-scale-text 0
gen base
cmp "$T/scale0.safetensors" "$T/base.safetensors"
! cmp -s "$T/base.safetensors" "$T/diffusers.safetensors"

"$BOOTH" grid --model $MODEL --lora "$T/run/pytorch_lora_weights.safetensors" --prompt "a sks robot" \
    --lora-scales-unet 0,1 --lora-scales-text 0,1 --guidance 2,5 --steps 2 --width 64 --height 64 \
    --out "$T/grid.png" >"$T/grid.list" 2>/dev/null
test "$(cat "$T/grid.list")" = "$(printf '%s\n%s' "$T/grid-cfg2.png" "$T/grid-cfg5.png")"

# bad input: one line, non-zero exit
check_error() {
    local want=$1
    shift
    if "$@" >/dev/null 2>"$T/err"; then echo "expected failure: $*"; exit 1; fi
    grep -q -- "$want" "$T/err" || { echo "stderr lacks '$want':"; cat "$T/err"; exit 1; }
}
mkdir -p "$T/empty" "$T/bad"
check_error "no JPEG or PNG images" "$BOOTH" train --model $MODEL --instance-data-dir "$T/empty" \
    --instance-prompt x --output-dir "$T/o" --resolution 64 --max-train-steps 1
printf 'not a png' >"$T/bad/broken.png"
check_error "broken.png" "$BOOTH" train --model $MODEL --instance-data-dir "$T/bad" \
    --instance-prompt x --output-dir "$T/o" --resolution 64 --max-train-steps 1
check_error "needs --class-prompt" "$BOOTH" train --model $MODEL --instance-data-dir $SUBJECT \
    --instance-prompt x --output-dir "$T/o" --with-prior-preservation
check_error "not constant" "$BOOTH" train --model $MODEL --instance-data-dir $SUBJECT \
    --instance-prompt x --output-dir "$T/o" --lr-scheduler exponential
head -c 300 "$T/run/pytorch_lora_weights.safetensors" >"$T/trunc.safetensors"
check_error "trunc.safetensors" "$BOOTH" generate --model $MODEL --lora "$T/trunc.safetensors" --prompt x
