#!/usr/bin/env python3
"""make_variant_oracle.py — a second reference model for booth, built and run by the real
diffusers / transformers, so booth is checked on an SD-family configuration other than the
oracle's tiny SD 1.x model.

It writes
    tests/fixtures/variant/model/              a diffusers model folder (the "variant" model)
    tests/fixtures/variant/reference.safetensors   what diffusers/transformers compute with it
which tests/unit/test_variant.c checks booth against. `make test` never runs this script:
the fixtures are committed, and the C test needs no Python.

What the variant changes, compared with tests/fixtures/tiny-sd (SD 1.x layout):
  UNet   DownBlock2D first, then two CrossAttnDownBlock2D (the first attention is not in
         block 0); block_out_channels [16, 24, 32]; layers_per_block [1, 2, 1] (a list);
         transformer_layers_per_block [1, 2, 1] (2 transformer blocks in block 1);
         attention_head_dim [2, 3, 4] (SD 2.x's legacy per-block list = head COUNTS: block 1
         has 3 heads of 8, block 2 and the mid block 4 heads of 8, up blocks reversed);
         cross_attention_dim 48; use_linear_projection true; only_cross_attention
         [false, true, false] (attn1 of block 1 / up block 1 attends to the text);
         upcast_attention true; flip_sin_to_cos false and freq_shift 1; norm_num_groups 8,
         norm_eps 1e-6; downsample_padding 1. Saved as fp16
         (unet/diffusion_pytorch_model.fp16.safetensors, the `variant="fp16"` name).
         Not used: `num_attention_heads` — diffusers 0.25.1 raises ValueError when a config
         gives it (its naming fix never landed), so no loadable config can carry it.
  Text   CLIPTextModel, hidden 48, intermediate 72, 2 layers, 4 heads, hidden_act "gelu"
         (exact erf, SD 2.x), eos_token_id 49407 (the non-legacy pooled-output rule: first
         position equal to eos), vocab 49408. Saved in fp16 under the plain name
         text_encoder/model.safetensors (dtype F16).
  VAE    3 blocks [16, 16, 24] (latent = image / 4), layers_per_block 2, norm_num_groups 8,
         scaling_factor 0.13025; fp32, with the mid-block attention stored under the old
         names query/key/value/proj_attn (diffusers renames them on load; so must booth).
  Tok.   booth's diffusion/clip_tokenizer vocab.json and merges.txt, with SD 2.x's pad
         token "!" (id 0) in tokenizer_config.json and special_tokens_map.json.
  Sched. DDIMScheduler, prediction_type v_prediction, timestep_spacing trailing,
         set_alpha_to_one false, steps_offset 1 (SD 2.x 768-v's settings).

Weights are random (seeded): every parameter keeps its framework initialisation except
that every norm weight becomes 1 + 0.1·N(0,1), every bias 0.1·N(0,1), and the CLIP
embeddings N(0, 0.3²) — so a swapped gamma/beta or a dropped bias shows. The fp16 parts are
rounded to fp16 first; every reference below is computed from the model folder as written
(weights loaded back from disk, fp16 ones widened to float32).

reference.safetensors (F32 unless noted; `_f64`: the same run with everything in float64,
with `upcast_attention`/`upcast_softmax` switched off there, because in float64 they would
*down*cast the attention scores to float32 — in float32 they are no-ops):
  clip.input_ids I64 [2,77]            metadata clip.prompt.0 "A photo of sks dog!! Wow, so
                                        fluffy!" (each "!" is the pad token, id 0) and
                                        clip.prompt.1, 81 tokens (truncated to 75)
  clip.last_hidden_state(_f64) [2,77,48], clip.pooler_output(_f64) [2,48],
  clip.hidden_states [3,2,77,48]       [0] embeddings, [l] after layer l
  unet.sample [2,4,9,14] (9x14: not multiples of the UNet's total downsampling 4, so the up
  path interpolates to the skip sizes 5x7 and 9x14), unet.timestep I64 [2] = (17, 913),
  unet.encoder_hidden_states [2,77,48] N(0,1), unet.noise_pred(_f64) [2,4,9,14]
  vae.image [2,3,20,36] in [-1,1], vae.posterior_mean/_logvar(_f64) [2,4,5,9] (odd sizes),
  vae.z [2,4,5,9], vae.decoded(_f64) [2,3,20,36]
  intermediate.<module>                forward-hook outputs of the UNet run (no prefix, e.g.
                                        down_blocks.1.attentions.0.transformer_blocks.1.attn1)
                                        and of the VAE runs (encoder.*, quant_conv,
                                        post_quant_conv, decoder.*), whole batch
  pipeline.*                           StableDiffusionPipeline: prompt "a photo of sks dog in
                                        the snow!", negative "blurry, low quality!!", CFG 6.0,
                                        4 DDIM steps (999, 749, 499, 249), 2 images of one
                                        prompt from given latents [2,4,10,14] (height 40,
                                        width 56): input_ids_cond/_uncond I64 [1,77],
                                        prompt_embeds [2,77,48] ([uncond; cond]),
                                        initial_latents, timesteps I64 [4],
                                        step_unet_output [4,4,4,10,14] (batch [u,u,c,c]),
                                        step_latents(_f64) [4,2,4,10,14],
                                        decoded_raw [2,3,40,56], image [2,40,56,3] (NHWC)
Settings are in the file's __metadata__.

Setting up the reference environment (once; outside the repository):
    /root/.pyenv/versions/3.11.7/bin/python3 -m venv /tmp/refenv      # any CPython 3.11
    /tmp/refenv/bin/pip install torch==2.1.2 diffusers==0.25.1 transformers==4.35.2 \
        huggingface_hub==0.20.3 safetensors "numpy<2"
(PyPI's torch 2.1.2 pulls in its CUDA libraries, ~2.5 GB, and runs on the CPU; torch's
CPU-only wheel index works as well where reachable. huggingface_hub is pinned because
diffusers 0.25.1 imports `cached_download`, which later releases removed. The fixtures were
made with torch 2.1.2, numpy 1.26.4, safetensors 0.8.0, tokenizers 0.15.2.)

Regenerating:
    /tmp/refenv/bin/python scripts/make_variant_oracle.py   # rewrites tests/fixtures/variant/
    make -j2 && ./build/tests/runner variant
The run is deterministic (fixed seeds, one thread): regenerating with the same versions gives
byte-identical files. Attention runs through diffusers' classic AttnProcessor (explicit
softmax), as the oracle's did; the script checks that torch's SDPA processor agrees.
"""
import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "variant")
MODEL = os.path.join(OUT, "model")

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=[False, True, False],
    block_out_channels=(16, 24, 32),
    layers_per_block=[1, 2, 1],
    transformer_layers_per_block=[1, 2, 1],
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=8,
    norm_eps=1e-6,
    cross_attention_dim=48,
    attention_head_dim=[2, 3, 4],
    use_linear_projection=True,
    upcast_attention=True,
    flip_sin_to_cos=False,
    freq_shift=1,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 16, 24),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=0.13025,
)

