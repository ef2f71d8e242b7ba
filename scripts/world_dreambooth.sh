#!/usr/bin/env bash
# world_dreambooth.sh MODEL OUT [STEPS] — DreamBooth on a world model (booth pretrain), end to end:
# the subject's pictures (booth world --subject: the magenta-over-cyan star the world never shows),
# a LoRA trained with prior preservation (class "a star", class pictures the model draws) and one
# without, then booth eval of both: subject fidelity on "a sks star on a COLOUR background", the
# pattern rate of plain "a star" (language drift: low with priors, higher without) and its colour
# diversity. Prints both evals; the numbers are docs/WORLD.md's and the test's. The settings are
# world_dreambooth_settings.sh's (STEPS overrides its step count).
set -euo pipefail
MODEL=$1
OUT=$2
BOOTH=${BOOTH:-build/booth}
NUM=${EVAL_NUM:-24}
mkdir -p "$OUT"
# shellcheck source=scripts/world_dreambooth_settings.sh
. "$(dirname "$0")/world_dreambooth_settings.sh"
STEPS=${3:-$DB_STEPS}
"$BOOTH" world "${DB_SUBJECT[@]}" --out "$OUT/subject" >/dev/null
COMMON=(--model "$MODEL" --instance-data-dir "$OUT/subject" "${DB_TRAIN[@]}" --max-train-steps "$STEPS")
"$BOOTH" train "${COMMON[@]}" "${DB_PRIORS[@]}" --output-dir "$OUT/priors" >/dev/null 2>"$OUT/priors.err"
"$BOOTH" train "${COMMON[@]}" --output-dir "$OUT/no-priors" >/dev/null 2>"$OUT/no-priors.err"
for run in priors no-priors; do
    echo "== $run"
    "$BOOTH" eval --model "$MODEL" --lora "$OUT/$run/pytorch_lora_weights.safetensors" --num "$NUM" --steps 10 \
        --sets world,subject,class --grid "$OUT/$run.png" 2>/dev/null
done
