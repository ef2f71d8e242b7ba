# world_dreambooth.sh — the whole pipeline learns a subject (issue 15, docs/WORLD.md "How well it
# draws"), measured from pixels with booth eval on booth's shipped world model (models/world):
#   the base model draws the colour, shape and background its held-out captions ask for;
#   DreamBooth LoRA with prior preservation on four pictures of a star the world never shows
#   (magenta above, cyan below) draws that star (subject fidelity) on the background each prompt
#   asks for ("a sks star on a COLOUR background"), while plain "a star" keeps the class's own
#   look, in varied colours (the DreamBooth paper's PRES and DIV in miniature);
#   the same run without prior preservation lets the class drift toward the subject (language
#   drift, measured here, not assumed).
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
MODEL=models/world
fail() { echo "$*"; exit 1; }
num() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" "$2"; } # a number of an eval --json line
check() { # check FILE KEY ge|le LIMIT: one line naming the number and the limit when it fails
    local v
    v=$(num "$2" "$1")
    [ -n "$v" ] || fail "$1: no $2 in $(cat "$1")"
    if [ "$3" = ge ]; then
        awk -v a="$v" -v b="$4" 'BEGIN { exit !(a >= b) }' || fail "$2 = $v, expected >= $4: $(cat "$1")"
    else
        awk -v a="$v" -v b="$4" 'BEGIN { exit !(a <= b) }' || fail "$2 = $v, expected <= $4: $(cat "$1")"
    fi
}
[ -f "$MODEL/model_index.json" ] || fail "$MODEL: the shipped world model is missing"
E=(--model "$MODEL" --steps 10 --json)

# At 32 px a second thread does not make a step faster (the work is too small to share), so the
# two halves below run side by side, one thread each: the results do not depend on the count.
export BOOTH_THREADS=1
. scripts/world_dreambooth_settings.sh # the settings make demo and the docs use
"$BOOTH" world "${DB_SUBJECT[@]}" --out "$T/subject" >/dev/null
COMMON=(--model "$MODEL" --instance-data-dir "$T/subject" "${DB_TRAIN[@]}" --max-train-steps "$DB_STEPS")
lora_eval() { # lora_eval RUN: the subject and the class with RUN's LoRA
    "$BOOTH" eval "${E[@]}" --lora "$T/$1/pytorch_lora_weights.safetensors" --num 24 --sets subject,class \
        >"$T/$1.json" 2>"$T/$1.eval.err" || fail "eval: $(cat "$T/$1.eval.err")"
}
# DreamBooth with prior preservation (its class pictures drawn first)
(
    "$BOOTH" train "${COMMON[@]}" "${DB_PRIORS[@]}" --output-dir "$T/priors" >/dev/null 2>"$T/priors.err" ||
        fail "train: $(tail -3 "$T/priors.err")"
    lora_eval priors
) >"$T/priors.out" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# beside it: the same flags without prior preservation, then the base model on 100 held-out captions
(
    "$BOOTH" train "${COMMON[@]}" --output-dir "$T/no-priors" >/dev/null 2>"$T/no-priors.err" ||
        fail "train: $(tail -3 "$T/no-priors.err")"
    lora_eval no-priors
    "$BOOTH" eval "${E[@]}" --num 100 >"$T/base.json" 2>"$T/base.err" || fail "eval: $(cat "$T/base.err")"
) >"$T/no-priors.out" || fail "$(cat "$T/no-priors.out")"
wait $pid || fail "$(cat "$T/priors.out")"
check "$T/base.json" colour_accuracy ge 0.8
check "$T/base.json" shape_accuracy ge 0.8
check "$T/base.json" background_accuracy ge 0.7
# with priors: the subject on the asked background; the class keeps its own look, in varied colours
check "$T/priors.json" subject_fidelity ge 0.8
check "$T/priors.json" subject_background_accuracy ge 0.8
check "$T/priors.json" class_pattern_rate le 0.1
check "$T/priors.json" class_subject_colour_rate le 0.1
check "$T/priors.json" class_distinct_colours ge 5
# without: the class drifts toward the subject, its colours and its pattern
check "$T/no-priors.json" class_subject_colour_rate ge 0.5
check "$T/no-priors.json" class_pattern_rate ge 0.5
for f in base priors no-priors; do echo "$f: $(cat "$T/$f.json")"; done
