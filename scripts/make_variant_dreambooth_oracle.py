#!/usr/bin/env python3
"""make_variant_dreambooth_oracle.py — a DreamBooth+LoRA training step on the variant model
(tests/fixtures/variant/model, made by scripts/make_variant_oracle.py), computed by the real
diffusers + transformers + peft exactly as diffusers' examples/dreambooth/train_dreambooth_lora.py
does it, so booth's loss, LoRA gradients and AdamW step are checked on an SD 2.x-style,
v-prediction configuration too (the oracle's dreambooth_* fixtures cover SD 1.x / epsilon).

It writes
    tests/fixtures/variant/dreambooth.safetensors        the batch + reference step (also a
                                                         valid `booth lora-grad --batch` file)
    tests/fixtures/variant/dreambooth_lora.safetensors   the LoRA the step starts from (peft layout)
which tests/unit/test_variant_dreambooth.c checks booth against. `make test` never runs this
script: the fixtures are committed, and the C test needs no Python.

What the step is (train_dreambooth_lora.py with --with_prior_preservation
--prior_loss_weight 0.5 --train_text_encoder --rank 4, one step, batch [instance, class]):
  model     the variant folder as stored: UNet from unet/diffusion_pytorch_model.fp16.safetensors
            (variant="fp16") and the fp16 text encoder, both loaded with torch_dtype float32
            (fp16 values widened exactly); frozen (requires_grad_(False)).
  LoRA      peft, attached as the training script does:
              unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                  target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
              text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                  target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
            (the script's UNet list also names add_k_proj/add_v_proj, which this UNet does not
            have; the script uses lora_alpha = rank — here alpha 8 != rank 4, so the scale
            alpha/rank = 2 is exercised). Every LoRA matrix then gets seeded random values,
            B included (A ~ N(0, 0.25^2), B ~ N(0, 0.05^2)), so every gradient is non-zero.
            That includes attn1 of the only_cross_attention blocks (to_k/to_v [24, 48]) and
            the 2-transformer-layer blocks.
  batch     [instance, class]: prompts "a photo of sks robot" / "a photo of robot", tokenized
            by the variant's tokenizer (pad "!" = id 0, padding="max_length", 77);
            latents and noise N(0,1) of shape [1,4,6,10] each (non-square; 6x10 is not a
            multiple of the UNet's downsampling 4, so the up path interpolates to 3x5 / 6x10);
            timesteps 123 (instance) and 876 (class).
  step      noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
            (prediction_type v_prediction from the DDIM config);
            ehs = text_encoder(input_ids)[0] (no attention mask, as the script by default);
            noisy = add_noise(latents, noise, t); target = get_velocity(latents, noise, t)
            = sqrt(a_t) noise - sqrt(1 - a_t) latents; pred = unet(noisy, t, ehs).sample;
            loss = mse(pred[0], target[0]) + 0.5 * mse(pred[1], target[1]) (means over 4*6*10);
            loss.backward(); torch.optim.AdamW(unet LoRA params + text LoRA params, lr 1e-4,
            betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2).step() from zero moments.
            Attention runs through diffusers' classic AttnProcessor (explicit softmax); the
            script checks that torch's SDPA processor (the script's default) gives the same
            loss and gradients.
  f32/f64   P = f32: the above in float32. P = f64: the same with the model, LoRA and inputs
            cast to float64; upcast_attention/upcast_softmax switched off there (in float64
            they would DOWNcast the scores to float32), CLIP run with float64 as the default
            dtype (its causal mask is built in the default dtype), and, as in the reference
            itself, the sinusoidal timestep features computed in float32 and the scheduler's
            alphas_cumprod float32 values. The float32 training script's `.float()` before the
            MSE is a no-op in float32 and is left out in float64.

dreambooth.safetensors (F32 unless noted; P in {f32, f64}, P = f64 tensors F64; scalars [1]):
  instance_input_ids, class_input_ids I64 [1,77]; instance_latents, class_latents,
  instance_noise, class_noise [1,4,6,10]; instance_timesteps, class_timesteps I64 [1]
  P.encoder_hidden_states [2,77,48]   CLIP output, [instance; class]
  P.noisy_latents, P.target, P.model_pred [2,4,6,10]   add_noise, velocity, UNet output
  P.loss_instance, P.loss_prior, P.loss   loss = instance + 0.5 * prior
  P.grad.unet.<module>.lora_{A,B}.weight, P.grad.text_encoder.<module>.lora_{A,B}.weight
                                      dloss/dA, dloss/dB (peft module names, e.g.
                                      down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_k,
                                      text_model.encoder.layers.0.self_attn.q_proj)
  P.adamw_step1.<same names>          the parameters after one AdamW step
Settings are in the file's __metadata__ (prompts, prior_loss_weight, lora rank/alpha, AdamW).

dreambooth_lora.safetensors: the starting LoRA, peft layout with part prefixes
("unet.<module>.lora_A.weight", "text_encoder.<module>.lora_B.weight", F32) and metadata
"rank" "4", "alpha" "8.0" (booth's storage/lora_file.h reads both; without them booth would
assume alpha = rank).

Environment: the one of scripts/make_variant_oracle.py (torch 2.1.2, diffusers 0.25.1,
transformers 4.35.2) plus peft 0.7.1 (the version diffusers 0.25's training scripts were
written against; it needs accelerate, 0.25.0 here):
    /tmp/refenv/bin/pip install peft==0.7.1 accelerate==0.25.0
(or a second venv that sees /tmp/refenv's packages through a .pth file, as /tmp/loraenv).

Regenerating:
    /tmp/loraenv/bin/python scripts/make_variant_dreambooth_oracle.py
    make -j2 && ./build/tests/runner variant     # test_variant.c and test_variant_dreambooth.c
Deterministic (fixed seeds, one thread): the same versions give byte-identical files.
"""
import copy
import json
import os
import sys

