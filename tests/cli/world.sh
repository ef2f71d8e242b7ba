# world.sh — `booth world`: the folder it writes (PNGs with their captions in the parameters chunk,
# metadata.jsonl in Hugging Face's imagefolder layout, the contact sheet), the same pictures for
# the same seed and index whatever the range, the subject's pictures, --measure (text and --json,
# scored against each PNG's own caption or --prompt), and one-line errors for bad arguments.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
PY=/usr/bin/python3
[ -x $PY ] || PY=python3
fail() { echo "$*"; exit 1; }

"$BOOTH" world --help >"$T/help"
grep -q '^usage: booth world --out DIR' "$T/help" || fail "no usage line"
grep -q -- '--measure' "$T/help" || fail "no --measure in --help"

# a world of 6 pictures at 32 px, with its contact sheet
"$BOOTH" world --out "$T/w" --num 6 --seed 3 --resolution 32 --grid >"$T/out" 2>"$T/err" || fail "world: $(cat "$T/err")"
grep -q "^$T/w: 6 world pictures 32x32 (seed 3, from 0), metadata.jsonl, grid.png$" "$T/out" || fail "summary: $(cat "$T/out")"
for i in 0 1 2 3 4 5; do [ -s "$T/w/0000$i.png" ] || fail "no 0000$i.png"; done
[ -s "$T/w/grid.png" ] || fail "no grid.png"
[ "$(wc -l <"$T/w/metadata.jsonl")" -eq 6 ] || fail "metadata.jsonl: $(cat "$T/w/metadata.jsonl")"
ls "$T/w" | grep -c '\.tmp\.' >"$T/tmpcount" || true
[ "$(cat "$T/tmpcount")" -eq 0 ] || fail "temporary files left: $(ls "$T/w")"
# every line is {"file_name", "text"} naming a file that is there, with a caption of the grammar
$PY - "$T/w" <<'EOF' || fail "metadata.jsonl does not parse"
import json, os, re, sys
d = sys.argv[1]
lines = open(os.path.join(d, "metadata.jsonl")).read().splitlines()
assert len(lines) == 6
for i, line in enumerate(lines):
    rec = json.loads(line)
    assert list(rec) == ["file_name", "text"], rec
    assert rec["file_name"] == "%05d.png" % i, rec
    assert os.path.isfile(os.path.join(d, rec["file_name"]))
    assert re.fullmatch(r"an? (small |big )?\w+ (circle|square|triangle|star|heart)( \w+)* on .*", rec["text"]), rec
EOF

# the same scene for the same (seed, index): a range from 4 gives pictures 4 and 5 again
"$BOOTH" world --out "$T/w2" --num 2 --seed 3 --resolution 32 --start 4 >/dev/null 2>&1
cmp -s "$T/w/00004.png" "$T/w2/00004.png" && cmp -s "$T/w/00005.png" "$T/w2/00005.png" || fail "--start 4 differs"
sed -n 5,6p "$T/w/metadata.jsonl" >"$T/m56"
cmp -s "$T/m56" "$T/w2/metadata.jsonl" || fail "metadata of --start 4 differs"
"$BOOTH" world --out "$T/w3" --num 2 --seed 4 --resolution 32 >/dev/null 2>&1
! cmp -s "$T/w/00000.png" "$T/w3/00000.png" || fail "seeds 3 and 4 gave the same picture"

