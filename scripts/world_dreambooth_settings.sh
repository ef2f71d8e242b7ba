# shellcheck shell=bash
# world_dreambooth_settings.sh — sourced, not run: the DreamBooth settings that teach the world
# model (models/world) its subject, found in issue 15's search (docs/WORLD.md "DreamBooth"): the
# one source for make demo (scripts/demo.sh), the docs' grids (scripts/world_dreambooth.sh) and
# the test that holds them to their numbers (tests/cli/world_dreambooth.sh).
#   DB_SUBJECT  the four subject pictures: `booth world` flags
#   DB_TRAIN    the LoRA run, for `booth train` and `booth submit` (steps apart: DB_STEPS)
#   DB_PRIORS   prior preservation on the class "a star", its 32 pictures drawn by the model first
# shellcheck disable=SC2034  # the arrays are for the scripts that source this
DB_SUBJECT=(--subject --num 4 --resolution 32 --seed 0)
DB_STEPS=1000
DB_TRAIN=(--instance-prompt "a sks star" --resolution 32 --learning-rate 1e-3 --rank 8 --train-text-encoder
    --random-flip --seed 0)
DB_PRIORS=(--class-prompt "a star" --with-prior-preservation --prior-loss-weight 0.5 --num-class-images 32
    --class-inference-steps 10 --class-guidance 1.5)
