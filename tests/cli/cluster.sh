# The cluster on loopback (CURVE on): `booth train` in one process == 1 worker == 3 workers, with K = 2
# parameter servers, with and without text-encoder LoRA (LoRA files, checkpoints' tensors and the
# validation grid compared byte for byte), and with full fine-tuning (the model folder's UNet, and its
# text encoder with --train-text-encoder; the workers then give their models back unchanged: the next
# LoRA job is still byte-identical); the prior farm's set == `booth priors`'s and a second job
# reuses it; a worker with another model is refused; an unknown CURVE key gets nothing; cancel stops
# a running job. Every process is stopped at the end, also on failure.
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
OTHER=tests/fixtures/variant/model
SUBJECT=scripts/demo/subject
C=$T/cluster
export BOOTH
trap 'cluster/local stop "$C" --timeout 10 >/dev/null 2>&1 || true' EXIT
set -E
trap 'echo "failed at line $LINENO: $BASH_COMMAND"; tail -15 "$C/logs/coordinator.log" 2>/dev/null' ERR

JOB=(--model $MODEL --instance-prompt "a photo of sks robot" --class-prompt "a photo of robot"
    --with-prior-preservation --num-class-images 3 --class-inference-steps 2 --resolution 64
    --max-train-steps 4 --learning-rate 5e-3 --random-flip --seed 4 --checkpointing-steps 2 --micro-batch-size 1
    --validation-prompt "a sks robot" --validation-steps 4 --num-validation-images 1)

cluster/local start "$C" --workers 1 --ps 2 >/dev/null
CO=(--coordinator "$(cat "$C/endpoint")" --keys "$C/keys")

# one process, on the prior set the farm makes (a file, as the cluster keeps it)
"$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 3 --steps 2 --resolution 64 --seed 4 \
    --out "$T/priors.h5" >/dev/null 2>&1
for te in "" --train-text-encoder; do
    "$BOOTH" train "${JOB[@]}" $te --instance-data-dir $SUBJECT --class-data-dir "$T/priors.h5" \
        --output-dir "$T/single$te" >/dev/null 2>"$T/single.err"
done
"$BOOTH" train "${JOB[@]}" --train-unet full --instance-data-dir $SUBJECT --class-data-dir "$T/priors.h5" \
    --output-dir "$T/single-full" >/dev/null 2>"$T/single.err"
"$BOOTH" train "${JOB[@]}" --train-unet full --train-text-encoder --max-train-steps 2 --instance-data-dir $SUBJECT \
    --class-data-dir "$T/priors.h5" --output-dir "$T/single-fullte" >/dev/null 2>"$T/single.err"

