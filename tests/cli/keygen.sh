# keygen.sh — `booth keygen --out DIR`: a secret.key only its owner can read (0600) with
# labelled public and secret key lines, a public.key of one Z85 line that matches it,
# no overwrite without --force (files untouched, one error line), --force replaces,
# usage errors exit 2, --help exits 0.
# Run by tests/runner with bash -eu -o pipefail; $BOOTH is the binary, cwd the repo root.
T=$BOOTH_TEST_TMPDIR
D="$T/keys/host1"   # created with its parents

out=$("$BOOTH" keygen --out "$D")
[ -f "$D/secret.key" ] && [ -f "$D/public.key" ] || { echo "keys not written: $(ls -la "$D")"; exit 1; }
[ "$(stat -c %a "$D/secret.key")" = 600 ] || { echo "secret.key mode $(stat -c %a "$D/secret.key")"; exit 1; }
# no temporary file left beside them
[ "$(ls "$D" | wc -l)" -eq 2 ] || { echo "extra files: $(ls "$D")"; exit 1; }

pub=$(cat "$D/public.key")
[ "$(wc -l <"$D/public.key")" -eq 1 ] && [ "${#pub}" -eq 40 ] || { echo "public.key: '$pub'"; exit 1; }
grep -qxF "public-key = $pub" "$D/secret.key" || { echo "secret.key lacks the public key:"; cat "$D/secret.key"; exit 1; }
[ "$(grep -c '^secret-key = .\{40\}$' "$D/secret.key")" -eq 1 ] || { echo "no secret-key line"; exit 1; }
echo "$out" | grep -qxF "public key: $pub" || { echo "stdout does not show the public key: $out"; exit 1; }

# refuses to overwrite: exit 1, one line naming the file, keys unchanged
cp "$D/secret.key" "$T/secret.before"
set +e
"$BOOTH" keygen --out "$D" >"$T/out" 2>"$T/err"; rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "overwrite without --force: exit $rc"; exit 1; }
[ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "$D/secret.key: already exists" "$T/err" || { echo "error:"; cat "$T/err"; exit 1; }
[ ! -s "$T/out" ] || { echo "unexpected stdout:"; cat "$T/out"; exit 1; }
cmp -s "$D/secret.key" "$T/secret.before" || { echo "secret.key changed"; exit 1; }
[ "$(cat "$D/public.key")" = "$pub" ] || { echo "public.key changed"; exit 1; }
# a lone public.key also blocks
mkdir -p "$T/lone"; cp "$D/public.key" "$T/lone/"
set +e
"$BOOTH" keygen --out "$T/lone" >/dev/null 2>"$T/err"; rc=$?
set -e
[ "$rc" -eq 1 ] && grep -q "$T/lone/public.key: already exists" "$T/err" || { echo "lone public.key: exit $rc"; exit 1; }

# --force replaces both with a new pair, still 0600
"$BOOTH" keygen --out "$D" --force >/dev/null
[ "$(cat "$D/public.key")" != "$pub" ] || { echo "--force kept the old key"; exit 1; }
[ "$(stat -c %a "$D/secret.key")" = 600 ] || { echo "secret.key mode after --force"; exit 1; }
grep -qxF "public-key = $(cat "$D/public.key")" "$D/secret.key"

# usage
set +e
"$BOOTH" keygen 2>"$T/err"; rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q -- "--out" "$T/err" || { echo "missing --out: exit $rc"; cat "$T/err"; exit 1; }
set +e
"$BOOTH" keygen --out "$T/x" --bogus 2>/dev/null; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "unknown option: exit $rc"; exit 1; }
"$BOOTH" keygen --help | grep -q '^usage: booth keygen --out DIR'
"$BOOTH" --help | grep -q '^  keygen '
echo "keygen.sh: ok"
