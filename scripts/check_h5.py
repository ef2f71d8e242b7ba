#!/usr/bin/env python3
"""Reads booth's HDF5 files with h5py alone (no booth) and checks docs/FORMAT.md's layout.

    check_h5.py CHECKPOINT.h5 PEFT_LORA.safetensors PRIORS.h5

CHECKPOINT.h5 is a `booth train` checkpoint, PEFT_LORA.safetensors the same
checkpoint exported with `booth export --format peft` (its tensors must equal
the checkpoint's /lora datasets value for value), PRIORS.h5 a `booth priors`
file. Used by tests/cli/storage.sh; needs Debian's python3-h5py and
python3-numpy. Prints one "ok" line, or raises on the first mismatch.
"""
import json
import struct
import sys

import h5py
import numpy as np



def A(obj):
    """An object's attributes, strings as str: booth writes fixed-length UTF-8
    strings (no HDF5 global heap), which h5py returns as bytes."""
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in obj.attrs.items()}

def read_safetensors(path):
    """name -> numpy array, for the F32 tensors booth writes."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b : 8 + n + e], dtype="<f4").reshape(t["shape"])
    return out


def check_images(g, what):
    """An image-set group: shapes agree, per-image index/seed/prompt as documented."""
    img = g["images"]
    assert img.dtype == np.uint8 and img.ndim == 4 and img.shape[3] == 3, (what, img.dtype, img.shape)
    n, h, w, _ = img.shape
    assert img.chunks == (1, h, w, 3) and img.compression == "gzip" and img.fletcher32, (what, img.chunks)
    assert (g["index"][...] == np.arange(n)).all(), what
    mean, logvar = g["latent_mean"], g["latent_logvar"]
    assert mean.dtype == np.float32 and mean.ndim == 4 and mean.shape[0] == n and logvar.shape == mean.shape
    assert mean.shape[2] * 8 == h and mean.shape[3] * 8 == w, (what, mean.shape, img.shape)
    assert np.isfinite(mean[...]).all() and np.isfinite(logvar[...]).all(), what
    prompts = [p.decode() if isinstance(p, bytes) else p for p in g["prompt"][...]]
    assert len(prompts) == n and all(p == A(g)["prompt"] for p in prompts), (what, prompts)
    pixels = img[...]
    assert pixels.std() > 0, what  # real images, not a zero fill
    return n, h


def check_priors_group(g, what):
    n, h = check_images(g, what)
    assert (g["seed"][...] == A(g)["seed"]).all(), what
    for key in ("steps", "guidance", "resolution", "sampler", "base_model_hash", "vae_hash"):
        assert key in A(g), (what, key)
    assert A(g)["resolution"] == h
    return n


def main():
    ckpt_path, lora_path, priors_path = sys.argv[1:4]
    with h5py.File(ckpt_path, "r") as f:
        a = A(f)
        assert a["booth_format"] == "booth-checkpoint" and a["booth_format_version"] == 1, dict(a)
        step = int(a["step"])
        job = json.loads(a["job"])
        assert job["rank"] == a["rank"] and float(np.float32(job["lora_alpha"])) == float(a["alpha"]), job
        assert len(a["base_model_hash"]) == 16 and int(a["base_model_hash"], 16) >= 0
        targets = json.loads(a["targets"])
        assert "to_q" in targets["unet"], targets

        # the LoRA: named like the peft-layout keys, equal to the export value for value
        lora = read_safetensors(lora_path)
        names = list(f["lora"].keys())
        assert names == list(lora.keys()), "creation order of /lora is the export's tensor order"
        for name in names:
            d = f["lora"][name]
            assert d.dtype == np.float32 and d.ndim == 2, (name, d.dtype)
            assert (d[...] == lora[name]).all(), name
            for moment in ("m", "v"):
                assert f["optimizer"][moment][name].shape == d.shape, (moment, name)
            assert (f["optimizer/v"][name][...] >= 0).all(), name
        assert A(f["optimizer"])["type"] == "AdamW" and A(f["optimizer"])["step"] == step
        assert A(f["rng"])["seed"] == job["seed"]

        hist = f["history"]
        assert (hist["step"][...] == np.arange(1, step + 1)).all()
        for col in ("loss", "loss_instance", "loss_prior", "lr", "grad_norm", "seconds"):
            assert hist[col].shape == (step,) and np.isfinite(hist[col][...]).all(), col

        n_inst, _ = check_images(f["instance"], "instance")
        assert "latent_mean_flip" in f["instance"] or not job["random_flip"]
        n_prior = check_priors_group(f["prior"], "checkpoint prior") if job["with_prior_preservation"] else 0

    with h5py.File(priors_path, "r") as f:
        assert A(f)["booth_format"] == "booth-priors" and A(f)["booth_format_version"] == 1
        n_file = check_priors_group(f["prior"], "prior set")

    print(f"h5py {h5py.__version__}: ok: checkpoint step {step}, {len(names)} LoRA tensors equal to the export, "
          f"{n_inst} instance + {n_prior} prior images; prior set of {n_file}")


if __name__ == "__main__":
    main()
