#!/usr/bin/env python3
"""make_full_grad_oracle.py — the full fine-tuning reference: PyTorch gradients of every UNet
weight (and of the text encoder's, for --train-text-encoder full) for one DreamBooth batch on the
oracle's tiny model, as diffusers' examples/dreambooth/train_dreambooth.py computes them (the
original DreamBooth: no LoRA, every UNet parameter trains).

It writes tests/fixtures/full_grad.safetensors, which tests/unit/test_full_finetune.c checks
booth's full-UNet backward against. `make test` never runs this script: the fixture is committed,
and the C test needs no Python. Run it with a virtualenv holding torch and diffusers:

    /opt/venv-eco/bin/python scripts/make_full_grad_oracle.py

The step: the oracle's DreamBooth batch (tests/fixtures/oracle/dreambooth_unet_lora.safetensors:
prompts "a photo of sks dog" / "a photo of dog", latents and noise [1,4,16,16] each, timesteps
317 and 742) on tests/fixtures/tiny-sd, epsilon prediction, loss = mse(pred[0], noise[0]) +
1.0 * mse(pred[1], noise[1]); the UNet in float32 (P = f32) and float64 (P = f64, the sinusoidal
timestep features and alphas_cumprod in float32 as in the reference itself, attention upcasts off),
with requires_grad on every UNet parameter, then on every text encoder parameter too.

Every gradient tensor is checked, but to keep the fixture small (about 1 MB, not 58) a tensor of
more than S = 256 entries is stored as S entries at fixed flat indices, with its whole norm and
largest magnitude (X = unet or text_encoder; F64 unless noted; scalars [1]):
  f32.loss, f64.loss                the batch's loss (UNet training, text encoder frozen)
  f32.loss_te, f64.loss_te          the loss of the second pass (both train; equal to the first)
  f64.grad.X.<param>                d loss / d param: every entry, or the S sampled ones
  idx.X.<param>                     I64 [S]: the sampled flat indices (absent when every entry is stored)
  f64.gnorm.X.<param>, f64.gmax.X.<param>   the whole gradient's L2 norm and max |g|
Sampled indices: k * numel // S + (k * 7919) % (numel // S) for k in 0..S-1 (spread over the
tensor, every row region hit).
"""
import os
import sys

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "tests/fixtures/tiny-sd")
BATCH = os.path.join(ROOT, "tests/fixtures/oracle/dreambooth_unet_lora.safetensors")
OUT = os.path.join(ROOT, "tests/fixtures/full_grad.safetensors")


def step(dtype, train_text):
    torch.manual_seed(0)
    b = load_file(BATCH)
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder", torch_dtype=torch.float32)
    sched = DDPMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    if dtype == torch.float64:
        for m in unet.modules():
            if hasattr(m, "upcast_attention"):
                m.upcast_attention = False
            if hasattr(m, "upcast_softmax"):
                m.upcast_softmax = False
        unet = unet.double()
        text = text.double()
    unet.train()
    text.train(train_text)
    unet.requires_grad_(True)
    text.requires_grad_(train_text)
    ids = torch.cat([b["instance_input_ids"], b["class_input_ids"]]).long()
    latents = torch.cat([b["instance_latents"], b["class_latents"]]).to(dtype)
    noise = torch.cat([b["instance_noise"], b["class_noise"]]).to(dtype)
    t = torch.cat([b["instance_timesteps"], b["class_timesteps"]]).long()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # CLIP builds its causal mask in the default dtype
    try:
        ehs = text(ids)[0]
    finally:
        torch.set_default_dtype(prev)
    if not train_text:
        ehs = ehs.detach()
    noisy = sched.add_noise(latents, noise, t)
    pred = unet(noisy, t, ehs).sample
    loss = ((pred[0] - noise[0]) ** 2).mean() + 1.0 * ((pred[1] - noise[1]) ** 2).mean()
    loss.backward()
    out = {}
    for name, p in unet.named_parameters():
        assert p.grad is not None, name
        out["grad.unet." + name] = p.grad.detach().clone()
    if train_text:
        for name, p in text.named_parameters():
            if p.grad is None:  # the pooler's projection does not exist in CLIPTextModel; none expected
                print("no gradient:", name, file=sys.stderr)
                continue
            out["grad.text_encoder." + name] = p.grad.detach().clone()
    return loss.detach().reshape(1), out


S = 256


def store(tensors, key, g):
    """key = "X.<param>": the gradient g (float64), whole or sampled."""
    flat = g.reshape(-1)
    n = flat.numel()
    tensors["f64.gnorm." + key] = flat.norm().reshape(1)
    tensors["f64.gmax." + key] = flat.abs().max().reshape(1)
    if n <= S:
        tensors["f64.grad." + key] = flat.clone()
        return
    idx = torch.tensor([k * n // S + (k * 7919) % (n // S) for k in range(S)], dtype=torch.int64)
    tensors["idx." + key] = idx
    tensors["f64.grad." + key] = flat[idx].clone()


def main():
    tensors = {}
    for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
        loss, grads = step(dtype, False)
        tensors[tag + ".loss"] = loss.double() if tag == "f64" else loss
        if tag == "f64":
            for k, v in grads.items():
                store(tensors, k[len("grad."):], v)
        loss_te, grads = step(dtype, True)
        tensors[tag + ".loss_te"] = loss_te.double() if tag == "f64" else loss_te
        if tag == "f64":
            for k, v in grads.items():
                if k.startswith("grad.text_encoder."):
                    store(tensors, k[len("grad."):], v)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, OUT, metadata={"made_by": "scripts/make_full_grad_oracle.py",
                                      "torch": torch.__version__})
    print("wrote", OUT, len(tensors), "tensors; loss f32 %.8f f64 %.8f" %
          (tensors["f32.loss"].item(), tensors["f64.loss"].item()))


if __name__ == "__main__":
    main()
