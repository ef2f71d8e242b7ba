#!/usr/bin/env bash
# make_fuzz_corpus_h5.sh BOOTH — writes tests/fuzz/corpus/h5/: small HDF5 files as booth
# writes them (a prior set; a checkpoint cut down to a few tensors with h5py, then sealed
# as booth seals: storage/h5.h), each also unsealed (the seal block zeroed, as a file
# from another tool), whose mutations reach libhdf5. Needs Debian's python3-h5py and
# xxhash (xxh64sum); never needed by `make test` (the output is committed).
set -euo pipefail
B=$(realpath "$1")
cd "$(dirname "$0")/.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
out=tests/fuzz/corpus/h5
rm -rf "$out"
mkdir -p "$out" "$T/inst"
cp "scripts/demo/subject/$(ls scripts/demo/subject | head -1)" "$T/inst/"
M=tests/fixtures/tiny-sd
"$B" priors --model $M --class-prompt "a photo of robot" --num 2 --out "$T/priors.h5" --steps 1 \
    --resolution 16 >/dev/null 2>&1
"$B" train --model $M --instance-data-dir "$T/inst" --instance-prompt "a photo of sks robot" \
    --output-dir "$T/run" --resolution 16 --rank 1 --max-train-steps 1 --checkpointing-steps 1 \
    --with-prior-preservation --class-prompt "a photo of robot" --class-data-dir "$T/priors.h5" \
    --num-class-images 2 --class-inference-steps 1 --train-text-encoder >/dev/null 2>&1

/usr/bin/python3 - "$T/run/checkpoint-1.h5" "$T/small.h5" <<'PY'
import sys
import h5py
src, dst = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "w", userblock_size=512, libver=("v110", "v110"))
for k, v in src.attrs.items():
    dst.attrs[k] = v
keep = sorted(src["lora"].keys())
keep = [n for n in keep if ".to_q." in n][:2] + [n for n in keep if ".q_proj." in n][:2]
def copy_group(name, members=None):
    g = dst.require_group(name)
    for k, v in src[name].attrs.items():
        g.attrs[k] = v
    for m in (members if members is not None else src[name].keys()):
        src.copy(src[name][m], g, name=m)
copy_group("lora", keep)
for sub in ("m", "v"):
    copy_group("optimizer/" + sub, keep)
for k, v in src["optimizer"].attrs.items():
    dst["optimizer"].attrs[k] = v
for name in ("rng", "history", "instance", "prior"):
    if name in src:
        copy_group(name)
dst.close()
PY

seal() { # in out: booth's seal over a file with a 512-byte user block
    local n h
    n=$(stat -c %s "$1")
    h=$(tail -c +513 "$1" | xxh64sum | cut -d' ' -f1)
    { printf 'booth-hdf5-seal 1\nbytes %s\nxxh64 %s\n' "$n" "$h"; } >"$T/hdr"
    head -c 512 /dev/zero >"$T/block"
    dd if="$T/hdr" of="$T/block" conv=notrunc status=none
    cat "$T/block" >"$2"
    tail -c +513 "$1" >>"$2"
}
unseal() { cp "$1" "$2"; dd if=/dev/zero of="$2" bs=512 count=1 conv=notrunc status=none; }

seal "$T/small.h5" "$out/checkpoint_sealed.h5"
unseal "$T/small.h5" "$out/checkpoint_unsealed.h5"
cp "$T/priors.h5" "$out/priors_sealed.h5"
unseal "$T/priors.h5" "$out/priors_unsealed.h5"
"$B" inspect "$out/checkpoint_sealed.h5" >/dev/null
"$B" inspect "$out/priors_sealed.h5" >/dev/null
ls -l "$out"