CLIP_CONFIG = dict(
    vocab_size=49408,
    hidden_size=48,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=48,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=0,
)

SCHED_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
)

CLIP_PROMPTS = [
    "A photo of sks dog!! Wow, so fluffy!",
    "a very long prompt about a sks dog sitting on a red sofa in a sunny living room with plants, "
    "books, a cup of coffee, a window looking out on snowy mountains, a cat sleeping nearby, "
    "soft light, film grain, 35mm photograph, highly detailed, sharp focus, award winning, "
    "trending on artstation, by a famous photographer, golden hour, bokeh, warm colours, cosy",
]
PIPE_PROMPT = "a photo of sks dog in the snow!"
PIPE_NEGATIVE = "blurry, low quality!!"
PIPE_GUIDANCE = 6.0
PIPE_STEPS = 4
PIPE_LATENT = (2, 4, 10, 14)  # 2 images, latents 10x14 -> images 40x56 (a multiple of 8, as the pipeline requires)
UNET_SAMPLE = (2, 4, 9, 14)
UNET_TIMESTEPS = [17, 913]
VAE_IMAGE = (2, 3, 20, 36)  # latents 5x9: odd sizes through the encoder and decoder


def randomize(model, seed):
    """Every norm weight 1 + 0.1 N, every bias 0.1 N; everything else keeps its init."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, norms) and mod.weight is not None:
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def round_fp16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def classic_attention(model):
    model.set_attn_processor(AttnProcessor())


def to_f64(model):
    """A float64 copy; upcast_attention/upcast_softmax off (in float64 they would downcast)."""
    m = copy.deepcopy(model).to(torch.float64)
    for mod in m.modules():
        if isinstance(mod, Attention):
            mod.upcast_attention = False
            mod.upcast_softmax = False
    return m


def run_f64(fn, *args, **kw):
    """fn(*args, **kw) with float64 as torch's default dtype: transformers builds CLIP's
    causal mask with torch.full(..., finfo(dtype).min) in the default dtype, which overflows
    for float64 otherwise."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_default_dtype(old)


