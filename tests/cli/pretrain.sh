# booth pretrain: a new world model folder that every command loads; the same flags give the same
# bytes, also when the run stops and resumes from its state; another run's state is refused; the
# last write in fp16 halves the files.
T=$BOOTH_TEST_TMPDIR
P=(--resolution 16 --batch-size 2 --warmup 1 --learning-rate 1e-3 --seed 3 --world-seed 5)

"$BOOTH" pretrain --help >"$T/help.txt"
grep -q -- "--world-seed" "$T/help.txt"

"$BOOTH" pretrain --model "$T/a" "${P[@]}" --steps 4 --save-every 2 >"$T/a.out" 2>"$T/a.err" || { cat "$T/a.err"; exit 1; }
for f in model_index.json unet/config.json unet/diffusion_pytorch_model.safetensors text_encoder/config.json \
    text_encoder/model.safetensors vae/config.json vae/diffusion_pytorch_model.safetensors tokenizer/vocab.json \
    tokenizer/merges.txt scheduler/scheduler_config.json; do
    test -s "$T/a/$f" || { echo "missing $f"; cat "$T/a.err"; exit 1; }
done
test -s "$T/a.state.safetensors"
test -s "$T/a.loss.png"
test "$(wc -l <"$T/a.loss.csv")" = 5
head -1 "$T/a.loss.csv" | grep -q "^step,loss,lr,grad_norm,seconds$"

# a model like any other: generate draws from it at its resolution
"$BOOTH" generate --model "$T/a" --prompt "a red star on a blue background" --width 16 --height 16 --steps 3 \
    --seed 1 --out "$T/g.png" >/dev/null 2>"$T/g.err" || { cat "$T/g.err"; exit 1; }
# (its VAE does not downsample: a 16 px picture from 16 x 16 latents; PNG width and height at byte 16)
test "$(od -An -tu1 -j16 -N8 "$T/g.png" | tr -s ' ')" = " 0 0 0 16 0 0 0 16"
# and so do priors (latents [4, 16, 16] for 16 px images)
"$BOOTH" priors --model "$T/a" --class-prompt "a star" --num 2 --steps 2 --resolution 16 --out "$T/p.h5" \
    >/dev/null 2>"$T/p.err" || { cat "$T/p.err"; exit 1; }
"$BOOTH" inspect "$T/p.h5" >"$T/p.txt"
grep -q "latents \[4, 16, 16\]" "$T/p.txt"

# stopped after 2 steps, resumed to 4: the same bytes as the run that never stopped
"$BOOTH" pretrain --model "$T/b" "${P[@]}" --steps 2 >/dev/null 2>&1
"$BOOTH" pretrain --model "$T/b" "${P[@]}" --steps 4 --save-every 2 >/dev/null 2>"$T/b.err"
grep -q "resumed from" "$T/b.err"
cmp "$T/a/unet/diffusion_pytorch_model.safetensors" "$T/b/unet/diffusion_pytorch_model.safetensors"
cmp "$T/a.state.safetensors" "$T/b.state.safetensors"
cut -d, -f1-4 "$T/a.loss.csv" >"$T/a.csv"
cut -d, -f1-4 "$T/b.loss.csv" >"$T/b.csv"
cmp "$T/a.csv" "$T/b.csv"

# another run's state is refused in one line; so are bad flags
if "$BOOTH" pretrain --model "$T/b" "${P[@]/--batch-size 2/}" --batch-size 3 --steps 6 >/dev/null 2>"$T/c.err"; then
    echo "resumed a state with another batch size"
    exit 1
fi
grep -q "a run with other settings" "$T/c.err"
if "$BOOTH" pretrain --model "$T/x" --resolution 20 >/dev/null 2>"$T/d.err"; then exit 1; fi
grep -q "not a multiple of 8" "$T/d.err"
if "$BOOTH" pretrain --model tests/fixtures/tiny-sd --steps 1 --state "$T/t.state" >/dev/null 2>"$T/e.err"; then exit 1; fi
grep -q "not a world model" "$T/e.err"

# --fp16: the last write in half precision, the same numbers rounded
"$BOOTH" pretrain --model "$T/b" "${P[@]}" --steps 5 --save-every 0 --fp16 >/dev/null 2>&1
a=$(stat -c %s "$T/a/unet/diffusion_pytorch_model.safetensors")
b=$(stat -c %s "$T/b/unet/diffusion_pytorch_model.safetensors")
[ $((b * 2)) -lt $((a + 65536)) ] && [ $((b * 2)) -gt $((a - 65536)) ] || { echo "fp16 folder $b vs fp32 $a bytes"; exit 1; }
"$BOOTH" generate --model "$T/b" --prompt "a star" --width 16 --height 16 --steps 2 --out "$T/h.png" >/dev/null 2>&1

# booth eval measures what a world model draws (the numbers of an untrained model mean nothing: the
# metrics' test is on the shipped model); every metric is there, and a bad set is refused
"$BOOTH" eval --model "$T/a" --num 2 --steps 2 --sets world,subject,class --json >"$T/eval.json" 2>"$T/eval.err" ||
    { cat "$T/eval.err"; exit 1; }
for k in colour_accuracy shape_accuracy background_accuracy subject_fidelity class_pattern_rate \
    class_distinct_colours '"num": 2'; do
    grep -q "$k" "$T/eval.json" || { echo "no $k in:"; cat "$T/eval.json"; exit 1; }
done
if "$BOOTH" eval --model "$T/a" --sets world,dogs >/dev/null 2>"$T/eval.err"; then exit 1; fi
grep -q "expected world, subject or class" "$T/eval.err"

# DreamBooth on a world model: the subject's pictures from `booth world --subject`, prior
# preservation with class images the model draws, a validation grid at the model's own scale, and
# the LoRA back into eval
"$BOOTH" world --subject --num 2 --resolution 16 --seed 1 --out "$T/subject" >/dev/null 2>&1
"$BOOTH" train --model "$T/a" --instance-data-dir "$T/subject" --instance-prompt "a sks star" \
    --class-prompt "a star" --with-prior-preservation --num-class-images 2 --class-inference-steps 2 \
    --resolution 16 --max-train-steps 2 --validation-prompt "a sks star" --num-validation-images 1 \
    --output-dir "$T/db" >/dev/null 2>"$T/db.err" || { cat "$T/db.err"; exit 1; }
test -s "$T/db/validation/step-000002.png"
test "$(od -An -tu1 -j16 -N8 "$T/db/class_images/class-00000.png" | tr -s ' ')" = " 0 0 0 16 0 0 0 16"
"$BOOTH" eval --model "$T/a" --lora "$T/db/pytorch_lora_weights.safetensors" --num 1 --steps 2 --json \
    >"$T/eval2.json" 2>/dev/null
grep -q subject_fidelity "$T/eval2.json"
