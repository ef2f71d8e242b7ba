# Inputs a careless or hostile user gives the command line, each answered in one line (and nothing
# lost): a FIFO named like an image in the instance folder is skipped, not read forever; an output
# path that is a FIFO or a device is refused, never replaced; out-of-range optimizer settings and
# prompts that are not UTF-8 are refused before any work; a final validation grid that cannot be
# written does not cost the trained LoRA.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
SUBJECT=scripts/demo/subject
one_error() { # expected-substring, command...: fails, with exactly one error line naming the cause
    local want=$1
    shift
    if "$@" >"$T/out" 2>"$T/err"; then echo "expected failure: $*"; exit 1; fi
    test "$(grep -ci "error\|booth [a-z-]*: " "$T/err")" -ge 1 || { echo "no error line:"; cat "$T/err"; exit 1; }
    grep -q -- "$want" "$T/err" || { echo "the error lacks '$want':"; cat "$T/err"; exit 1; }
}
TRAIN=(--model $MODEL --instance-prompt "a photo of sks robot" --resolution 64 --max-train-steps 2
    --learning-rate 5e-3 --seed 1)

# a FIFO among the photos: skipped with a warning, training goes on (a read would block forever)
mkdir -p "$T/photos"
cp $SUBJECT/* "$T/photos/"
mkfifo "$T/photos/zz-fifo.png"
timeout 120 "$BOOTH" train "${TRAIN[@]}" --instance-data-dir "$T/photos" --output-dir "$T/fifo-run" >/dev/null 2>"$T/err"
grep -q "zz-fifo.png: not a regular file; skipped" "$T/err"
test -s "$T/fifo-run/pytorch_lora_weights.safetensors"

# an output that is a FIFO (or a device): refused, left as it was
mkfifo "$T/out.png" "$T/out.h5"
one_error "not a regular file" timeout 60 "$BOOTH" generate --model $MODEL --prompt "a robot" --steps 2 \
    --width 64 --height 64 --out "$T/out.png"
test -p "$T/out.png"
one_error "not a regular file" timeout 60 "$BOOTH" priors --model $MODEL --class-prompt "a robot" --num 1 --steps 2 \
    --resolution 64 --out "$T/out.h5"
test -p "$T/out.h5"

# settings that would train on without a word
one_error "--adam-beta1 1.5 is outside" "$BOOTH" train "${TRAIN[@]}" --instance-data-dir $SUBJECT \
    --output-dir "$T/x" --adam-beta1 1.5
one_error "--snr-gamma -1 is outside" "$BOOTH" train "${TRAIN[@]}" --instance-data-dir $SUBJECT \
    --output-dir "$T/x" --snr-gamma -1
one_error "--learning-rate .nan. is not a valid number" "$BOOTH" train "${TRAIN[@]}" --instance-data-dir $SUBJECT \
    --output-dir "$T/x" --learning-rate nan
test ! -e "$T/x/loss.csv"

# prompts that are not UTF-8: refused up front (they would reach PNG text and checkpoint JSON)
bad=$(printf 'a photo of \xff\xfe robot')
one_error "--instance-prompt is not valid UTF-8" "$BOOTH" train --model $MODEL --instance-prompt "$bad" \
    --instance-data-dir $SUBJECT --output-dir "$T/x"
one_error "--prompt is not valid UTF-8" "$BOOTH" generate --model $MODEL --prompt "$bad" --out "$T/g.png"
one_error "--prompt is not valid UTF-8" "$BOOTH" generate --model $MODEL --prompt "$(printf 'x\xed\xa0\x80')" \
    --out "$T/g.png" # a UTF-16 surrogate
"$BOOTH" generate --model $MODEL --prompt "ein Roboter im Schnee, 雪の中のロボット" --steps 2 --width 64 \
    --height 64 --out "$T/utf8.png" >/dev/null 2>&1

# the last validation grid cannot be written: the LoRA is there all the same, and the error says so
mkdir -p "$T/blocked"
touch "$T/blocked/validation" # a file where the grid's folder would go
one_error "the LoRA files are written" "$BOOTH" train "${TRAIN[@]}" --instance-data-dir $SUBJECT \
    --output-dir "$T/blocked" --validation-prompt "a sks robot" --num-validation-images 1
test -s "$T/blocked/pytorch_lora_weights.safetensors"
test -s "$T/blocked/pytorch_lora_weights_kohya.safetensors"

# prompt buffers take their length from the model: a tokenizer of 64 tokens works end to end (with a
# constant 77 the text embeddings had 13 rows never written); one of 100 tokens with a text encoder
# of 77 positions is refused at load, naming both
cp -rL $MODEL "$T/short"
sed -i 's/"model_max_length": 77/"model_max_length": 64/' "$T/short/tokenizer/tokenizer_config.json"
grep -q '"model_max_length": 64' "$T/short/tokenizer/tokenizer_config.json"
"$BOOTH" generate --model "$T/short" --prompt "a robot" --steps 2 --width 64 --height 64 --out "$T/short.png" \
    >/dev/null 2>&1
"$BOOTH" train "${TRAIN[@]/$MODEL/$T/short}" --instance-data-dir $SUBJECT --output-dir "$T/short-run" >/dev/null 2>&1
test -s "$T/short-run/pytorch_lora_weights.safetensors"
cp -rL $MODEL "$T/long"
sed -i 's/"model_max_length": 77/"model_max_length": 100/' "$T/long/tokenizer/tokenizer_config.json"
one_error "prompts of 100 tokens (model_max_length), the text encoder has 77 positions" "$BOOTH" generate \
    --model "$T/long" --prompt "a robot" --out "$T/long.png"

# a model whose UNet declares an absurd sample_size: refused at load, naming the field (it used to
# size a 160 GB buffer without a word)
cp -rL $MODEL "$T/huge"
sed -i 's/"sample_size": [0-9]*/"sample_size": 100000/' "$T/huge/unet/config.json"
grep -q '"sample_size": 100000' "$T/huge/unet/config.json"
one_error "'sample_size' is 100000" "$BOOTH" generate --model "$T/huge" --prompt "a robot" --out "$T/huge.png"

