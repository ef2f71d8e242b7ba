#!/usr/bin/env python3
"""make_ecosystem_fixtures.py — small fixtures of what today's Python stack writes.

Writes tests/fixtures/ecosystem/ from the tiny model (tests/fixtures/tiny-sd), with the
current packages, once; `make test` only reads the results (tests/unit/test_ecosystem.c):

  tok_slow/                a reduced CLIP vocabulary (512 byte symbols, the first N_MERGES merges,
                           the two specials) as vocab.json + merges.txt
  tok5/                    the same tokenizer saved by transformers 5: tokenizer.json +
                           tokenizer_config.json only
  tokenizer5.json          ids transformers 5 gives for the oracle's 32 prompts with tok5, and
                           for each whether transformers 5's fast tokenizer agrees with the slow
                           CLIPTokenizer of the oracle on the full vocabulary (it does not on
                           control / zero-width characters and CJK spacing)
  lora_te5.safetensors     UNet + text-encoder LoRA (rank 4) saved by diffusers under
                           transformers 5: text-encoder keys without "text_model."; no alpha
  lora_meta.safetensors    rank 8, alpha 16, with diffusers' lora_adapter_metadata
  peft_te/                 a peft adapter folder of the text encoder (adapter_model.safetensors,
                           adapter_config.json: r 8, lora_alpha 16, one alpha_pattern entry)
  single_file_sd2_text_encoder.json   the same for SD 2.x's OpenCLIP text encoder layout
                           (fused in_proj: [LDM name, diffusers name, row third 0/1/2 or -1])
  single_file_sd1.json     the key map of an SD 1.x single-file checkpoint of the tiny model:
                           [original LDM name, diffusers name] per tensor, as this script writes
                           the file and diffusers' from_single_file reads it back (checked here:
                           every tensor comes back identical)
  expected.safetensors     inputs and the outputs diffusers / peft compute with each of the above

The single file itself (24 MB) is not committed: the C test writes it from the tiny model's
tensors with the recorded names, which is this script's file byte for byte in content.

Environment (never needed by `make test`): a virtual environment outside the repo, e.g.
    python3 -m venv /opt/venv-eco
    /opt/venv-eco/bin/pip install torch diffusers transformers peft safetensors accelerate
    /opt/venv-eco/bin/python scripts/make_ecosystem_fixtures.py
Made with diffusers 0.42.1, transformers 5.25.0, peft 0.21.2, torch 2.15 (CPU).
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "fixtures", "tiny-sd")
OUT = os.path.join(REPO, "tests", "fixtures", "ecosystem")
N_MERGES = 1500


def versions():
    import diffusers
    import peft
    import transformers

    return {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "torch": torch.__version__}


# ---------------------------------------------------------------- tokenizer

def make_tokenizer():
    from transformers import CLIPTokenizer

    tok_dir = os.path.join(TINY, "tokenizer")
    vocab = json.load(open(os.path.join(tok_dir, "vocab.json"), encoding="utf-8"))
    merges = open(os.path.join(tok_dir, "merges.txt"), encoding="utf-8").read().strip().split("\n")[1:]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    small = {tok: i for tok, i in by_id[:512]}
    for k, m in enumerate(merges[:N_MERGES]):
        tok = m.replace(" ", "")
        assert vocab[tok] == 512 + k, (m, vocab[tok])  # CLIP: token 512 + k is merge k
        small[tok] = 512 + k
    small["<|startoftext|>"] = 512 + N_MERGES
    small["<|endoftext|>"] = 513 + N_MERGES
    slow = os.path.join(OUT, "tok_slow")
    os.makedirs(slow, exist_ok=True)
    with open(os.path.join(slow, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(small, f, ensure_ascii=False, sort_keys=True)
    with open(os.path.join(slow, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges[:N_MERGES]) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tok_dir, name), os.path.join(slow, name))

    fast_dir = os.path.join(OUT, "tok5")
    shutil.rmtree(fast_dir, ignore_errors=True)
    CLIPTokenizer.from_pretrained(slow).save_pretrained(fast_dir)
    assert sorted(os.listdir(fast_dir)) == ["tokenizer.json", "tokenizer_config.json"], os.listdir(fast_dir)

    fast = CLIPTokenizer.from_pretrained(fast_dir)
    full = CLIPTokenizer.from_pretrained(tok_dir)  # transformers 5: the fast tokenizer, full vocabulary
    oracle = json.load(open(os.path.join(REPO, "tests", "fixtures", "tokenizer.json"), encoding="utf-8"))
    cases = []
    for c in oracle["cases"]:
        ids = fast(c["prompt"], padding="max_length", max_length=77, truncation=True).input_ids
        full_ids = full(c["prompt"], padding="max_length", max_length=77, truncation=True).input_ids
        cases.append({"prompt": c["prompt"], "input_ids": ids, "fast_equals_slow": full_ids == c["input_ids"]})
    with open(os.path.join(OUT, "tokenizer5.json"), "w", encoding="utf-8") as f:
        json.dump({"versions": versions(), "n_merges": N_MERGES, "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"tokenizer: {sum(not c['fast_equals_slow'] for c in cases)} of {len(cases)} prompts differ fast vs slow")


# ---------------------------------------------------------------- LoRA

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def load_parts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(TINY, subfolder="unet").eval()
    text = CLIPTextModel.from_pretrained(TINY, subfolder="text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(TINY, subfolder="vae").eval()
    return unet, text, vae


def pipeline(unet, text, vae):
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(TINY, subfolder="tokenizer"),
                                   unet=unet, scheduler=PNDMScheduler.from_pretrained(TINY, subfolder="scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)


@torch.no_grad()
def outputs(unet, text, inputs):
    return (text(inputs["input_ids"])[0].contiguous(),
            unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"]).sample)


def make_loras(inputs, expected):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model

    unet, text, vae = load_parts()
    expected["base.text"], expected["base.unet"] = outputs(unet, text, inputs)

    for name, r, alpha, meta, seed in (("lora_te5", 4, 4, False, 1), ("lora_meta", 8, 16, True, 2)):
        unet, text, vae = load_parts()
        ucfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=UNET_TARGETS, init_lora_weights=False)
        tcfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TEXT_TARGETS, init_lora_weights=False)
        unet.add_adapter(ucfg)
        # transformers 5.25's own add_adapter wants peft >= 0.22, newer than PyPI has: peft directly
        text = inject_adapter_in_model(tcfg, text)
        randomize_lora(unet, seed)
        randomize_lora(text, seed + 100)
        extra = {}
        if meta:
            extra = {"unet_lora_adapter_metadata": unet.peft_config["default"].to_dict(),
                     "text_encoder_lora_adapter_metadata": tcfg.to_dict()}
        with tempfile.TemporaryDirectory() as d:
            StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=get_peft_model_state_dict(unet),
                                                      text_encoder_lora_layers=get_peft_model_state_dict(text),
                                                      weight_name=name + ".safetensors", **extra)
            shutil.copy(os.path.join(d, name + ".safetensors"), os.path.join(OUT, name + ".safetensors"))
        # what diffusers makes of the file: a fresh pipeline, its own loader
        pipe = pipeline(*load_parts())
        pipe.load_lora_weights(os.path.join(OUT, name + ".safetensors"))
        expected[name + ".text"], expected[name + ".unet"] = outputs(pipe.unet, pipe.text_encoder, inputs)
        keys = list(load_file(os.path.join(OUT, name + ".safetensors")).keys())
        print(name, len(keys), "tensors, e.g.", [k for k in keys if k.startswith("text_encoder")][0])

    # peft's own adapter folder for the text encoder (transformers 5: no text_model level)
    unet, text, vae = load_parts()
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TEXT_TARGETS, init_lora_weights=False,
                     alpha_pattern={"layers.1.self_attn.v_proj": 32})
    model = get_peft_model(text, cfg)
    randomize_lora(model, 3)
    d = os.path.join(OUT, "peft_te")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    cfg_path = os.path.join(d, "adapter_config.json")
    adapter_cfg = json.load(open(cfg_path))
    adapter_cfg["base_model_name_or_path"] = "tests/fixtures/tiny-sd"  # not this machine's path
    with open(cfg_path, "w") as f:
        json.dump(adapter_cfg, f, indent=2, sort_keys=True)
    for extra in ("README.md",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    with torch.no_grad():
        expected["peft_te.text"] = model(input_ids=inputs["input_ids"])[0].contiguous()


# ---------------------------------------------------------------- single file

RESNET_TO_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                 ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def unet_ldm_name(name, cfg):
    """diffusers UNet name -> the original LDM name (the inverse of diffusers' convert_ldm_unet_checkpoint)."""
    L = cfg["layers_per_block"]
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    p = name.split(".")
    mod, tail = ".".join(p[:-1]), p[-1]
    if mod in fixed:
        return fixed[mod] + "." + tail

    def resnet(rest):
        for a, b in RESNET_TO_LDM:
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        raise KeyError(name)

    if p[0] == "down_blocks":
        b = int(p[1])
        if p[2] == "downsamplers":
            return f"input_blocks.{1 + b * (L + 1) + L}.0.op.{tail}"
        i = 1 + b * (L + 1) + int(p[3])
        rest = ".".join(p[4:])
        return f"input_blocks.{i}.0.{resnet(rest)}" if p[2] == "resnets" else f"input_blocks.{i}.1.{rest}"
    if p[0] == "mid_block":
        rest = ".".join(p[3:])
        if p[1] == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * int(p[2])}.{resnet(rest)}"
    if p[0] == "up_blocks":
        b = int(p[1])
        cross = cfg["up_block_types"][b].startswith("CrossAttn")
        if p[2] == "upsamplers":
            return f"output_blocks.{b * (L + 1) + L}.{2 if cross else 1}.conv.{tail}"
        i = b * (L + 1) + int(p[3])
        rest = ".".join(p[4:])
        return f"output_blocks.{i}.0.{resnet(rest)}" if p[2] == "resnets" else f"output_blocks.{i}.1.{rest}"
    raise KeyError(name)


