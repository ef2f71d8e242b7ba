#!/usr/bin/env python3
"""Does a world model (booth pretrain) use its captions? Its v-prediction loss on held-out world
pictures with their own captions, with the captions shuffled among the pictures, and with the empty
prompt, at a few timesteps. A model that ignores the caption gives the same loss for all three.

    booth world --out /tmp/w --num 64 --seed 77 --resolution 32
    /opt/venv-eco/bin/python scripts/world_text_probe.py MODEL_DIR /tmp/w

Needs torch, diffusers, transformers and Pillow (a virtualenv outside the repository,
docs/BENCHMARKS.md); booth and its tests never run it. docs/WORLD.md quotes its numbers.
"""
import json
import os
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, world = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    sched = DDIMScheduler.from_pretrained(model, subfolder="scheduler")
    recs = [json.loads(line) for line in open(os.path.join(world, "metadata.jsonl"))]
    pix = [np.asarray(Image.open(os.path.join(world, r["file_name"])).convert("RGB"), dtype=np.float32) for r in recs]
    x0 = torch.from_numpy(np.stack(pix)).permute(0, 3, 1, 2) / 127.5 - 1
    x0 = torch.cat([x0, torch.zeros(len(recs), 1, *x0.shape[2:])], 1)  # the world VAE's 4th channel is 0

    def embed(captions):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return te(ids)[0]

    own = embed([r["text"] for r in recs])
    shuffled = torch.roll(own, 1, 0)
    empty = embed([""] * len(recs))
    g = torch.Generator().manual_seed(0)
    print("t     own caption  shuffled  empty   (v-prediction MSE over %d pictures)" % len(recs))
    for t in (999, 900, 700, 500, 200):
        noise = torch.randn(x0.shape, generator=g)
        a = sched.alphas_cumprod[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        ts = torch.full((len(recs),), t)
        with torch.no_grad():
            loss = [((unet(xt, ts, e).sample - v)[:, :3] ** 2).mean().item() for e in (own, shuffled, empty)]
        print("%-5d %.4f       %.4f    %.4f" % (t, *loss))


if __name__ == "__main__":
    main()