same() { # run-dir-a, run-dir-b: the same LoRA files, checkpoint tensors, validation grid
    local a=$1 b=$2
    cmp "$a/pytorch_lora_weights.safetensors" "$b/pytorch_lora_weights.safetensors"
    cmp "$a/pytorch_lora_weights_kohya.safetensors" "$b/pytorch_lora_weights_kohya.safetensors"
    cmp "$a/validation/step-000004.png" "$b/validation/step-000004.png"
    for ck in checkpoint-2.h5 checkpoint-4.h5; do
        for g in /lora /optimizer/m /optimizer/v; do
            h5dump -g $g "$a/$ck" | tail -n +2 >"$T/a.dump"
            h5dump -g $g "$b/$ck" | tail -n +2 >"$T/b.dump"
            cmp "$T/a.dump" "$T/b.dump" || { echo "$ck $g differs between $a and $b"; exit 1; }
        done
        local at=${ck#checkpoint-}
        test "$(h5dump -a /step "$b/$ck" | grep -c "(0): ${at%.h5}$")" = 1
    done
    cut -d, -f1-6 "$a/loss.csv" >"$T/a.csv"
    cut -d, -f1-6 "$b/loss.csv" >"$T/b.csv"
    cmp "$T/a.csv" "$T/b.csv"
}

submit() { # output-dir, extra flags...
    local out=$1
    shift
    "$BOOTH" submit "${CO[@]}" "${JOB[@]}" --instance-data-dir $SUBJECT --wait --output-dir "$out" "$@" \
        >"$out.out" 2>"$out.err" || { echo "submit failed:"; cat "$out.err"; tail -20 "$C/logs/coordinator.log"; exit 1; }
}

# 1 worker, 2 PS: the farm generates the prior set, then training
submit "$T/w1"
same "$T/single" "$T/w1"
grep -q "prior images to generate" "$C/logs/coordinator.log"

# 3 workers: the same bits, and the prior set is reused, not generated again
cluster/local add-worker "$C" >/dev/null
cluster/local add-worker "$C" >/dev/null
gens=$(grep -c "prior images to generate" "$C/logs/coordinator.log")
submit "$T/w3"
same "$T/single" "$T/w3"
test "$(grep -c "prior images to generate" "$C/logs/coordinator.log")" = "$gens"
grep -q "3 of 3 prior images already in" "$C/logs/coordinator.log"
# the work was spread: more than one worker computed micro-batches; the images were encoded once,
# the other workers took the latents from the job's data file
test "$(grep -l "micro-batch" "$C"/logs/worker*.log | wc -l)" -ge 2
grep -q "latents as stored in data.h5" "$C"/logs/worker*.log

# full fine-tuning: every UNet weight through the parameter servers, the same model folder
submit "$T/w3full" --train-unet full
cmp "$T/single-full/unet/diffusion_pytorch_model.safetensors" "$T/w3full/unet/diffusion_pytorch_model.safetensors"
cmp "$T/single-full/model_index.json" "$T/w3full/model_index.json"
h5dump -g /lora "$T/single-full/checkpoint-2.h5" | tail -n +2 >"$T/a.dump"
h5dump -g /lora "$T/w3full/checkpoint-2.h5" | tail -n +2 >"$T/b.dump"
cmp "$T/a.dump" "$T/b.dump"
# and every text-encoder weight too (2 steps: its token embedding alone is half the UNet's traffic)
submit "$T/w3fullte" --train-unet full --train-text-encoder --max-train-steps 2
for f in unet/diffusion_pytorch_model.safetensors text_encoder/model.safetensors validation/step-000002.png; do
    cmp "$T/single-fullte/$f" "$T/w3fullte/$f"
done

# with text-encoder LoRA, micro-batches of one example (two per step); the workers' models are the
# base again after the full fine-tuning jobs
submit "$T/w3te" --train-text-encoder
same "$T/single--train-text-encoder" "$T/w3te"

# the standalone farm: byte-identical images to `booth priors`
"$BOOTH" priors --model $MODEL --class-prompt "a photo of robot" --num 5 --steps 2 --resolution 64 --seed 9 \
    --out "$T/farm-single.h5" >/dev/null 2>&1
"$BOOTH" submit "${CO[@]}" --priors-only --model $MODEL --class-prompt "a photo of robot" --num 5 --steps 2 \
    --resolution 64 --seed 9 --wait --output-dir "$T/farm" >/dev/null 2>"$T/farm.err"
for d in images latent_mean latent_logvar index; do
    h5dump -d /prior/$d "$T/farm-single.h5" | tail -n +2 >"$T/a.dump"
    h5dump -d /prior/$d "$T/farm/priors.h5" | tail -n +2 >"$T/b.dump"
    cmp "$T/a.dump" "$T/b.dump"
done

# no live worker has the job's model: the job waits, and status says why; cancelled, the queue goes on
id=$("$BOOTH" submit "${CO[@]}" "${JOB[@]/$MODEL/tests/fixtures/variant/model}" --instance-data-dir $SUBJECT | tail -1)
t0=$SECONDS
until "$BOOTH" status "$id" --json "${CO[@]}" | grep -q '"waiting":"for a worker with the job.s model"'; do
    [ $((SECONDS - t0)) -lt 30 ] || { echo "status never said the job waits for a worker"; exit 1; }
    sleep 0.1
done
"$BOOTH" status "$id" --json "${CO[@]}" | grep -q '"state":"queued"'
"$BOOTH" cancel "$id" "${CO[@]}" | grep -q cancelled

# a worker with another base model is refused, on both sides
cluster/local add-worker "$C" --model $OTHER --name other >/dev/null
submit "$T/w4" --max-train-steps 1 --checkpointing-steps 0 --validation-prompt "a sks robot"
grep -q "worker other refused for job" "$C/logs/coordinator.log"
grep -q "this worker's model .* has hash" "$C/logs/other.log"

# a client whose key is not on the allow-list gets nothing
"$BOOTH" keygen --out "$T/stranger" >/dev/null
cp "$C/keys/public.key" "$T/stranger/coordinator.pub"
if "$BOOTH" status --coordinator "$(cat "$C/endpoint")" --keys "$T/stranger" --timeout 2 >"$T/s.out" 2>&1; then
    echo "a stranger's key was answered"; exit 1
fi
grep -q "refused CURVE key" "$C/logs/coordinator.log"

# cancel stops a running job
id=$("$BOOTH" submit "${CO[@]}" "${JOB[@]}" --instance-data-dir $SUBJECT --max-train-steps 100000 | tail -1)
for _ in $(seq 300); do
    "$BOOTH" status "$id" --json "${CO[@]}" | grep -q '"state":"training"' && break
    sleep 0.1
done
"$BOOTH" cancel "$id" "${CO[@]}" | grep -q cancelled
"$BOOTH" status "$id" --json "${CO[@]}" | grep -q '"state":"cancelled"'
# and the cluster goes on serving
submit "$T/w5" --max-train-steps 1 --checkpointing-steps 0 --validation-prompt "a sks robot"

cluster/local stop "$C" --timeout 10