def vae_ldm_name(name, cfg):
    n = len(cfg["block_out_channels"])
    p = name.split(".")
    fixed = {"conv_norm_out": "norm_out"}
    if p[0] in ("quant_conv", "post_quant_conv"):
        return name
    side = p[0]
    if p[1] in ("conv_in", "conv_out"):
        return name
    if p[1] in fixed:
        return f"{side}.{fixed[p[1]]}.{p[2]}"
    if p[1] == "mid_block":
        if p[2] == "resnets":
            rest = ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(p[3]) + 1}.{rest}"
        attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[p[4]]
        return f"{side}.mid.attn_1.{attn}.{p[-1]}"
    if p[1] in ("down_blocks", "up_blocks"):
        b = int(p[2])
        ldm_b = b if side == "encoder" else n - 1 - b
        kind = "down" if side == "encoder" else "up"
        if p[3] in ("downsamplers", "upsamplers"):
            return f"{side}.{kind}.{ldm_b}.{'downsample' if side == 'encoder' else 'upsample'}.conv.{p[-1]}"
        rest = ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.{kind}.{ldm_b}.block.{p[4]}.{rest}"
    raise KeyError(name)


def make_single_file(inputs, expected):
    from diffusers import StableDiffusionPipeline

    unet, text, vae = load_parts()
    ucfg, vcfg = dict(unet.config), dict(vae.config)
    pairs, sd = [], {}
    for name, t in unet.state_dict().items():
        ldm = "model.diffusion_model." + unet_ldm_name(name, ucfg)
        pairs.append([ldm, "unet." + name])
        sd[ldm] = t
    for name, t in vae.state_dict().items():
        ldm = "first_stage_model." + vae_ldm_name(name, vcfg)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and t.ndim == 2:
            t = t[:, :, None, None]  # LDM's attention projections are 1x1 convs
        pairs.append([ldm, "vae." + name])
        sd[ldm] = t
    for name, t in text.state_dict().items():
        if name.endswith("position_ids"):
            continue
        # transformers 5's CLIPTextModel has no text_model level; the LDM files have it
        full = name if name.startswith("text_model.") else "text_model." + name
        ldm = "cond_stage_model.transformer." + full
        pairs.append([ldm, "text_encoder." + full])
        sd[ldm] = t
    sd = {k: v.contiguous() for k, v in sd.items()}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tiny-sd1.safetensors")
        save_file(sd, path)
        pipe = StableDiffusionPipeline.from_single_file(path, config=TINY, safety_checker=None,
                                                        requires_safety_checker=False)
    # diffusers' reading of the file must give the folder's tensors exactly
    for part, ref in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        got = getattr(pipe, part).state_dict()
        for k, v in ref.state_dict().items():
            if k.endswith("position_ids"):
                continue
            assert torch.equal(got[k], v), (part, k)
    expected["single_file.text"], expected["single_file.unet"] = outputs(pipe.unet, pipe.text_encoder, inputs)
    with torch.no_grad():
        expected["single_file.vae_decoded"] = pipe.vae.decode(inputs["latents"]).sample
    with open(os.path.join(OUT, "single_file_sd1.json"), "w") as f:
        json.dump({"versions": versions(), "source": "tests/fixtures/tiny-sd", "tensors": pairs}, f, indent=0)
    print("single file:", len(pairs), "tensors; diffusers' from_single_file reads them back identically")