import torch
import torch.nn.functional as F

import diffusers
import peft
import transformers
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from peft import LoraConfig
from transformers import CLIPTextModel, CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "variant")
MODEL = os.path.join(OUT, "model")

RANK = 4
ALPHA = 8.0
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
INSTANCE_PROMPT = "a photo of sks robot"
CLASS_PROMPT = "a photo of robot"
PRIOR_LOSS_WEIGHT = 0.5
LATENT = (1, 4, 6, 10)
TIMESTEPS = (123, 876)  # instance, class
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def write_safetensors(path, tensors, meta):
    """safetensors with a deterministic header: metadata, then tensors sorted by name, header
    padded with spaces to 8 bytes (as make_variant_oracle.py writes)."""
    names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header = {"__metadata__": dict(sorted(meta.items()))}
    blobs, off = [], 0
    for k in sorted(tensors):
        a = tensors[k].detach().contiguous().numpy()
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[k] = {"dtype": names[tensors[k].dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.chmod(path, 0o644)


def run_f64(fn, *args, **kw):
    """fn with float64 as torch's default dtype (CLIP's causal mask is made in it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_default_dtype(old)


def peft_name(param_name):
    """'x.to_k.lora_A.default.weight' -> 'x.to_k.lora_A.weight' (peft's saved spelling)."""
    if ".default." not in param_name:
        sys.exit(f"unexpected LoRA parameter name {param_name}")
    return param_name.replace(".default.", ".")


def lora_params(model):
    """(peft name, parameter) of every LoRA matrix, in the model's order."""
    out = [(peft_name(n), p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    if any(not p.requires_grad for _, p in out):
        sys.exit("a LoRA parameter is frozen")
    if any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n):
        sys.exit("a base parameter is trainable")
    return out


def load_models():
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet", variant="fp16", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder", torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(MODEL, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    if sched.config.prediction_type != "v_prediction":
        sys.exit("scheduler: expected v_prediction")
    if any(p.dtype != torch.float32 for m in (unet, text) for p in m.parameters()):
        sys.exit("model not float32 after loading")
    if tokenizer.pad_token_id != 0:
        sys.exit("tokenizer: pad token is not '!' (id 0)")
    unet.requires_grad_(False)
    text.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    text.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=TEXT_TARGETS))
    # every LoRA matrix non-zero and seeded (peft's gaussian init leaves B = 0)
    g = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for model in (unet, text):
            for name, p in lora_params(model):
                std = 1.0 / RANK if ".lora_A." in name else 0.05
                p.copy_(std * torch.randn(p.shape, generator=g))
    unet.set_attn_processor(AttnProcessor())
    unet.train()
    text.train()
    return unet, text, tokenizer, sched


def to_f64(model):
    m = copy.deepcopy(model).to(torch.float64)
    for mod in m.modules():
        if isinstance(mod, Attention):
            mod.upcast_attention = False
            mod.upcast_softmax = False
    return m


def step(unet, text, sched, batch, dtype):
    """One DreamBooth step; returns the recorded tensors (no prefix)."""
    ids = torch.cat([batch["instance_input_ids"], batch["class_input_ids"]])
    latents = torch.cat([batch["instance_latents"], batch["class_latents"]]).to(dtype)
    noise = torch.cat([batch["instance_noise"], batch["class_noise"]]).to(dtype)
    ts = torch.cat([batch["instance_timesteps"], batch["class_timesteps"]])
    params = lora_params(unet) + lora_params(text)
    for _, p in params:
        p.grad = None
    if dtype == torch.float64:
        ehs = run_f64(text, ids)[0]
    else:
        ehs = text(ids)[0]
    noisy = sched.add_noise(latents, noise, ts)
    target = sched.get_velocity(latents, noise, ts)
    pred = unet(noisy, ts, ehs, return_dict=False)[0]
    if pred.dtype != dtype or ehs.dtype != dtype or noisy.dtype != dtype:
        sys.exit("step: dtype leaked")
    p_inst, p_prior = torch.chunk(pred, 2, dim=0)
    t_inst, t_prior = torch.chunk(target, 2, dim=0)
    loss_inst = F.mse_loss(p_inst, t_inst, reduction="mean")
    loss_prior = F.mse_loss(p_prior, t_prior, reduction="mean")
    loss = loss_inst + PRIOR_LOSS_WEIGHT * loss_prior
    loss.backward()
    rec = {
        "encoder_hidden_states": ehs.detach().clone(),
        "noisy_latents": noisy.detach().clone(),
        "target": target.detach().clone(),
        "model_pred": pred.detach().clone(),
        "loss": loss.detach().reshape(1).clone(),
        "loss_instance": loss_inst.detach().reshape(1).clone(),
        "loss_prior": loss_prior.detach().reshape(1).clone(),
    }
    for part, model in (("unet", unet), ("text_encoder", text)):
        for name, p in lora_params(model):
            if p.grad is None or not p.grad.abs().max() > 0:
                sys.exit(f"{part}.{name}: no gradient")
            rec[f"grad.{part}.{name}"] = p.grad.detach().clone()
    opt = torch.optim.AdamW([p for _, p in params], **ADAMW)
    opt.step()
    for part, model in (("unet", unet), ("text_encoder", text)):
        for name, p in lora_params(model):
            rec[f"adamw_step1.{part}.{name}"] = p.detach().clone()
    return rec


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}")
    unet, text, tokenizer, sched = load_models()

    # the starting LoRA, as booth reads it
    lora = {}
    for part, model in (("unet", unet), ("text_encoder", text)):
        for name, p in lora_params(model):
            lora[f"{part}.{name}"] = p.detach().clone()
    n_unet = sum(k.startswith("unet.") for k in lora) // 2
    n_text = sum(k.startswith("text_encoder.") for k in lora) // 2
    print(f"lora: {n_unet} UNet + {n_text} text-encoder adapters, "
          f"{sum(v.numel() for v in lora.values())} parameters")

    def tok(prompt):
        return tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    g = torch.Generator().manual_seed(32)
    batch = {
        "instance_input_ids": tok(INSTANCE_PROMPT),
        "class_input_ids": tok(CLASS_PROMPT),
        "instance_latents": torch.randn(LATENT, generator=g),
        "class_latents": torch.randn(LATENT, generator=g),
        "instance_noise": torch.randn(LATENT, generator=g),
        "class_noise": torch.randn(LATENT, generator=g),
        "instance_timesteps": torch.tensor([TIMESTEPS[0]], dtype=torch.int64),
        "class_timesteps": torch.tensor([TIMESTEPS[1]], dtype=torch.int64),
    }

    unet64, text64 = to_f64(unet), to_f64(text)
    sdpa_unet = copy.deepcopy(unet)
    sdpa_text = copy.deepcopy(text)
    sdpa_unet.set_attn_processor(AttnProcessor2_0())
    r32 = step(unet, text, sched, batch, torch.float32)
    r64 = step(unet64, text64, sched, batch, torch.float64)
    rsd = step(sdpa_unet, sdpa_text, sched, batch, torch.float32)

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()

    worst, worst_sdpa = 0.0, 0.0
    for k in r32:
        if k.startswith("grad."):
            worst = max(worst, rel(r32[k], r64[k]))
            worst_sdpa = max(worst_sdpa, rel(rsd[k], r32[k]))
    print(f"loss f32 {r32['loss'].item():.8f} (instance {r32['loss_instance'].item():.8f}, prior "
          f"{r32['loss_prior'].item():.8f}), f64 {r64['loss'].item():.10f}, sdpa {rsd['loss'].item():.8f}")
    print(f"grads: worst per-tensor max|f32 - f64| / max|f64| = {worst:.3g}; sdpa vs classic {worst_sdpa:.3g}")
    print(f"model_pred |f32 - f64| = {(r32['model_pred'].double() - r64['model_pred']).abs().max().item():.3g}, "
          f"ehs |f32 - f64| = {(r32['encoder_hidden_states'].double() - r64['encoder_hidden_states']).abs().max().item():.3g}")
    if worst > 1e-4 or worst_sdpa > 1e-4 or abs(rsd["loss"].item() - r32["loss"].item()) > 1e-5 * r32["loss"].item():
        sys.exit("reference disagrees with itself (f32/f64 or classic/SDPA)")
    ninf = sum(1 for r in (r32, r64) for v in r.values() if not torch.isfinite(v).all())
    if ninf:
        sys.exit("non-finite values")

    out = dict(batch)
    for prefix, r in (("f32", r32), ("f64", r64)):
        for k, v in r.items():
            out[f"{prefix}.{k}"] = v
    meta = {
        "generator": "scripts/make_variant_dreambooth_oracle.py",
        "model": "tests/fixtures/variant/model",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "attention_processor": "AttnProcessor",
        "instance_prompt": INSTANCE_PROMPT,
        "class_prompt": CLASS_PROMPT,
        "prior_loss_weight": str(PRIOR_LOSS_WEIGHT),
        "prediction_type": sched.config.prediction_type,
        "train_text_encoder": "True",
        "unet_lora": json.dumps({"rank": RANK, "alpha": ALPHA, "target_modules": UNET_TARGETS}),
        "text_encoder_lora": json.dumps({"rank": RANK, "alpha": ALPHA, "target_modules": TEXT_TARGETS}),
        "adamw": json.dumps({"lr": ADAMW["lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                             "weight_decay": ADAMW["weight_decay"]}),
        "lora_weights_file": "dreambooth_lora.safetensors",
        "n_adapters": json.dumps({"unet": n_unet, "text_encoder": n_text}),
    }
    write_safetensors(os.path.join(OUT, "dreambooth.safetensors"), out, meta)
    write_safetensors(os.path.join(OUT, "dreambooth_lora.safetensors"), lora, {
        "format": "pt",
        "rank": str(RANK),
        "alpha": str(ALPHA),
        "target_modules": json.dumps(UNET_TARGETS),
        "text_encoder_target_modules": json.dumps(TEXT_TARGETS),
        "formula": "y = W x + b + (alpha/rank) * B (A x)",
        "generator": "scripts/make_variant_dreambooth_oracle.py",
    })
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in ("dreambooth.safetensors", "dreambooth_lora.safetensors"))
    print(f"wrote {len(out)} + {len(lora)} tensors, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
