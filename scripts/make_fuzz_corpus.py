#!/usr/bin/env python3
"""make_fuzz_corpus.py — writes the seed corpora of tests/fuzz/corpus/ from the
committed fixtures (tests/fixtures) and booth's own outputs.

Small, real inputs: a few tensors cut out of the oracle's safetensors files,
LoRA files for the tiny model in each layout, the tiny model's configs beside
SD 1.5 / 2.1 ones, prompts, the test images. The HDF5 and message corpora
come from booth itself (tests/fuzz/make_corpus.sh). Standard library only;
never needed by `make test` (the output is committed).

    scripts/make_fuzz_corpus.py            # from the repository root
"""
import json
import os
import shutil
import struct

FIX = "tests/fixtures"
OUT = "tests/fuzz/corpus"


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    meta = header.pop("__metadata__", None)
    data = b[8 + n:]
    return header, meta, data


def write_st(path, tensors, meta=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off, blob = {}, 0, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + blob)


def subset(path, keys, meta="keep"):
    header, m, data = read_st(path)
    out = []
    for k in keys:
        e = header[k]
        a, b = e["data_offsets"]
        out.append((k, e["dtype"], e["shape"], data[a:b]))
    return out, (m if meta == "keep" else meta)


def put(sub, name, data):
    d = os.path.join(OUT, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for sub in ("safetensors", "lora", "tokenizer", "image", "config"):
        shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)

    # ---- safetensors: headers of every kind, a few small tensors each
    te = f"{FIX}/oracle/lora_text_encoder_weights.safetensors"
    header, _, _ = read_st(te)
    keys = sorted(header)[:4]
    t, m = subset(te, keys)
    write_st("/tmp/st0", t, m)
    put("safetensors", "peft_text_encoder", open("/tmp/st0", "rb").read())
    write_st("/tmp/st1", [("a", "F16", [2, 3], bytes(range(12))), ("b", "BF16", [3], bytes(6)),
                          ("c", "I64", [2], struct.pack("<qq", 7, -1)), ("d", "BOOL", [1], b"\x01"),
                          ("e", "F64", [], struct.pack("<d", 0.5)), ("z", "F32", [0, 5], b"")],
             {"format": "pt", "note": "dtypes"})
    put("safetensors", "dtypes", open("/tmp/st1", "rb").read())
    put("safetensors", "empty_header", struct.pack("<Q", 8) + b"{}      ")
    write_st("/tmp/st2", [("x", "I8", [4], b"\x01\xff\x02\xfe"), ("y", "U8", [2, 2], b"abcd"),
                          ("w", "I32", [1], struct.pack("<i", 3)), ("v", "I16", [2], struct.pack("<hh", 1, 2))])
    put("safetensors", "ints", open("/tmp/st2", "rb").read())

    # ---- lora: 0x00 + a key; 0x01 + a file for the tiny model
    for i, k in enumerate([
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight",
            "text_encoder.encoder.layers.1.self_attn.out_proj.lora_A.weight",
            "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_down.weight",
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_k_lora.up.weight",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_linear_layer.down.weight",
            "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight"]):
        put("lora", f"key{i}", b"\x00" + k.encode())
    put("lora", "peft_text_encoder", b"\x01" + open("/tmp/st0", "rb").read())
    kohya = f"{FIX}/oracle/lora_kohya.safetensors"
    header, _, _ = read_st(kohya)
    stems = sorted({k.split(".")[0] for k in header})
    pick = [s for s in stems if s.startswith("lora_te_")][:1] + [s for s in stems if s.startswith("lora_unet_")][:1]
    t, m = subset(kohya, sorted(k for k in header if k.split(".")[0] in pick))
    write_st("/tmp/st3", t, m)
    put("lora", "kohya_two_modules", b"\x01" + open("/tmp/st3", "rb").read())
    diff = f"{FIX}/oracle/pytorch_lora_weights.safetensors"
    header, _, _ = read_st(diff)
    pick = sorted(header)[:2] + sorted(k for k in header if k.startswith("unet."))[:2]
    t, m = subset(diff, pick)
    write_st("/tmp/st4", t, m)
    put("lora", "diffusers_old_layout", b"\x01" + open("/tmp/st4", "rb").read())

    # ---- tokenizer: prompts
    prompts = ["a photo of sks dog", "A SKS Dog in the snow, in the style of van gogh!!",
               "zwx " * 40, "café naïve 東京 🐶 \u200b\u0301", "a\tb\nc  d'll 've 're 123 4567",
               "<|startoftext|>a<|endoftext|>", "x" * 300, "\u00e9\u0065\u0301 \ufb01"]
    for i, p in enumerate(prompts):
        put("tokenizer", f"prompt{i}", p.encode())
    put("tokenizer", "invalid_utf8", b"a \xff\xfe dog \xc3( \xed\xa0\x80 \xf4\x90\x80\x80")

    # ---- image
    for n in sorted(os.listdir(f"{FIX}/images")):
        p = os.path.join(f"{FIX}/images", n)
        if os.path.getsize(p) <= 65536:
            put("image", n, open(p, "rb").read())

    # ---- config: byte = kind (0 unet, 1 vae, 2 text encoder, 3 scheduler, 4 tokenizer_config,
    #      5 special_tokens_map), then the text
    tiny = f"{FIX}/tiny-sd"
    for k, rel in enumerate(["unet/config.json", "vae/config.json", "text_encoder/config.json",
                             "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json",
                             "tokenizer/special_tokens_map.json"]):
        put("config", f"tiny_{k}", bytes([k]) + open(os.path.join(tiny, rel), "rb").read())
    sd15_unet = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
                 "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
                 "cross_attention_dim": 768,
                 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                      "DownBlock2D"],
                 "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
                 "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
                 "out_channels": 4, "sample_size": 64,
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
    put("config", "sd15_0", b"\x00" + json.dumps(sd15_unet).encode())
    sd21 = dict(sd15_unet, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                sample_size=96, upcast_attention=True)
    put("config", "sd21_0", b"\x00" + json.dumps(sd21).encode())
    put("config", "sd_vae_1", b"\x01" + json.dumps({
        "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
        "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
        "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4}).encode())
    put("config", "sd15_clip_2", b"\x02" + json.dumps({
        "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
        "intermediate_size": 3072, "max_position_embeddings": 77, "num_attention_heads": 12,
        "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408, "layer_norm_eps": 1e-05,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}).encode())
    put("config", "sd21_clip_2", b"\x02" + json.dumps({
        "architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024,
        "intermediate_size": 4096, "max_position_embeddings": 77, "num_attention_heads": 16,
        "num_hidden_layers": 23, "projection_dim": 512, "vocab_size": 49408, "torch_dtype": "float32"}).encode())
    put("config", "sd21_sched_3", b"\x03" + json.dumps({
        "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
        "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
        "rescale_betas_zero_snr": True}).encode())
    put("config", "hf_tok_4", b"\x04" + json.dumps({
        "add_prefix_space": False, "bos_token": {"content": "<|startoftext|>", "lstrip": False},
        "do_lower_case": True, "eos_token": "<|endoftext|>", "model_max_length": 1000000000000000019884624838656,
        "pad_token": "!", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}).encode())


if __name__ == "__main__":
    main()