def first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "sample"):
        return out.sample
    return out


class Recorder:
    """Forward hooks storing module outputs as intermediate.<name>."""

    def __init__(self, model, names, prefix=""):
        self.out = {}
        self.handles = []
        mods = dict(model.named_modules())
        for n in names:
            if n not in mods:
                sys.exit(f"no module {prefix}{n}")
            self.handles.append(mods[n].register_forward_hook(self._hook(prefix + n)))

    def _hook(self, key):
        def fn(mod, inp, out):
            if key in self.out:
                sys.exit(f"module {key} ran twice")
            self.out[key] = first(out).detach().clone().float().contiguous()

        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


def write_safetensors(path, tensors, meta):
    """safetensors with a deterministic header (the library's writer orders metadata keys at
    random): metadata, then tensors sorted by name, header padded with spaces to 8 bytes."""
    names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header = {"__metadata__": dict(sorted(meta.items()))}
    blobs, off = [], 0
    for k in sorted(tensors):
        a = tensors[k].numpy()
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


def write_tokenizer(dst):
    """booth's CLIP vocabulary, with SD 2.x's special-token settings (pad "!")."""
    src = os.path.join(ROOT, "diffusion", "clip_tokenizer")
    os.makedirs(dst, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))

    def tok(content):
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    special = {
        "bos_token": tok("<|startoftext|>"),
        "eos_token": tok("<|endoftext|>"),
        "pad_token": "!",
        "unk_token": tok("<|endoftext|>"),
    }
    with open(os.path.join(dst, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
        f.write("\n")
    cfg = {
        "add_prefix_space": False,
        "bos_token": dict(tok("<|startoftext|>"), __type="AddedToken"),
        "do_lower_case": True,
        "eos_token": dict(tok("<|endoftext|>"), __type="AddedToken"),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "variant",
        "pad_token": "!",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": dict(tok("<|endoftext|>"), __type="AddedToken"),
    }
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def build_and_save():
    if os.path.exists(MODEL):
        shutil.rmtree(MODEL)
    os.makedirs(MODEL)

    torch.manual_seed(1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    randomize(unet, 11)
    round_fp16(unet)

    torch.manual_seed(2)
    vae = AutoencoderKL(**VAE_CONFIG)
    randomize(vae, 12)

    torch.manual_seed(3)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG))
    randomize(text, 13)
    with torch.no_grad():
        g = torch.Generator().manual_seed(14)
        emb = text.text_model.embeddings
        emb.token_embedding.weight.copy_(0.3 * torch.randn(emb.token_embedding.weight.shape, generator=g))
        emb.position_embedding.weight.copy_(0.3 * torch.randn(emb.position_embedding.weight.shape, generator=g))
    round_fp16(text)

    sched = DDIMScheduler(**SCHED_CONFIG)
    write_tokenizer(os.path.join(MODEL, "tokenizer"))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))

    # unet: fp16 under the variant name
    copy.deepcopy(unet).half().save_pretrained(os.path.join(MODEL, "unet"), variant="fp16", safe_serialization=True)
    # text encoder: fp16 under the plain name
    copy.deepcopy(text).half().save_pretrained(os.path.join(MODEL, "text_encoder"), safe_serialization=True)
    # vae: fp32, mid-block attention under the old names
    vdir = os.path.join(MODEL, "vae")
    vae.save_pretrained(vdir, safe_serialization=True)
    path = os.path.join(vdir, "diffusion_pytorch_model.safetensors")
    sd = load_file(path)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in sd.items():
        for new, legacy in old.items():
            tag = f"mid_block.attentions.0.{new}."
            if tag in k:
                k = k.replace(tag, f"mid_block.attentions.0.{legacy}.")
        renamed[k] = v.contiguous()
    if sum(".query." in k or ".proj_attn." in k for k in renamed) != 8:
        sys.exit("vae: expected 8 renamed attention tensors")
    save_file(renamed, path, metadata={"format": "pt"})
    sched.save_pretrained(os.path.join(MODEL, "scheduler"))

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_config(MODEL)
    return unet, vae, text


