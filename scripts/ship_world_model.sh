#!/usr/bin/env bash
# ship_world_model.sh RUN_DIR STEPS — models/world from a `booth pretrain` run (docs/WORLD.md, "The
# shipped model"): copies the run's folder, state and loss log aside, resumes that copy to STEPS
# (the step its state is at, or later: it trains on) with --fp16, so the folder is the run's EMA
# weights in fp16, and puts it at models/world; then the model card's pictures: the loss curve
# (docs/world-loss.png) and a sheet of samples (docs/world-samples.png), and booth eval's numbers
# on 100 held-out captions. The run itself is left as it was, to go on.
#   scripts/ship_world_model.sh /work/pretrain/world 8000
set -euo pipefail
RUN=${1:?usage: ship_world_model.sh RUN_DIR STEPS}
STEPS=${2:?usage: ship_world_model.sh RUN_DIR STEPS}
BOOTH=${BOOTH:-build/booth}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cp -r "$RUN" "$T/world"
cp "$RUN.state.safetensors" "$RUN.loss.csv" "$T/"
"$BOOTH" pretrain --model "$T/world" --steps "$STEPS" --batch-size 32 --seed 0 --world-seed 0 --fp16
mkdir -p models
rm -rf models/world.new
cp -r "$T/world" models/world.new
cat >models/world.new/README.md <<EOT
# booth's world model

A Stable Diffusion model in the diffusers layout, trained from scratch by booth on its synthetic
world of coloured shapes (fp16). How it was made, what it draws and how well: docs/WORLD.md.
Rebuilt by (code of commit $(git rev-parse --short HEAD)):

    booth pretrain --model models/world --steps $STEPS --batch-size 32 --seed 0 --world-seed 0 --fp16
EOT
rm -rf models/world
mv models/world.new models/world
cp "$T/world.loss.png" docs/world-loss.png
"$BOOTH" eval --model models/world --num 8 --steps 20 --sets world --grid docs/world-samples.png >/dev/null
"$BOOTH" eval --model models/world --num 100 --steps 20
du -sh models/world
