# booth init-model + booth generate, end to end on the tiny architecture.
T=$BOOTH_TEST_TMPDIR
"$BOOTH" init-model --arch tiny --seed 3 --out "$T/model" 2>/dev/null
test -f "$T/model/model_index.json"
"$BOOTH" init-model --help | grep -q -- "--arch"
"$BOOTH" generate --help | grep -q -- "--init-latents"

# two images at a non-square size with every sampler; PNG signature and size checked
for s in ddim euler pndm ddpm; do
    "$BOOTH" generate --model "$T/model" --prompt "a sks dog in the snow" --negative-prompt "blurry" \
        --sampler $s --steps 3 --width 64 --height 48 --num-images 2 --batch-size 2 --seed 5 \
        --out "$T/$s.png" --save-latents "$T/$s.safetensors" >"$T/$s.list" 2>/dev/null
    test "$(wc -l <"$T/$s.list")" = 2
    for f in "$T/$s-0000.png" "$T/$s-0001.png"; do
        test "$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a
        # IHDR width and height, big-endian, at bytes 16..23
        test "$(od -An -tu1 -j16 -N8 "$f" | tr -s ' ')" = " 0 0 0 64 0 0 0 48"
    done
done

# the same seed gives the same image whatever the batch size (PNG bytes identical)
"$BOOTH" generate --model "$T/model" --prompt "a sks dog in the snow" --negative-prompt "blurry" \
    --sampler ddim --steps 3 --width 64 --height 48 --num-images 2 --batch-size 1 --seed 5 \
    --out "$T/b1.png" >/dev/null 2>&1
cmp "$T/ddim-0001.png" "$T/b1-0001.png"

# --init-latents from --save-latents reproduces the run with a deterministic sampler
"$BOOTH" generate --model "$T/model" --prompt "x" --sampler ddim --steps 2 --seed 9 --width 32 --height 32 \
    --out "$T/a.png" --save-latents "$T/a_final.safetensors" >/dev/null 2>&1
"$BOOTH" generate --model "$T/model" --prompt "x" --sampler ddim --steps 2 --width 32 --height 32 \
    --init-latents "$T/a_final.safetensors" --out "$T/from_init.png" >/dev/null 2>&1
test -f "$T/from_init.png"

# bad input: one line on stderr, non-zero exit
check_error() { # expected-substring, command...
    local want=$1
    shift
    if "$@" >/dev/null 2>"$T/err"; then echo "expected failure: $*"; exit 1; fi
    test "$(wc -l <"$T/err")" -le 2
    grep -q -- "$want" "$T/err" || { echo "stderr lacks '$want':"; cat "$T/err"; exit 1; }
}
check_error "model_index.json" "$BOOTH" generate --model "$T/nowhere" --prompt x
check_error "--width 30 is not a multiple of 8" "$BOOTH" generate --model "$T/model" --prompt x --width 30
# limits name the flag, the value and the range, before the model is loaded
check_error "--steps 100000 is outside 1..1000" "$BOOTH" generate --model "$T/nowhere" --prompt x --steps 100000
check_error "--num-images 100000 is outside 1..10000" "$BOOTH" generate --model "$T/nowhere" --prompt x \
    --num-images 100000
check_error "--height 9000 is outside 8..8192" "$BOOTH" generate --model "$T/nowhere" --prompt x --height 9000
check_error "--steps 0 is outside 1..1000" "$BOOTH" grid --model "$T/nowhere" --lora x --prompt x --steps 0
check_error "--num 100000000 is outside 1..100000" "$BOOTH" priors --model "$T/model" --class-prompt x \
    --num 100000000 --out "$T/p.h5"
check_error "over the limit of 256" "$BOOTH" grid --model "$T/nowhere" --lora x --prompt x \
    --lora-scales-unet 1,2,3,4,5,6,7,8,9 --lora-scales-text 1,2,3,4,5,6,7,8,9 --guidance 1,2,3,4
# the output is checked before any sampling: a folder where the PNG would go
mkdir -p "$T/taken.png"
check_error "taken.png: not a regular file (a folder); nothing was drawn" "$BOOTH" generate --model "$T/model" \
    --prompt x --out "$T/taken.png"
check_error "taken.png: not a regular file (a folder)" "$BOOTH" grid --model "$T/model" --lora x --prompt x \
    --out "$T/taken.png"
check_error "not ddim" "$BOOTH" generate --model "$T/model" --prompt x --sampler heun
check_error "unknown option" "$BOOTH" generate --model "$T/model" --prompt x --strength 3
check_error "no tensor named 'latents'" "$BOOTH" generate --model "$T/model" --prompt x \
    --init-latents "$T/model/unet/diffusion_pytorch_model.safetensors"
head -c 1000 "$T/model/unet/diffusion_pytorch_model.safetensors" >"$T/trunc.safetensors"
mkdir -p "$T/broken/unet"
cp -r "$T/model/"* "$T/broken/"
cp "$T/trunc.safetensors" "$T/broken/unet/diffusion_pytorch_model.safetensors"
check_error "diffusion_pytorch_model.safetensors" "$BOOTH" generate --model "$T/broken" --prompt x
check_error "not tiny, sd15 or sd21" "$BOOTH" init-model --arch sdxl --out "$T/x"

# without --model: $BOOTH_MODEL, else models/world beside the binary's folder; a line says which
BOOTH_MODEL=$T/model "$BOOTH" generate --prompt "x" --steps 2 --width 32 --height 32 --seed 9 \
    --out "$T/env.png" >/dev/null 2>"$T/env.err"
grep -q "model $T/model (the default, from \$BOOTH_MODEL" "$T/env.err"
"$BOOTH" generate --model "$T/model" --prompt "x" --steps 2 --width 32 --height 32 --seed 9 \
    --out "$T/given.png" >/dev/null 2>&1
cmp "$T/env.png" "$T/given.png"
! BOOTH_MODEL=$T/none "$BOOTH" generate --prompt "x" --out "$T/none.png" >/dev/null 2>"$T/none.err"
grep -q "^booth generate: --model not given, and \$BOOTH_MODEL ($T/none) is not a diffusers model folder$" "$T/none.err"
[ ! -e "$T/none.png" ]
mkdir -p "$T/inst/bin" "$T/inst/models"
cp "$BOOTH" "$T/inst/bin/booth"
ln -s "$T/model" "$T/inst/models/world"
BOOTH_MODEL='' "$T/inst/bin/booth" generate --prompt "x" --steps 2 --width 32 --height 32 --seed 9 \
    --out "$T/beside.png" >/dev/null 2>"$T/beside.err"
grep -q "^booth generate: model $T/model (the default; --model to choose)$" "$T/beside.err"
cmp "$T/beside.png" "$T/given.png"
