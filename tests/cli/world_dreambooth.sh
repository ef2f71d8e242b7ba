# world_dreambooth.sh — the whole pipeline learns a subject (issue 15, docs/WORLD.md): on booth's
# shipped world model (models/world), the base model draws the colour and shape its prompts ask for;
# DreamBooth LoRA with prior preservation on four pictures of a star the world never shows (magenta
# above, cyan below) draws it on the asked background ("a sks star on a COLOUR background"), while
# plain "a star" stays an ordinary star in varied colours (pattern rate = the paper's PRES in
# miniature, diversity = DIV); the same run without prior preservation lets the class drift toward
# the subject (language drift, measured here, not assumed). Numbers from `booth eval --json`.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
MODEL=models/world
fail() { echo "$*"; exit 1; }
num() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p" "$2"; }  # a number of an eval --json line
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
check() { # check FILE KEY OP LIMIT: one line naming the number and the limit when it fails
    local v; v=$(num "$2" "$1")
    [ -n "$v" ] || fail "$1: no $2 in $(cat "$1")"
    case $3 in
        ge) ge "$v" "$4" || fail "$2 = $v, expected >= $4 ($(cat "$1"))" ;;
        le) ge "$4" "$v" || fail "$2 = $v, expected <= $4 ($(cat "$1"))" ;;
    esac
}
[ -f "$MODEL/model_index.json" ] || fail "$MODEL: the shipped world model is missing"
G=(--steps 20 --guidance 3 --sampler ddim)

# the base model: colour and shape of 100 held-out captions
"$BOOTH" eval --model "$MODEL" --num 100 "${G[@]}" --json >"$T/base.json" 2>"$T/base.err" ||
    fail "eval: $(cat "$T/base.err")"
check "$T/base.json" colour_accuracy ge 0.8
check "$T/base.json" shape_accuracy ge 0.8

# DreamBooth, with and without prior preservation, the same flags otherwise
"$BOOTH" world --subject --num 4 --resolution 32 --seed 0 --out "$T/subject" >/dev/null
COMMON=(--model "$MODEL" --instance-data-dir "$T/subject" --instance-prompt "a sks star" --resolution 32
    --max-train-steps 200 --learning-rate 1e-3 --rank 8 --train-text-encoder --random-flip --seed 0)
"$BOOTH" train "${COMMON[@]}" --class-prompt "a star" --with-prior-preservation --num-class-images 32 \
    --class-inference-steps 20 --class-guidance 3 --output-dir "$T/priors" >/dev/null 2>"$T/priors.err" ||
    fail "train: $(tail -3 "$T/priors.err")"
"$BOOTH" train "${COMMON[@]}" --output-dir "$T/no-priors" >/dev/null 2>"$T/no-priors.err" ||
    fail "train: $(tail -3 "$T/no-priors.err")"
for run in priors no-priors; do
    "$BOOTH" eval --model "$MODEL" --lora "$T/$run/pytorch_lora_weights.safetensors" --num 32 "${G[@]}" \
        --sets subject,class --json >"$T/$run.json" 2>"$T/$run.eval.err" || fail "eval: $(cat "$T/$run.eval.err")"
done
# with priors: the subject where it is asked for, the class itself elsewhere, in varied colours
check "$T/priors.json" subject_fidelity ge 0.8
check "$T/priors.json" subject_background_accuracy ge 0.8
check "$T/priors.json" class_pattern_rate le 0.1
check "$T/priors.json" class_distinct_colours ge 5
# without: the class drifts toward the subject
check "$T/no-priors.json" class_pattern_rate ge 0.3
p=$(num class_pattern_rate "$T/priors.json") q=$(num class_pattern_rate "$T/no-priors.json")
ge "$q" "$(awk -v p="$p" 'BEGIN { print p + 0.25 }')" || fail "no drift shown: pattern rate $q without priors, $p with"
