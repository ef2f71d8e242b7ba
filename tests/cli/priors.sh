# booth priors: a prior-set file; killed (between images and in the middle of the final
# write) and rerun, it is byte-identical to one uninterrupted run; --num extends it; other
# settings are refused in one line; booth train takes it as its class set and trains exactly
# as on the same class images as PNG files; the model hash is what xxhsum computes.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
P=(--model $MODEL --class-prompt "a photo of robot" --steps 2 --resolution 64 --seed 7)

"$BOOTH" priors --help >"$T/help.txt"
grep -q -- "--class-prompt" "$T/help.txt"
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/full.h5" >"$T/out.txt" 2>"$T/err.txt"
test "$(cat "$T/out.txt")" = "$T/full.h5"
grep -q "generated 5 images" "$T/err.txt"
test ! -e "$T/full.h5.parts"
"$BOOTH" inspect "$T/full.h5" >"$T/inspect.txt"
grep -q '^prior images: 5 at 64x64 px, prompt "a photo of robot", latents \[4, 8, 8\]' "$T/inspect.txt"
grep -q "generated with seed 7, .* 2 steps, guidance 7.5" "$T/inspect.txt"

# a rerun has nothing to do
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/full.h5" >/dev/null 2>"$T/err.txt"
grep -q "generated 0 images" "$T/err.txt"

# killed after two images (the hook stops the writer of the third image's part) ...
BOOTH_TEST_H5_STALL="part-00000002.h5:1" "$BOOTH" priors "${P[@]}" --num 5 --out "$T/cut.h5" >/dev/null 2>"$T/cut.err" &
PID=$!
for _ in $(seq 600); do grep -q "stalled writing" "$T/cut.err" && break; sleep 0.05; done
grep -q "stalled writing" "$T/cut.err"
kill -9 $PID
wait $PID 2>/dev/null || true
test ! -e "$T/cut.h5" && test -f "$T/cut.h5.parts/part-00000001.h5"
# ... then killed in the middle of writing the complete file ...
BOOTH_TEST_H5_STALL="cut.h5:3" "$BOOTH" priors "${P[@]}" --num 5 --out "$T/cut.h5" >/dev/null 2>"$T/cut2.err" &
PID=$!
for _ in $(seq 600); do grep -q "stalled writing" "$T/cut2.err" && break; sleep 0.05; done
grep -q "stalled writing .*cut.h5.tmp.$PID" "$T/cut2.err"
kill -9 $PID
wait $PID 2>/dev/null || true
test ! -e "$T/cut.h5"
# ... and the third run generates nothing twice and writes the same bytes
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/cut.h5" >/dev/null 2>"$T/cut3.err"
grep -q "generated 0 images" "$T/cut3.err"
cmp "$T/full.h5" "$T/cut.h5"
test ! -e "$T/cut.h5.parts" && test ! -e "$T/cut.h5.tmp.$PID"

# killed at a random moment, rerun: the same bytes
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/rand.h5" >/dev/null 2>&1 &
PID=$!
sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
kill -9 $PID 2>/dev/null || true
wait $PID 2>/dev/null || true
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/rand.h5" >/dev/null 2>&1
cmp "$T/full.h5" "$T/rand.h5"

# --num grows the set; the result equals a set made at that size at once
"$BOOTH" priors "${P[@]}" --num 3 --out "$T/grow.h5" >/dev/null 2>&1
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/grow.h5" --base-dtype fp32 >/dev/null 2>"$T/grow.err" # fp32 = exact here
grep -q "generated 2 images" "$T/grow.err"
cmp "$T/full.h5" "$T/grow.h5"

# an interrupted larger run's parts survive a smaller run and serve the next larger one
BOOTH_TEST_H5_STALL="part-00000003.h5:1" "$BOOTH" priors "${P[@]}" --num 5 --out "$T/mix.h5" >/dev/null 2>"$T/mix.err" &
PID=$!
for _ in $(seq 600); do grep -q "stalled writing" "$T/mix.err" && break; sleep 0.05; done
kill -9 $PID
wait $PID 2>/dev/null || true
"$BOOTH" priors "${P[@]}" --num 2 --out "$T/mix.h5" >/dev/null 2>"$T/mix2.err"
grep -q "generated 0 images" "$T/mix2.err"
test -f "$T/mix.h5.parts/part-00000002.h5" && test ! -e "$T/mix.h5.parts/part-00000000.h5"
"$BOOTH" priors "${P[@]}" --num 5 --out "$T/mix.h5" >/dev/null 2>"$T/mix3.err"
grep -q "generated 2 images" "$T/mix3.err"
cmp "$T/full.h5" "$T/mix.h5"
test ! -e "$T/mix.h5.parts"

