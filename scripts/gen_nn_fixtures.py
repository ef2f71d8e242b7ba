#!/usr/bin/python3
"""Reference outputs and gradients of every nn/ op, computed by PyTorch.

Writes tests/fixtures/nn_ops.safetensors. For each case NAME:
  NAME.in.<input>    the inputs (float32; token ids as float32 integers)
  NAME.out           the op's output
  NAME.dout          a random upstream gradient
  NAME.grad.<input>  d(sum(out * dout)) / d<input>, by autograd

The case list, shapes and parameters mirror tests/unit/test_nn_ops.c; the C test
checks every tensor's size, so a drift fails loudly. Run with Debian's
python3-torch (no diffusers needed; the two diffusers formulas used below,
GEGLU and the timestep embedding, are written out):

    /usr/bin/python3 scripts/gen_nn_fixtures.py [OUT]

make test never runs this; the output is committed.
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float32)
CASES = {}
META = {}


def case(name, inputs, fn, grad=None, meta=None):
    """inputs: dict name -> tensor; fn(**inputs) -> output tensor."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    leaves = {}
    for k, v in inputs.items():
        t = v.detach().clone()
        if grad is None or k in grad:
            t.requires_grad_(True)
        leaves[k] = t
    out = fn(**leaves)
    dout = torch.randn(out.shape, generator=g)
    (out * dout).sum().backward()
    for k, t in leaves.items():
        CASES[f"{name}.in.{k}"] = t.detach()
        if t.grad is not None:
            CASES[f"{name}.grad.{k}"] = t.grad
    CASES[f"{name}.out"] = out.detach()
    CASES[f"{name}.dout"] = dout
    if meta:
        META[name] = json.dumps(meta)