def load_back(unet0, vae0, text0):
    """The model as a user would load it from the folder (fp16 widened to float32)."""
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet", variant="fp16", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(MODEL, subfolder="vae", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder", torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(MODEL, subfolder="tokenizer")
    sched = DDIMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    for a, b, what in ((unet, unet0, "unet"), (vae, vae0, "vae"), (text, text0, "text_encoder")):
        sa, sb = a.state_dict(), b.state_dict()
        if set(sa) != set(sb) or any(not torch.equal(sa[k], sb[k]) for k in sa):
            sys.exit(f"{what}: weights loaded back differ from the ones saved")
        if any(p.dtype != torch.float32 for p in a.parameters()):
            sys.exit(f"{what}: not float32 after loading")
    if tokenizer.pad_token_id != 0:
        sys.exit("tokenizer: pad token is not '!' (id 0)")
    for m in (unet.eval(), vae.eval(), text.eval()):
        m.requires_grad_(False)
    classic_attention(unet)
    classic_attention(vae)
    return unet, vae, text, tokenizer, sched


# Every name recorded is one booth's forward hooks report (the C test requires all of them
# to be compared).
UNET_INTERMEDIATES = [
    "time_proj",
    "time_embedding",
    "conv_in",
    "down_blocks.0.resnets.0",
    "down_blocks.0.downsamplers.0",
    "down_blocks.0",
    "down_blocks.1.resnets.0",
    "down_blocks.1.attentions.0.norm",
    "down_blocks.1.attentions.0.proj_in",
    "down_blocks.1.attentions.0.transformer_blocks.0.norm1",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.0.transformer_blocks.0.ff",
    "down_blocks.1.attentions.0.transformer_blocks.0",
    "down_blocks.1.attentions.0.transformer_blocks.1.attn1",
    "down_blocks.1.attentions.0.transformer_blocks.1",
    "down_blocks.1.attentions.0.proj_out",
    "down_blocks.1.attentions.0",
    "down_blocks.1.resnets.1",
    "down_blocks.1.attentions.1",
    "down_blocks.1.downsamplers.0",
    "down_blocks.1",
    "down_blocks.2.resnets.0",
    "down_blocks.2.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.2.attentions.0",
    "down_blocks.2",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
    "mid_block.attentions.0.proj_out",
    "mid_block",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.0.attentions.1.proj_out",
    "up_blocks.0.upsamplers.0",
    "up_blocks.0",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.0.transformer_blocks.1.attn2",
    "up_blocks.1.attentions.2.proj_out",
    "up_blocks.1.upsamplers.0",
    "up_blocks.1",
    "up_blocks.2",
    "conv_norm_out",
    "conv_out",
]

