# help.sh — the small things of a finished command line (issue 14, item 5): `booth help CMD` is
# `booth CMD --help` for every command; usage lines agree with the options; `booth inspect DIR`
# describes a model folder; progress lines end at their total (1/1 for one PNDM step) and say
# "1 step", not "1 steps".
T=$BOOTH_TEST_TMPDIR
MODEL=tests/fixtures/tiny-sd
fail() { echo "$*"; exit 1; }

cmds=$("$BOOTH" --help | awk '/^commands:/ {f = 1; next} f && /^  [a-z]/ {print $1}')
[ "$(echo "$cmds" | wc -l)" -ge 18 ] || fail "too few commands listed: $cmds"
for c in $cmds; do
    "$BOOTH" help "$c" >"$T/a" 2>&1 || fail "booth help $c: exit $?"
    "$BOOTH" "$c" --help >"$T/b" 2>&1 || fail "booth $c --help: exit $?"
    cmp -s "$T/a" "$T/b" || fail "booth help $c differs from booth $c --help"
    grep -q "^usage: booth $c" "$T/a" || fail "booth help $c: no usage line"
done
set +e
"$BOOTH" help nope 2>"$T/err"; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "'nope' is not a booth command" "$T/err" || fail "booth help nope: exit $rc"

# export's usage line names what its options say: --out or -o, peft, and model (a full fine-tuning checkpoint)
"$BOOTH" export --help >"$T/export"
head -1 "$T/export" | grep -q -- "--format diffusers|kohya|peft|model --out|-o PATH" || fail "export usage"

# inspect DIR: architecture, parameters and dtypes per part, the content hash checkpoints record
"$BOOTH" inspect $MODEL >"$T/inspect" || fail "inspect DIR failed"
grep -q "^$MODEL: diffusers model folder" "$T/inspect" || fail "inspect: $(cat "$T/inspect")"
grep -Eq "^  unet +3.2 M parameters, F32, unet/diffusion_pytorch_model.safetensors$" "$T/inspect" ||
    fail "inspect unet: $(cat "$T/inspect")"
grep -q "native 128 px" "$T/inspect" || fail "inspect: no native resolution"
grep -q "^  content hash  6c0ae6dd7f6b7e7f" "$T/inspect" || fail "inspect: $(cat "$T/inspect")"
grep -q '"content_hash":"6c0ae6dd7f6b7e7f"' <<<"$("$BOOTH" inspect $MODEL --json)" || fail "inspect --json"
"$BOOTH" init-model --arch tiny --dtype fp16 --out "$T/half" 2>"$T/init" || fail "init-model failed"
grep -q "\[3/3\] unet: random weights" "$T/init" && grep -q "\[3/3\] done in" "$T/init" || fail "init-model progress"
"$BOOTH" inspect "$T/half" >"$T/half.txt"
grep -Eq "^  unet +3.2 M parameters, F16, unet/diffusion_pytorch_model.fp16.safetensors" "$T/half.txt" ||
    fail "fp16 folder: $("$BOOTH" inspect "$T/half")"

# one PNDM step is one model call: the bar ends at 1/1; singular nouns
"$BOOTH" generate --model $MODEL --prompt x --steps 1 --sampler pndm --width 32 --height 32 --out "$T/g.png" \
    >/dev/null 2>"$T/err" || fail "generate failed"
grep -q "1 image 32x32, pndm, 1 step," "$T/err" || fail "plural: $(cat "$T/err")"
grep -q "^sampling: 1/1 " "$T/err" || fail "the bar: $(cat "$T/err")"
! grep -q "sampling: 1/2" "$T/err" || fail "the bar ends at 1/2"
# three images in batches of two: two sampler runs, the bar ends at its total
"$BOOTH" generate --model $MODEL --prompt x --steps 2 --sampler ddim --width 32 --height 32 --num-images 3 \
    --batch-size 2 --out "$T/g.png" >/dev/null 2>"$T/err" || fail "generate failed"
grep -q "^sampling: 4/4 " "$T/err" || fail "the bar: $(cat "$T/err")"
echo "help.sh: ok"