# other settings on an existing set: one line naming the setting
check_error() { # expected-substring, command...
    local want=$1
    shift
    if "$@" >/dev/null 2>"$T/err"; then echo "expected failure: $*"; exit 1; fi
    test "$(grep -c "error" "$T/err")" = 1 || { echo "not one error line:"; cat "$T/err"; exit 1; }
    grep "error" "$T/err" | grep -q -- "$want" || { echo "the error line lacks '$want':"; cat "$T/err"; exit 1; }
}
check_error "made with --seed 7, this run asks for 8" "$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" \
    --steps 2 --resolution 64 --seed 8 --num 6 --out "$T/full.h5"
check_error "made with --class-prompt \"a photo of robot\"" "$BOOTH" priors --model $MODEL --class-prompt "a dog" \
    --steps 2 --resolution 64 --seed 7 --num 6 --out "$T/full.h5"
# weights rounded to bf16 draw other images: not mixed into a set drawn with the file's weights
check_error "made with --base-dtype (weights) exact, this run asks for bf16" "$BOOTH" priors "${P[@]}" --num 6 \
    --base-dtype bf16 --out "$T/full.h5"
set +e
"$BOOTH" priors "${P[@]}" --num 6 --base-dtype fp8 --out "$T/full.h5" >/dev/null 2>"$T/err"
test $? = 2 || { echo "--base-dtype fp8 is a usage error"; exit 1; }
set -e
grep -q -- "--base-dtype 'fp8': expected auto, fp32, fp16 or bf16" "$T/err"
head -c 3000 "$T/full.h5" >"$T/trunc.h5"
check_error "trunc.h5: truncated" "$BOOTH" priors "${P[@]}" --num 5 --out "$T/trunc.h5"
check_error "trunc.h5: truncated" "$BOOTH" inspect "$T/trunc.h5"

# booth train on the prior set == booth train on the same class images as PNG files
train() { # output-dir, class-data, extra...
    local out=$1 cls=$2
    shift 2
    "$BOOTH" train --model $MODEL --instance-data-dir $SUBJECT --instance-prompt "a photo of sks robot" \
        --class-prompt "a photo of robot" --with-prior-preservation --num-class-images 4 --class-inference-steps 2 \
        --class-data-dir "$cls" --resolution 64 --max-train-steps 3 --learning-rate 5e-3 --random-flip --seed 7 \
        --output-dir "$out" "$@" >/dev/null 2>&1
}
train "$T/png" "$T/png/class_images"
train "$T/h5" "$T/full.h5"
cmp "$T/png/pytorch_lora_weights.safetensors" "$T/h5/pytorch_lora_weights.safetensors"
# a prior set that is too small is completed in place by train, like a folder
"$BOOTH" priors "${P[@]}" --num 2 --out "$T/small.h5" >/dev/null 2>&1
train "$T/h5b" "$T/small.h5" --checkpointing-steps 3
cmp "$T/png/pytorch_lora_weights.safetensors" "$T/h5b/pytorch_lora_weights.safetensors"
"$BOOTH" inspect "$T/small.h5" >"$T/small.txt"
grep -q "^prior images: 4 at" "$T/small.txt"
# the checkpoint took the prior set's images as stored (copied, not recompressed): the same pixels
"$BOOTH" inspect "$T/small.h5" --images "$T/small-imgs" >/dev/null
"$BOOTH" inspect "$T/h5b/checkpoint-3.h5" --images "$T/ck-imgs" >/dev/null
for i in 0 1 2 3; do cmp "$T/small-imgs/prior-0000$i.png" "$T/ck-imgs/prior-0000$i.png"; done
h5dump -H -p -d /prior/images "$T/h5b/checkpoint-3.h5" >"$T/ck-dump.txt"
grep -q "COMPRESSION" "$T/ck-dump.txt" && grep -q "DEFLATE" "$T/ck-dump.txt"

# the base-model hash is the xxhsum of xxhsum's listing of the model's files
if command -v xxhsum >/dev/null; then
    want=$(cd $MODEL && xxhsum -H1 model_index.json scheduler/scheduler_config.json text_encoder/config.json \
        text_encoder/model.safetensors tokenizer/merges.txt tokenizer/special_tokens_map.json \
        tokenizer/tokenizer_config.json tokenizer/vocab.json unet/config.json \
        unet/diffusion_pytorch_model.safetensors vae/config.json vae/diffusion_pytorch_model.safetensors |
        xxhsum -H1 | cut -d' ' -f1)
    grep -q "base model hash $want" "$T/inspect.txt"
else
    echo "xxhsum missing: make deps installs it" >&2
    exit 1
fi