# SIGTERM (or Ctrl-C) to booth train: it stops after the step, writes a checkpoint, says how to go on,
# exits 130; going on gives the bytes of a run that was never stopped
LONG=(--model $MODEL --instance-prompt "a photo of sks robot" --resolution 64 --max-train-steps 300
    --learning-rate 5e-3 --seed 1) # long enough to be stopped
"$BOOTH" train "${LONG[@]}" --instance-data-dir $SUBJECT --output-dir "$T/stopped" >/dev/null 2>"$T/stop.err" &
pid=$!
t0=$SECONDS
until [ "$(wc -l <"$T/stopped/loss.csv" 2>/dev/null || echo 0)" -ge 4 ]; do
    [ $((SECONDS - t0)) -lt 60 ] || { echo "training did not start"; kill $pid; exit 1; }
    sleep 0.02
done
kill -TERM $pid
st=0
wait $pid || st=$?
test $st = 130 || { echo "exit status $st"; cat "$T/stop.err"; exit 1; }
grep -q "stopped at step [0-9]* of 300; the state is in .*checkpoint-[0-9]*.h5: the same command with --resume-from-checkpoint latest" "$T/stop.err"
ls "$T/stopped"/checkpoint-*.h5 >/dev/null
"$BOOTH" train "${LONG[@]}" --instance-data-dir $SUBJECT --output-dir "$T/stopped" --resume-from-checkpoint latest \
    >/dev/null 2>&1
"$BOOTH" train "${LONG[@]}" --instance-data-dir $SUBJECT --output-dir "$T/straight" >/dev/null 2>&1
cmp "$T/stopped/pytorch_lora_weights.safetensors" "$T/straight/pytorch_lora_weights.safetensors"

# diffusers' flag spellings work as they are pasted, and each range error names its flag, value and range
"$BOOTH" train --pretrained_model_name_or_path $MODEL --instance_data_dir $SUBJECT \
    --instance_prompt "a photo of sks robot" --resolution 64 --max_train_steps 1 --learning_rate 5e-3 \
    --output_dir "$T/underscores" >/dev/null 2>&1
test -s "$T/underscores/pytorch_lora_weights.safetensors"
one_error "--rank 0 is outside 1..1024" "$BOOTH" train "${TRAIN[@]}" --instance-data-dir $SUBJECT --output-dir "$T/x" \
    --rank 0
one_error "--train-batch-size 0 is outside 1..128" "$BOOTH" train "${TRAIN[@]}" --instance-data-dir $SUBJECT \
    --output-dir "$T/x" --train_batch_size 0
one_error "--resolution 7 is outside 8..4096" "$BOOTH" train "${TRAIN[@]/64/7}" --instance-data-dir $SUBJECT \
    --output-dir "$T/x"
one_error "--resolution 100 is not a multiple of 8" "$BOOTH" train "${TRAIN[@]/64/100}" --instance-data-dir $SUBJECT \
    --output-dir "$T/x"

# --prediction-type: for a single-file --model only (a folder's scheduler config says it), epsilon or
# v_prediction, never a job setting on a cluster; refused before any model is loaded
one_error "--prediction-type is for a single-file --model" "$BOOTH" generate --model $MODEL --prompt x \
    --prediction-type epsilon --out "$T/p.png"
one_error "--prediction-type 'sample': expected epsilon or v_prediction" "$BOOTH" generate \
    --model "$T/m.safetensors" --prompt x --prediction-type sample --out "$T/p.png"
one_error "--prediction-type is not a job setting on a cluster" "$BOOTH" submit --coordinator tcp://127.0.0.1:1 \
    --model $MODEL --instance-data-dir $SUBJECT --instance-prompt x --prediction-type epsilon
for cmd in generate grid priors train worker lora-grad; do
    "$BOOTH" $cmd --help >"$T/help.txt"
    grep -q -- "--prediction-type" "$T/help.txt" || { echo "$cmd --help lacks --prediction-type"; exit 1; }
done

# a job file (or a Submit from the network) is held to the ranges of booth train's flags: sizes a
# worker or PS allocates by are bounded before anything is
printf '{"pretrained_model_name_or_path": "%s", "instance_data_dir": "%s", "instance_prompt": "a sks robot", "rank": 1000000000}' \
    "$MODEL" "$SUBJECT" >"$T/job.json"
one_error "job field 'rank' is 1e+09, must be in \[1, 1024\]" "$BOOTH" submit --coordinator tcp://127.0.0.1:1 \
    --insecure --job "$T/job.json"
printf '{"pretrained_model_name_or_path": "%s", "instance_data_dir": "%s", "instance_prompt": "a sks robot", "resolution": 100}' \
    "$MODEL" "$SUBJECT" >"$T/job.json"
one_error "job field 'resolution' is 100, not a multiple of 8" "$BOOTH" submit --coordinator tcp://127.0.0.1:1 \
    --insecure --job "$T/job.json"