# --measure: each PNG against its own caption; every attribute of a render is right
"$BOOTH" world --measure "$T"/w/0000?.png >"$T/measure" 2>"$T/err" || fail "measure: $(cat "$T/err")"
[ "$(grep -c '^  prompt ".*": colour ok shape ok background ok$' "$T/measure")" -eq 6 ] || fail "measure: $(cat "$T/measure")"
grep -q '^metrics over 6 pictures with a prompt:$' "$T/measure" || fail "no metrics: $(cat "$T/measure")"
grep -Eq '^  colour accuracy +1.000 \(6 of 6\)$' "$T/measure" || fail "colour accuracy: $(cat "$T/measure")"
"$BOOTH" world --measure --json "$T/w/00000.png" "$T/w/00001.png" >"$T/measure.json" || fail "measure --json"
$PY - "$T/measure.json" "$T/w/metadata.jsonl" <<'EOF' || fail "measure --json: $(cat "$T/measure.json")"
import json, sys
out = json.load(open(sys.argv[1]))
caps = [json.loads(l)["text"] for l in open(sys.argv[2])]
assert len(out["images"]) == 2
for im, cap in zip(out["images"], caps):
    assert im["found"] and im["prompt"] == cap, im
    assert im["colour"] in cap and im["shape"] in cap, im
    assert all(im["ok"].values()) and set(im["ok"]) == {"colour", "shape", "background"}, im
assert out["metrics"]["pictures"] == 2 and out["metrics"]["shape_accuracy"] == 1.0, out
assert out["metrics"]["subject_fidelity"] is None, out
EOF

# the subject's instance pictures: "a sks star ...", found as the subject; --prompt overrides a PNG's own
"$BOOTH" world --out "$T/s" --num 3 --subject >/dev/null 2>&1 || fail "--subject"
grep -q '"text":"a \(big \)\?sks star on an\? [a-z]* background"' "$T/s/metadata.jsonl" || fail "subject captions: $(cat "$T/s/metadata.jsonl")"
"$BOOTH" world --measure "$T"/s/*.png >"$T/smeasure"
[ "$(grep -c '(the subject)$' "$T/smeasure")" -eq 3 ] || fail "subject not found: $(cat "$T/smeasure")"
grep -Eq '^  subject fidelity +1.000 \(3 of 3\)$' "$T/smeasure" || fail "fidelity: $(cat "$T/smeasure")"
"$BOOTH" world --measure --prompt "a star" "$T"/s/*.png "$T"/w/0000?.png >"$T/pmeasure"
grep -Eq '^  pattern rate +0.333 \(3 of 9\)$' "$T/pmeasure" || fail "pattern rate: $(cat "$T/pmeasure")"
grep -q '^  diversity ' "$T/pmeasure" || fail "no diversity: $(cat "$T/pmeasure")"

# bad arguments: exit 2 and one line; a bad picture: exit 1 and one line naming it
bad() { # expected-status pattern args...
    local want=$1 pat=$2 rc
    shift 2
    set +e
    "$BOOTH" world "$@" >"$T/bad.out" 2>"$T/bad.err"
    rc=$?
    set -e
    [ "$rc" -eq "$want" ] || fail "world $*: exit $rc, expected $want"
    [ "$(wc -l <"$T/bad.err")" -eq 1 ] || fail "world $*: not one line: $(cat "$T/bad.err")"
    grep -q -- "$pat" "$T/bad.err" || fail "world $*: '$(cat "$T/bad.err")' does not say $pat"
}
bad 2 "--out is required" --num 3
bad 2 "--resolution 8 is outside" --out "$T/x" --resolution 8
bad 2 "--num 0 is outside" --out "$T/x" --num 0
bad 2 "'abc' is not a valid" --out "$T/x" --seed abc
bad 2 "needs one or more pictures" --measure
bad 2 "--measure reads pictures" --measure --out "$T/x" "$T/w/00000.png"
bad 2 "pictures are for --measure" --out "$T/x" "$T/w/00000.png"
bad 2 "--identifier 'S K' must be" --out "$T/x" --identifier "S K"
printf 'not an image' >"$T/junk.png"
bad 1 "$T/junk.png" --measure "$T/junk.png"
bad 1 "$T/nope.png" --measure "$T/nope.png"
touch "$T/afile"
bad 1 "$T/afile: not a folder" --out "$T/afile"
[ ! -e "$T/x" ] || fail "a refused command made $T/x"
echo "world.sh: ok"