def make_openclip_map():
    """SD 2.x's OpenCLIP layout of the tiny text encoder (one extra last resblock, as SD 2.x
    files carry the layer their text encoder skips), read back by diffusers'
    convert_open_clip_checkpoint: the map records which rows of the fused in_proj are q, k, v."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    _, text, _ = load_parts()
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()
          if not k.endswith("position_ids")}
    P = "cond_stage_model.model."
    n_layers = text.config.num_hidden_layers
    ckpt, pairs = {}, []

    def put(ldm, name, slice_=-1):
        pairs.append([ldm, "text_encoder." + name, slice_])

    for a, b in (("embeddings.token_embedding.weight", "token_embedding.weight"),
                 ("embeddings.position_embedding.weight", "positional_embedding"),
                 ("final_layer_norm.weight", "ln_final.weight"), ("final_layer_norm.bias", "ln_final.bias")):
        ckpt[P + b] = sd["text_model." + a]
        put(P + b, "text_model." + a)
    for k in range(n_layers + 1):
        src = min(k, n_layers - 1)  # the extra last block: a copy, never loaded
        L = f"text_model.encoder.layers.{src}."
        R = P + f"transformer.resblocks.{k}."
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                     ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
            for w in ("weight", "bias"):
                ckpt[R + f"{b}.{w}"] = sd[L + f"{a}.{w}"]
                if k < n_layers:
                    put(R + f"{b}.{w}", L + f"{a}.{w}")
        for w in ("weight", "bias"):
            ckpt[R + f"attn.in_proj_{w}"] = torch.cat([sd[L + f"self_attn.{x}_proj.{w}"] for x in "qkv"], 0)
            for s_, x in enumerate("qkv"):
                if k < n_layers:
                    put(R + f"attn.in_proj_{w}", L + f"self_attn.{x}_proj.{w}", s_)
    got = convert_open_clip_checkpoint(text, ckpt, prefix=P)
    for ldm, name, s_ in pairs:
        name = name[len("text_encoder."):]
        assert torch.equal(got[name], sd[name]), name
    with open(os.path.join(OUT, "single_file_sd2_text_encoder.json"), "w") as f:
        json.dump({"versions": versions(), "source": "tests/fixtures/tiny-sd/text_encoder",
                   "extra_layers": 1, "tensors": pairs}, f, indent=0)
    print("OpenCLIP map:", len(pairs), "entries; diffusers' convert_open_clip_checkpoint reads them back identically")


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":  # peft keeps target_modules as a set: fix its order
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    make_tokenizer()
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TINY, subfolder="tokenizer")
    g = torch.Generator().manual_seed(1234)
    inputs = {
        "input_ids": torch.tensor([tok("a photo of sks dog", padding="max_length", max_length=77).input_ids]),
        "sample": torch.randn(1, 4, 16, 16, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 32, generator=g),
        "latents": torch.randn(1, 4, 4, 4, generator=g),
    }
    expected = dict(inputs)
    make_loras(inputs, expected)
    make_single_file(inputs, expected)
    make_openclip_map()
    expected = {k: v.contiguous() for k, v in expected.items()}
    save_file(expected, os.path.join(OUT, "expected.safetensors"), metadata={"versions": json.dumps(versions())})
    for k in sorted(expected):
        print(f"  {k:28s} {list(expected[k].shape)}")


if __name__ == "__main__":
    sys.exit(main())