def randn(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def rand(*shape, seed, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def attention(q, k, v, H, causal):
    B, Tq, HD = q.shape
    Tk = k.shape[1]
    D = HD // H
    qh = q.reshape(B, Tq, H, D).transpose(1, 2)
    kh = k.reshape(B, Tk, H, D).transpose(1, 2)
    vh = v.reshape(B, Tk, H, D).transpose(1, 2)
    s = qh @ kh.transpose(-1, -2) * D ** -0.5
    if causal:
        mask = torch.triu(torch.ones(Tq, Tk, dtype=torch.bool), 1)
        s = s.masked_fill(mask, float("-inf"))
    p = s.softmax(-1)
    return (p @ vh).transpose(1, 2).reshape(B, Tq, HD)


def timestep_embedding(t, dim, flip, shift):
    # diffusers.models.embeddings.get_timestep_embedding, max_period 10000, scale 1
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32)
    exponent = exponent / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def build():
    # linear: M=6, K=5, N=7
    case("linear", dict(x=randn(6, 5, seed=1), w=randn(7, 5, seed=2), b=randn(7, seed=3)),
         lambda x, w, b: F.linear(x, w, b))
    case("linear_nobias", dict(x=randn(6, 5, seed=4), w=randn(7, 5, seed=5)), lambda x, w: F.linear(x, w))

    # conv2d cases: (B, C, H, W, OC, KH, KW, stride, pad t, b, l, r)
    convs = {
        "conv3x3_s1": (2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1),
        "conv3x3_s2": (2, 3, 7, 6, 4, 3, 3, 2, 1, 1, 1, 1),
        "conv1x1": (2, 5, 4, 3, 6, 1, 1, 1, 0, 0, 0, 0),
        "conv3x3_s2_vae": (1, 3, 8, 6, 2, 3, 3, 2, 0, 1, 0, 1),
        "conv5x3_s1": (1, 2, 6, 7, 3, 5, 3, 1, 2, 2, 1, 1),
        "conv3x3_nopad": (2, 2, 5, 5, 3, 3, 3, 1, 0, 0, 0, 0),
        # one case per algorithm mix of nn/cpu/conv2d.c (see test_nn_ops.c)
        "conv3x3_wino": (1, 16, 16, 15, 9, 3, 3, 1, 1, 1, 1, 1),
        "conv3x3_wino_pads": (1, 16, 16, 16, 16, 3, 3, 1, 0, 2, 2, 1),
        "conv3x3_c1": (2, 1, 6, 5, 12, 3, 3, 1, 1, 1, 1, 1),
        "conv3x3_oc1": (1, 12, 5, 7, 1, 3, 3, 1, 1, 1, 1, 1),
        "conv3x3_col2im": (1, 9, 5, 4, 32, 3, 3, 1, 1, 1, 1, 1),
    }
    for i, (name, (B, C, H, W, OC, KH, KW, s, pt, pb, pl, pr)) in enumerate(convs.items()):
        case(name,
             dict(x=randn(B, C, H, W, seed=10 + i), w=randn(OC, C, KH, KW, seed=20 + i, scale=0.3),
                  b=randn(OC, seed=30 + i)),
             lambda x, w, b, s=s, pad=(pl, pr, pt, pb): F.conv2d(F.pad(x, pad), w, b, stride=s))

    # group norm: B=2, C=6, H=5, W=4, G=3, eps 1e-5 (and 1e-6 on a bigger group)
    case("group_norm", dict(x=randn(2, 6, 5, 4, seed=40, scale=2) + 0.5, w=randn(6, seed=41), b=randn(6, seed=42)),
         lambda x, w, b: F.group_norm(x, 3, w, b, 1e-5))
    case("group_norm_eps6", dict(x=randn(1, 8, 6, 6, seed=43), w=randn(8, seed=44), b=randn(8, seed=45)),
         lambda x, w, b: F.group_norm(x, 2, w, b, 1e-6))
    # layer norm: N=5, C=8
    case("layer_norm", dict(x=randn(5, 8, seed=46, scale=3) - 1, w=randn(8, seed=47), b=randn(8, seed=48)),
         lambda x, w, b: F.layer_norm(x, (8,), w, b, 1e-5))

    # activations on 64 values in [-6, 6]
    acts = {
        "silu": F.silu,
        "gelu": lambda x: F.gelu(x),
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    }
    for i, (name, fn) in enumerate(acts.items()):
        case(name, dict(x=rand(64, seed=50 + i, lo=-6, hi=6)), lambda x, fn=fn: fn(x))

    # GEGLU as diffusers: hidden, gate = proj(x).chunk(2, -1); hidden * gelu(gate). M=4, H=6
    def geglu(x):
        a, g = x.chunk(2, dim=-1)
        return a * F.gelu(g)
    case("geglu", dict(x=randn(4, 12, seed=60, scale=2)), geglu)

    case("softmax", dict(x=randn(4, 9, seed=61, scale=3)), lambda x: torch.softmax(x, -1))

    # attention: (B, Tq, Tk, H, D, causal)
    attns = {
        "attn_self": (2, 6, 6, 4, 4, False),      # B*H = 8: per-head backward
        "attn_cross": (2, 6, 5, 4, 3, False),
        "attn_causal": (2, 6, 6, 4, 2, True),
        "attn_self_1head": (1, 7, 7, 1, 5, False),  # B*H = 1: two-pass backward
        "attn_cross_2head": (1, 5, 9, 2, 3, False),
        "attn_causal_2head": (1, 6, 6, 2, 3, True),
        # several blocks per head (64 queries; 128 keys forward, 64 backward), ends not multiples of them
        "attn_d40_blocks": (1, 20, 136, 1, 40, False),
        "attn_d64_blocks": (1, 66, 20, 1, 64, False),
        "attn_causal_blocks": (1, 140, 140, 1, 8, True),
        "attn_heads8_blocks": (2, 72, 72, 4, 4, False),  # B*H = 8: per-head backward
        "attn_causal_heads8": (1, 80, 80, 8, 2, True),
    }
    for i, (name, (B, Tq, Tk, H, D, causal)) in enumerate(attns.items()):
        case(name,
             dict(q=randn(B, Tq, H * D, seed=70 + i), k=randn(B, Tk, H * D, seed=80 + i),
                  v=randn(B, Tk, H * D, seed=90 + i)),
             lambda q, k, v, H=H, causal=causal: attention(q, k, v, H, causal))

    case("upsample2x", dict(x=randn(2, 3, 3, 4, seed=100)), lambda x: F.interpolate(x, scale_factor=2.0,
                                                                                      mode="nearest"))
    case("concat", dict(a=randn(2, 3, 5, seed=101), b=randn(2, 2, 5, seed=102)), lambda a, b: torch.cat([a, b], 1))
    # split into [2,3,5] and [2,2,5]; the output is both parts flattened, one after the other
    case("split", dict(x=randn(2, 5, 5, seed=103)),
         lambda x: torch.cat([x[:, :3].reshape(-1), x[:, 3:].reshape(-1)]))
    case("add", dict(a=randn(3, 7, seed=104), b=randn(3, 7, seed=105)), lambda a, b: a + b)
    case("channel_bias", dict(x=randn(2, 3, 4, seed=106), bias=randn(2, 3, seed=107)),
         lambda x, bias: x + bias[:, :, None])
    case("transpose", dict(x=randn(2, 5, 3, seed=108)), lambda x: x.transpose(1, 2).contiguous())

    ids = torch.tensor([3, 1, 3, 0, 9, 3], dtype=torch.float32)
    case("embedding", dict(ids=ids, table=randn(10, 4, seed=109)),
         lambda ids, table: F.embedding(ids.long(), table), grad={"table"})

    # timestep embedding: (C, flip, shift)
    temb = {"temb_flip": (8, True, 0.0), "temb_noflip_shift1": (8, False, 1.0), "temb_odd": (9, True, 0.0)}
    for name, (C, flip, shift) in temb.items():
        t = torch.tensor([1.0, 500.0, 999.0])
        case(name, dict(t=t), lambda t, C=C, flip=flip, shift=shift: timestep_embedding(t, C, flip, shift))

    case("mse", dict(a=randn(3, 4, 5, seed=110), b=randn(3, 4, 5, seed=111)),
         lambda a, b: F.mse_loss(a, b).reshape(1))


def save(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/nn_ops.safetensors"
    build()
    META["generator"] = f"scripts/gen_nn_fixtures.py, torch {torch.__version__}"
    save(out, CASES, META)
    print(f"wrote {out}: {len(CASES)} tensors")