VAE_ENCODE_INTERMEDIATES = [
    "encoder.down_blocks.0",
    "encoder.down_blocks.1",
    "encoder.down_blocks.2",
    "encoder.mid_block.resnets.0",
    "encoder.mid_block.attentions.0",
    "encoder.mid_block",
    "encoder.conv_norm_out",
    "encoder.conv_out",
    "quant_conv",
]
VAE_DECODE_INTERMEDIATES = [
    "post_quant_conv",
    "decoder.conv_in",
    "decoder.mid_block.attentions.0",
    "decoder.mid_block",
    "decoder.up_blocks.0",
]


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    unet0, vae0, text0 = build_and_save()
    unet, vae, text, tokenizer, sched = load_back(unet0, vae0, text0)
    ref = {}
    meta = {
        "generator": "scripts/make_variant_oracle.py",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "attention_processor": "AttnProcessor",
    }

    # ---- text encoder
    tok = tokenizer(CLIP_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = tok.input_ids
    n_untrunc = [len(tokenizer(p).input_ids) for p in CLIP_PROMPTS]
    if not (ids[0] == 0).any() or n_untrunc[1] <= 77:
        sys.exit(f"clip prompts: want a '!' (id 0) in prompt 0 and > 77 ids in prompt 1, got {n_untrunc}")
    with torch.no_grad():
        o = text(ids, output_hidden_states=True)
        o64 = run_f64(to_f64(text), ids, output_hidden_states=True)
    ref["clip.input_ids"] = ids
    ref["clip.last_hidden_state"] = o.last_hidden_state
    ref["clip.last_hidden_state_f64"] = o64.last_hidden_state
    ref["clip.pooler_output"] = o.pooler_output
    ref["clip.pooler_output_f64"] = o64.pooler_output
    ref["clip.hidden_states"] = torch.stack(o.hidden_states)
    for i, p in enumerate(CLIP_PROMPTS):
        meta[f"clip.prompt.{i}"] = p
    meta["clip.n_ids_untruncated"] = json.dumps(n_untrunc)

    # ---- UNet
    g = torch.Generator().manual_seed(21)
    sample = torch.randn(UNET_SAMPLE, generator=g)
    ehs = torch.randn((UNET_SAMPLE[0], 77, CLIP_CONFIG["hidden_size"]), generator=g)
    ts = torch.tensor(UNET_TIMESTEPS, dtype=torch.int64)
    rec = Recorder(unet, UNET_INTERMEDIATES)
    with torch.no_grad():
        noise_pred = unet(sample, ts, ehs).sample
    rec.remove()
    with torch.no_grad():
        noise64 = to_f64(unet)(sample.double(), ts, ehs.double()).sample
        sdpa = copy.deepcopy(unet)
        sdpa.set_attn_processor(AttnProcessor2_0())
        d = (sdpa(sample, ts, ehs).sample - noise_pred).abs().max().item()
    print(f"unet: |classic - sdpa| = {d:.3g}, |f32 - f64| = {(noise_pred.double() - noise64).abs().max().item():.3g}")
    if d > 1e-4:
        sys.exit("unet: attention processors disagree")
    ref["unet.sample"] = sample
    ref["unet.timestep"] = ts
    ref["unet.encoder_hidden_states"] = ehs
    ref["unet.noise_pred"] = noise_pred
    ref["unet.noise_pred_f64"] = noise64
    ref.update({f"intermediate.{k}": v for k, v in rec.out.items()})
    # A rule test_variant.c checks on booth's config alone: UNetMidBlock2DCrossAttn keeps
    # self-attention in attn1 even when only_cross_attention is set for the last down block
    # (diffusers 0.25.1 passes only_cross_attention on to UNetMidBlock2DSimpleCrossAttn only).
    probe = UNet2DConditionModel(**dict(UNET_CONFIG, only_cross_attention=[False, False, True]))
    shapes = {
        "mid_block": list(probe.mid_block.attentions[0].transformer_blocks[0].attn1.to_k.weight.shape),
        "up_blocks.0": list(probe.up_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k.weight.shape),
        "down_blocks.2": list(probe.down_blocks[2].attentions[0].transformer_blocks[0].attn1.to_k.weight.shape),
    }
    if shapes != {"mid_block": [32, 32], "up_blocks.0": [32, 48], "down_blocks.2": [32, 48]}:
        sys.exit(f"only_cross_attention rule changed: {shapes}")
    meta["unet.only_cross_last_block.attn1_to_k_shapes"] = json.dumps(shapes)

    # ---- VAE
    g = torch.Generator().manual_seed(22)
    image = torch.rand(VAE_IMAGE, generator=g) * 2 - 1
    lat_shape = (VAE_IMAGE[0], 4, VAE_IMAGE[2] // 4, VAE_IMAGE[3] // 4)
    z = torch.randn(lat_shape, generator=g)
    rec = Recorder(vae, VAE_ENCODE_INTERMEDIATES + VAE_DECODE_INTERMEDIATES)
    with torch.no_grad():
        post = vae.encode(image).latent_dist
        dec = vae.decode(z).sample
    rec.remove()
    vae64 = to_f64(vae)
    with torch.no_grad():
        post64 = vae64.encode(image.double()).latent_dist
        dec64 = vae64.decode(z.double()).sample
    ref["vae.image"] = image
    ref["vae.posterior_mean"] = post.mean
    ref["vae.posterior_logvar"] = post.logvar
    ref["vae.posterior_mean_f64"] = post64.mean
    ref["vae.posterior_logvar_f64"] = post64.logvar
    ref["vae.z"] = z
    ref["vae.decoded"] = dec
    ref["vae.decoded_f64"] = dec64
    ref.update({f"intermediate.{k}": v for k, v in rec.out.items()})
    print(f"vae: |decoded f32 - f64| = {(dec.double() - dec64).abs().max().item():.3g}")

    # ---- pipeline
    g = torch.Generator().manual_seed(23)
    init = torch.randn(PIPE_LATENT, generator=g)

    def run(pipe, dtype):
        steps, outs = [], []
        h = pipe.unet.register_forward_hook(lambda m, i, o: outs.append(first(o).detach().clone()))

        def cb(p, i, t, kw):
            steps.append(kw["latents"].detach().clone())
            return kw

        raw = []
        h2 = pipe.vae.decoder.register_forward_hook(lambda m, i, o: raw.append(o.detach().clone()))
        with torch.no_grad():
            img = pipe(
                PIPE_PROMPT,
                negative_prompt=PIPE_NEGATIVE,
                height=PIPE_LATENT[2] * 4,
                width=PIPE_LATENT[3] * 4,
                num_inference_steps=PIPE_STEPS,
                guidance_scale=PIPE_GUIDANCE,
                num_images_per_prompt=PIPE_LATENT[0],
                eta=0.0,
                latents=init.to(dtype),
                output_type="np",
                callback_on_step_end=cb,
            ).images
        h.remove()
        h2.remove()
        return img, torch.stack(steps), torch.stack(outs), raw[0]

    common = dict(tokenizer=tokenizer, scheduler=sched, safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, unet=unet, **common)
    pipe.set_progress_bar_config(disable=True)
    img, steps, outs, raw = run(pipe, torch.float32)
    pipe64 = StableDiffusionPipeline(vae=vae64, text_encoder=to_f64(text), unet=to_f64(unet),
                                     tokenizer=tokenizer, scheduler=DDIMScheduler.from_config(sched.config),
                                     safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe64.set_progress_bar_config(disable=True)
    _, steps64, _, _ = run_f64(run, pipe64, torch.float64)
    cond = tokenizer(PIPE_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    unc = tokenizer(PIPE_NEGATIVE, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        pe = torch.cat([text(unc)[0], text(cond)[0]])
    ref["pipeline.input_ids_cond"] = cond
    ref["pipeline.input_ids_uncond"] = unc
    ref["pipeline.prompt_embeds"] = pe
    ref["pipeline.initial_latents"] = init
    ref["pipeline.timesteps"] = pipe.scheduler.timesteps.clone().to(torch.int64)
    ref["pipeline.step_unet_output"] = outs
    ref["pipeline.step_latents"] = steps
    ref["pipeline.step_latents_f64"] = steps64
    ref["pipeline.decoded_raw"] = raw
    ref["pipeline.image"] = torch.from_numpy(np.ascontiguousarray(img))
    print(f"pipeline: timesteps {pipe.scheduler.timesteps.tolist()}, "
          f"|step latents f32 - f64| = {(steps.double() - steps64).abs().max().item():.3g}")
    meta.update({
        "pipeline.prompt": PIPE_PROMPT,
        "pipeline.negative_prompt": PIPE_NEGATIVE,
        "pipeline.guidance_scale": str(PIPE_GUIDANCE),
        "pipeline.num_inference_steps": str(PIPE_STEPS),
        "pipeline.height": str(PIPE_LATENT[2] * 4),
        "pipeline.width": str(PIPE_LATENT[3] * 4),
        "unet_config": json.dumps(UNET_CONFIG),
        "vae_config": json.dumps(VAE_CONFIG),
        "clip_config": json.dumps(CLIP_CONFIG),
        "scheduler_config": json.dumps(SCHED_CONFIG),
    })

    for k, v in ref.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            sys.exit(f"{k}: not finite")
    out = {}
    for k, v in sorted(ref.items()):
        if v.dtype in (torch.float16, torch.bfloat16):
            v = v.float()
        out[k] = v.detach().contiguous()
    write_safetensors(os.path.join(OUT, "reference.safetensors"), out, meta)
    total = 0
    for dp, _, fs in os.walk(OUT):
        for f in fs:
            os.chmod(os.path.join(dp, f), 0o644)  # safetensors writes 0600
            total += os.path.getsize(os.path.join(dp, f))
    print(f"wrote {len(out)} tensors; tests/fixtures/variant is {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
