#!/usr/bin/env bash
# make demo: the main job end to end on booth's own base model (models/world, trained from scratch by
# `booth pretrain` on the synthetic world; docs/WORLD.md), on a local cluster, in a few minutes on
# 2 cores:
#   1. the model draws the world from its captions (and what the world looks like)
#   2. the subject: a star the world never shows (magenta above, cyan below), four pictures
#   3. a local cluster (coordinator, 1 parameter server, 2 workers, CURVE keys): DreamBooth LoRA on
#      the four pictures, "a sks star", with prior preservation (class "a star", drawn by the
#      workers' prior farm first), followed and fetched
#   4. the subject in new contexts (the LoRA loaded from both export layouts), booth eval's numbers
#      (subject fidelity, the class's pattern rate = language drift, colour diversity), and the
#      last HDF5 checkpoint: what it holds, its images, its LoRA re-exported
#   5. a knob grid: UNet LoRA scale x text-encoder LoRA scale per guidance scale, the subject
#      fading in from a plain star
set -euo pipefail
BOOTH=${1:-build/booth}
MODEL=${DEMO_MODEL:-models/world}
OUT=${DEMO_OUT:-build/demo}
export BOOTH
CLUSTER=$OUT/cluster
trap 'cluster/local stop "$CLUSTER" --timeout 10 >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM
cluster/local stop "$CLUSTER" --timeout 10 >/dev/null 2>&1 || true
rm -rf "$OUT"
mkdir -p "$OUT/images"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
G=(--steps 30 --guidance 1.5 --sampler ddim)

step "1/5 booth's own base model ($MODEL), trained from scratch on the synthetic world"
"$BOOTH" inspect "$MODEL" | head -8
"$BOOTH" world --num 16 --seed 1 --grid --out "$OUT/world" >/dev/null
for p in "a red star on a blue background" "a big yellow heart on a gradient from purple to black" \
    "a small green circle in the top left corner on a white background"; do
    "$BOOTH" generate --model "$MODEL" --prompt "$p" --num-images 4 --seed 1 "${G[@]}" \
        --out "$OUT/images/base-$(echo "$p" | tr ' ' '_' | cut -c1-40).png" 2>/dev/null
done

step "2/5 the subject: a star the world never shows (magenta above, cyan below), 4 pictures"
# shellcheck source=scripts/world_dreambooth_settings.sh
. "$(dirname "$0")/world_dreambooth_settings.sh" # the settings the test holds to its numbers
"$BOOTH" world "${DB_SUBJECT[@]}" --out "$OUT/subject"
"$BOOTH" world --subject --num 4 --seed 0 --grid --out "$OUT/subject-sheet" >/dev/null # not in the photos' folder

step "3/5 a local cluster: coordinator, 1 parameter server, 2 workers (CURVE keys in $CLUSTER/keys)"
cluster/local start "$CLUSTER" --model "$MODEL" --workers 2 --ps 1
CO=(--coordinator "$(cat "$CLUSTER/endpoint")" --keys "$CLUSTER/keys")
"$BOOTH" status "${CO[@]}"

step "   DreamBooth LoRA on the cluster: 'a sks star', prior preservation with 32 'a star' from the farm"
"$BOOTH" submit "${CO[@]}" --wait --model "$MODEL" --instance-data-dir "$OUT/subject" \
    "${DB_TRAIN[@]}" "${DB_PRIORS[@]}" --max-train-steps "$DB_STEPS" \
    --validation-prompt "a sks star on a green background" --validation-steps 500 --num-validation-images 4 \
    --checkpointing-steps 500 --output-dir "$OUT/run"
cluster/local stop "$CLUSTER"
LORA=$OUT/run/pytorch_lora_weights.safetensors

step "4/5 the subject in new contexts, and what booth eval measures"
for p in "a sks star on a green background" "a big sks star on horizontal white and black stripes" \
    "a small sks star in the top left corner on a yellow background"; do
    "$BOOTH" generate --model "$MODEL" --lora "$LORA" --prompt "$p" --num-images 4 --seed 2 "${G[@]}" \
        --out "$OUT/images/subject-$(echo "$p" | tr ' ' '_' | cut -c1-40).png" 2>/dev/null
done
"$BOOTH" generate --model "$MODEL" --lora "$OUT/run/pytorch_lora_weights_kohya.safetensors" --lora-scale-unet 0.8 \
    --prompt "a big sks star on a gradient from yellow to blue" --num-images 4 --seed 2 "${G[@]}" \
    --out "$OUT/images/subject-kohya-gradient.png" 2>/dev/null
"$BOOTH" eval --model "$MODEL" --lora "$LORA" --num 24 "${G[@]}" --grid "$OUT/eval.png" 2>/dev/null
"$BOOTH" inspect "$OUT/run/checkpoint-1000.h5" | sed -n 1,4p
"$BOOTH" inspect "$OUT/run/checkpoint-1000.h5" --contact-sheet "$OUT/checkpoint-images.png"
"$BOOTH" export "$OUT/run/checkpoint-1000.h5" --format kohya -o "$OUT/checkpoint-1000-kohya.safetensors"

step "5/5 a knob grid: UNet LoRA scale x text-encoder LoRA scale, per guidance scale"
"$BOOTH" grid --model "$MODEL" --lora "$LORA" --prompt "a sks star on a green background" \
    --lora-scales-unet 0,0.5,1 --lora-scales-text 0,1 --guidance 1,1.5 --steps 30 --sampler ddim --seed 3 \
    --out "$OUT/grid.png"

step "done: outputs"
cat <<EOT
  the world (16 scenes)   $OUT/world/grid.png
  base model's pictures   $OUT/images/base-*.png
  the subject             $OUT/subject-sheet/grid.png
  cluster logs            $CLUSTER/logs/ (coordinator, ps1, worker1, worker2)
  LoRA (diffusers, kohya) $OUT/run/pytorch_lora_weights.safetensors  $OUT/run/pytorch_lora_weights_kohya.safetensors
  loss log / curve        $OUT/run/loss.csv  $OUT/run/loss.png
  validation grids        $OUT/run/validation/
  the subject, new places $OUT/images/subject-*.png
  checkpoints             $OUT/run/checkpoint-500.h5  $OUT/run/checkpoint-1000.h5 (images: $OUT/checkpoint-images.png)
  eval sheet              $OUT/eval.png
  knob grids              $OUT/grid-cfg1.png  $OUT/grid-cfg1.5.png
EOT
