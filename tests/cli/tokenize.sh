# tokenize.sh — `booth tokenize`: the --json output for a DreamBooth prompt, the
# human-readable listing, and a one-line error for a missing model folder.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.

model="$BOOTH_TEST_TMPDIR/model"
mkdir -p "$model"
cp -r diffusion/clip_tokenizer "$model/tokenizer"

pad=$(printf ',49407%.0s' $(seq 70))
want="{\"input_ids\":[49406,320,1125,539,48136,1929,49407$pad],\"tokens\":[\"a</w>\",\"photo</w>\",\"of</w>\",\"sks</w>\",\"dog</w>\"]}"

got=$("$BOOTH" tokenize --model "$model" --prompt "a photo of sks dog" --json)
if [ "$got" != "$want" ]; then
    echo "--json output differs:"; echo "got:  $got"; echo "want: $want"; exit 1
fi
# --tokenizer points straight at the folder
got=$("$BOOTH" tokenize --tokenizer diffusion/clip_tokenizer --prompt "a photo of sks dog" --json)
[ "$got" = "$want" ] || { echo "--tokenizer output differs: $got"; exit 1; }

# human-readable: count, fit, one line per piece
out=$("$BOOTH" tokenize --model "$model" --prompt "a photo of sks dog")
echo "$out" | grep -q '^5 tokens (without start/end); fits in 75$' || { echo "bad summary: $out"; exit 1; }
echo "$out" | grep -Eq '^48136 +sks</w>$' || { echo "no sks line: $out"; exit 1; }
[ "$(echo "$out" | wc -l)" -eq 6 ] || { echo "expected 6 lines: $out"; exit 1; }

# truncation warning
long=$(printf 'a %.0s' $(seq 80))
out=$("$BOOTH" tokenize --model "$model" --prompt "$long")
echo "$out" | grep -q '^80 tokens (without start/end); does not fit in 75$' || { echo "bad summary: $out"; exit 1; }
echo "$out" | grep -q '^warning: 5 tokens past the first 75 are cut off' || { echo "no warning: $out"; exit 1; }

# missing model folder: non-zero exit, exactly one line on stderr, nothing on stdout
set +e
"$BOOTH" tokenize --model "$BOOTH_TEST_TMPDIR/no-such-model" --prompt "a dog" >"$BOOTH_TEST_TMPDIR/out" 2>"$BOOTH_TEST_TMPDIR/err"
rc=$?
set -e
[ "$rc" -ne 0 ] || { echo "missing model dir: exit status 0"; exit 1; }
[ "$(wc -l <"$BOOTH_TEST_TMPDIR/err")" -eq 1 ] || { echo "expected one error line:"; cat "$BOOTH_TEST_TMPDIR/err"; exit 1; }
grep -q 'no-such-model/tokenizer' "$BOOTH_TEST_TMPDIR/err" || { echo "error does not name the file:"; cat "$BOOTH_TEST_TMPDIR/err"; exit 1; }
[ ! -s "$BOOTH_TEST_TMPDIR/out" ] || { echo "unexpected stdout:"; cat "$BOOTH_TEST_TMPDIR/out"; exit 1; }

# usage errors exit 2; --help exits 0
set +e
"$BOOTH" tokenize --prompt "a dog" 2>/dev/null; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "missing --model: exit $rc, expected 2"; exit 1; }
"$BOOTH" tokenize --help | grep -q '^usage: booth tokenize'

# a word that splits into several tokens is named; one that stays one token is not
out=$("$BOOTH" tokenize --model "$model" --prompt "a photo of zwx dog")
echo "$out" | grep -q '^note: "zwx" splits into 2 tokens (z + wx): a DreamBooth identifier works best as one token' ||
    { echo "zwx not named: $out"; exit 1; }
! grep -q '^note:' <<<"$("$BOOTH" tokenize --model "$model" --prompt "a photo of sks dog")" || { echo "sks named"; exit 1; }

# rare-tokens: one-token words of 3-4 letters, latest merge first, each with its id and why
out=$("$BOOTH" rare-tokens --model "$model" --count 5)
echo "$out" | head -1 | grep -q "^5 candidates from $model/tokenizer (48894 merges; latest first):$" ||
    { echo "bad rare-tokens header: $out"; exit 1; }
[ "$(echo "$out" | grep -c 'merge [0-9]* of 48894 (the last .*%): one token, not an English word or name$')" -eq 5 ] ||
    { echo "bad rare-tokens lines: $out"; exit 1; }
echo "$out" | grep -Eq '^hta +49384 +merge 48873 of 48894' || { echo "hta (a seed's advice) missing: $out"; exit 1; }
# every candidate is one token, with the id listed; ranks fall down the list
prev=999999
while read -r word id _ rank _; do
    [ "$rank" -lt "$prev" ] || { echo "not latest first: $out"; exit 1; }
    prev=$rank
    "$BOOTH" tokenize --model "$model" --prompt "$word" | grep -Eq "^$id +$word</w>\$" ||
        { echo "$word is not the single token $id"; exit 1; }
done < <(echo "$out" | tail -n +3)
# the built-in vocabulary without --model; sks (the usual advice) is among the candidates, English words are not
all=$("$BOOTH" rare-tokens --count 1000)
grep -Eq '^sks +48136 +merge 47625 of 48894' <<<"$all" || { echo "sks not a candidate"; exit 1; }
! grep -Eq '^(fawn|yawn|kilt|blob|the|dog) ' <<<"$all" || { echo "an English word is a candidate"; exit 1; }
# a transformers-5 folder with tokenizer.json alone
grep -q '^2 candidates .*(1500 merges' <<<"$("$BOOTH" rare-tokens --tokenizer tests/fixtures/ecosystem/tok5 --count 2)"
set +e
"$BOOTH" rare-tokens --count 0 2>"$BOOTH_TEST_TMPDIR/err"; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q -- "--count 0 is outside 1..1000" "$BOOTH_TEST_TMPDIR/err" || { echo "--count 0: exit $rc"; exit 1; }
# --model FILE (a single-file checkpoint): its tokenizer is CLIP's, built into booth
: >"$BOOTH_TEST_TMPDIR/model.safetensors"
"$BOOTH" tokenize --model "$BOOTH_TEST_TMPDIR/model.safetensors" --prompt "a photo of sks dog" >"$BOOTH_TEST_TMPDIR/tok.txt"
grep -q '^5 tokens (without start/end); fits in 75$' "$BOOTH_TEST_TMPDIR/tok.txt"
"$BOOTH" rare-tokens --model "$BOOTH_TEST_TMPDIR/model.safetensors" --count 3 >"$BOOTH_TEST_TMPDIR/rare.txt"
grep -q "from booth's CLIP vocabulary" "$BOOTH_TEST_TMPDIR/rare.txt"
echo "tokenize.sh: ok"

