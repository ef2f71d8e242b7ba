#!/usr/bin/python3
"""booth's nn/ kernels vs PyTorch, side by side, on SD 1.5 shapes at 512 px.

    bench/ops.py [--booth build/bench/bench_ops] [--threads 2] [--iters 5] [--markdown]

For every row this runs booth's bench_ops (a subprocess) and then the same
computation in PyTorch (in this process), alternating row by row so both see
the same machine state, and prints the medians and booth/PyTorch ratios.

Fairness: Debian's torch 1.13 multiplies through whatever libblas.so.3 points
to. OpenBLAS 0.3.21 does not recognise every recent Xeon and then falls back to
slow generic kernels, so OPENBLAS_CORETYPE is set for PyTorch exactly as booth
sets it for itself (SkylakeX on AVX-512 machines, Haswell on AVX2). torch's
convolutions run on its bundled oneDNN. Attention is computed the way diffusers
does on the torch that runs this script: on torch 2, AttnProcessor2_0's
F.scaled_dot_product_attention (CLIP's causal attention with is_causal, as
transformers' sdpa path); on torch 1.13, AttnProcessor's baddbmm, softmax, bmm
(--attention chooses). Current PyTorch is the reference users run: run this
file with a virtualenv's python (docs/BENCHMARKS.md has the recipe), and
/usr/bin/python3 (Debian's torch 1.13) for the second column.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def blas_coretype():
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--booth", default="build/bench/bench_ops")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--markdown", action="store_true", help="print a markdown table for docs/BENCHMARKS.md")
ap.add_argument("--row", action="append", help="only these rows")
ap.add_argument("--attention", choices=("auto", "sdpa", "classic"), default="auto",
                help="PyTorch's attention: sdpa (scaled_dot_product_attention, diffusers' path on torch 2), "
                     "classic (baddbmm/softmax/bmm, diffusers' path on torch 1.13), auto: as diffusers on this torch")
ap.add_argument("--settle", type=float, default=0.5,
                help="seconds of idle time before each side's row: idle OpenBLAS/OpenMP threads spin on "
                     "sched_yield for a while after work and would slow whichever side runs next")
args = ap.parse_args()

if "OPENBLAS_CORETYPE" not in os.environ and blas_coretype():
    os.environ["OPENBLAS_CORETYPE"] = blas_coretype()
import torch  # noqa: E402  (after OPENBLAS_CORETYPE)
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
SDPA = hasattr(F, "scaled_dot_product_attention") if args.attention == "auto" else args.attention == "sdpa"
if SDPA and not hasattr(F, "scaled_dot_product_attention"):
    sys.exit(f"torch {torch.__version__} has no scaled_dot_product_attention: use --attention classic")


SAMPLE_S = 0.02  # as bench_ops.c: fast rows are timed over back-to-back runs filling 20 ms


def med(fn, iters):
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    reps = 1 if once >= SAMPLE_S else int(SAMPLE_S / max(once, 1e-7)) + 1
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        ts.append((time.perf_counter() - t0) / reps)
    return statistics.median(ts) * 1e3


def conv_row(C, H, W, OC=None, B=1):
    OC = OC or C
    x = torch.randn(B, C, H, W)
    w = torch.randn(OC, C, 3, 3) * 0.02
    b = torch.randn(OC)
    dy = torch.randn(B, OC, H, W)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, b, padding=1)

    def fwdbwd(frozen):
        xx = x.detach().requires_grad_(True)
        ww = w.detach().requires_grad_(not frozen)
        bb = b.detach().requires_grad_(not frozen)
        F.conv2d(xx, ww, bb, padding=1).backward(dy)

    return fwd, lambda: fwdbwd(False), lambda: fwdbwd(True)


def gn_row(C, HW, G):
    x = torch.randn(1, C, HW)
    w, b = torch.randn(C), torch.randn(C)
    dy = torch.randn(1, C, HW)

    def fwd():
        with torch.no_grad():
            F.group_norm(x, G, w, b, 1e-5)

    def fwdbwd():
        xx = x.detach().requires_grad_(True)
        ww, bb = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
        F.group_norm(xx, G, ww, bb, 1e-5).backward(dy)

    return fwd, fwdbwd, None


def attn(q, k, v, H, causal=False):
    B, Tq, C = q.shape
    Tk = k.shape[1]
    D = C // H
    if SDPA:
        # diffusers AttnProcessor2_0 (torch 2): [B, H, T, D] views, one fused call; causal as
        # transformers' CLIP sdpa path
        qh, kh, vh = (t.reshape(B, -1, H, D).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal)
        return o.transpose(1, 2).reshape(B, Tq, C)
    # diffusers AttnProcessor on torch 1.13: head_to_batch_dim, baddbmm, softmax, bmm;
    # causal (CLIP's text encoder): the additive mask goes in as baddbmm's input
    qh = q.reshape(B, Tq, H, D).permute(0, 2, 1, 3).reshape(B * H, Tq, D)
    kh = k.reshape(B, Tk, H, D).permute(0, 2, 1, 3).reshape(B * H, Tk, D)
    vh = v.reshape(B, Tk, H, D).permute(0, 2, 1, 3).reshape(B * H, Tk, D)
    if causal:
        mask = torch.full((Tq, Tk), float("-inf"), dtype=q.dtype).triu(1).expand(B * H, Tq, Tk)
        s = torch.baddbmm(mask, qh, kh.transpose(-1, -2), beta=1, alpha=D ** -0.5)
    else:
        empty = torch.empty(B * H, Tq, Tk, dtype=q.dtype)
        s = torch.baddbmm(empty, qh, kh.transpose(-1, -2), beta=0, alpha=D ** -0.5)
    p = s.softmax(dim=-1)
    o = torch.bmm(p, vh)
    return o.reshape(B, H, Tq, D).permute(0, 2, 1, 3).reshape(B, Tq, C)


def attn_row(Tq, Tk, H, D, causal=False):
    q, k, v = torch.randn(1, Tq, H * D), torch.randn(1, Tk, H * D), torch.randn(1, Tk, H * D)
    dy = torch.randn(1, Tq, H * D)

    def fwd():
        with torch.no_grad():
            attn(q, k, v, H, causal)

    def fwdbwd():
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        attn(qq, kk, vv, H, causal).backward(dy)

    return fwd, fwdbwd, None


def xattn_row(Tq, Tk, C, Cc, H):
    x, ctx = torch.randn(1, Tq, C), torch.randn(1, Tk, Cc)
    wq, wk, wv, wo, bo = (torch.randn(C, C) * 0.05, torch.randn(C, Cc) * 0.05, torch.randn(C, Cc) * 0.05,
                          torch.randn(C, C) * 0.05, torch.randn(C))
    dy = torch.randn(1, Tq, C)

    def run(xx, cc):
        o = attn(F.linear(xx, wq), F.linear(cc, wk), F.linear(cc, wv), H)
        return F.linear(o, wo, bo)

    def fwd():
        with torch.no_grad():
            run(x, ctx)

    def fwdbwd():
        # frozen projection weights, as with LoRA on a frozen base: grads w.r.t. x and context
        run(x.detach().requires_grad_(True), ctx.detach().requires_grad_(True)).backward(dy)

    return fwd, fwdbwd, None


def linear_row(M, K, N):
    x, w, b = torch.randn(M, K), torch.randn(N, K) * 0.05, torch.randn(N)
    dy = torch.randn(M, N)

    def fwd():
        with torch.no_grad():
            F.linear(x, w, b)

    def fwdbwd(frozen):
        xx = x.detach().requires_grad_(True)
        ww, bb = w.detach().requires_grad_(not frozen), b.detach().requires_grad_(not frozen)
        F.linear(xx, ww, bb).backward(dy)

    return fwd, lambda: fwdbwd(False), lambda: fwdbwd(True)


ROWS = {
    "conv3x3_320_64": lambda: conv_row(320, 64, 64),
    "conv3x3_640_32": lambda: conv_row(640, 32, 32),
    "conv3x3_1280_16": lambda: conv_row(1280, 16, 16),
    "conv3x3_1280_8": lambda: conv_row(1280, 8, 8),
    "conv3x3_1280_8_b2": lambda: conv_row(1280, 8, 8, B=2),
    "conv3x3_1280_4_b2": lambda: conv_row(1280, 4, 4, B=2),
    "conv_in_4_320_64": lambda: conv_row(4, 64, 64, 320),
    "conv_out_320_4_64": lambda: conv_row(320, 64, 64, 4),
    "vae_conv_512_128": lambda: conv_row(512, 128, 128),
    "vae_conv_256_256": lambda: conv_row(256, 256, 256),
    "vae_conv_128_512": lambda: conv_row(128, 512, 512),
    "tiny_conv_32_128": lambda: conv_row(32, 128, 128),
    "tiny_conv_64_32": lambda: conv_row(64, 32, 32),
    "groupnorm_320_64": lambda: gn_row(320, 4096, 32),
    "self_attn_4096": lambda: attn_row(4096, 4096, 8, 40),
    "self_attn_1024": lambda: attn_row(1024, 1024, 8, 80),
    "self_attn_256": lambda: attn_row(256, 256, 8, 160),
    "self_attn_sd2_4096": lambda: attn_row(4096, 4096, 5, 64),
    "self_attn_sd2_1024": lambda: attn_row(1024, 1024, 10, 64),
    "self_attn_sd2_256": lambda: attn_row(256, 256, 20, 64),
    "clip_attn_77": lambda: attn_row(77, 77, 12, 64, causal=True),
    "tiny_attn_77": lambda: attn_row(77, 77, 4, 8, causal=True),
    "cross_attn_4096x77": lambda: xattn_row(4096, 77, 320, 768, 8),
    "linear_4096_320_2560": lambda: linear_row(4096, 320, 2560),
}

listing = subprocess.run([args.booth, "--list"], capture_output=True, text=True, check=True).stdout
desc = dict(line.split("\t", 1) for line in listing.strip().split("\n"))
results = []
for name, make in ROWS.items():
    if args.row and name not in args.row:
        continue
    time.sleep(args.settle)  # let PyTorch's OpenMP/OpenBLAS threads stop spinning before booth starts
    out = subprocess.run([args.booth, "--row", name, "--iters", str(args.iters), "--threads", str(args.threads)],
                         capture_output=True, text=True, check=True).stdout
    b = json.loads(out.strip().split("\n")[-1])
    fwd, fwdbwd, frozen = make()
    time.sleep(args.settle)
    t = {"fwd_ms": med(fwd, args.iters), "fwdbwd_ms": med(fwdbwd, args.iters)}
    if frozen:
        t["fwdbwd_frozen_ms"] = med(frozen, args.iters)
    for key, label in (("fwd_ms", "forward"), ("fwdbwd_ms", "fwd+bwd"), ("fwdbwd_frozen_ms", "fwd+bwd, frozen W")):
        if key in t and key in b:
            results.append((desc[name].strip(), label, b[key], t[key]))
    del fwd, fwdbwd, frozen

def ms(v):
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


print(f"# booth {os.path.basename(args.booth)} vs torch {torch.__version__} "
      f"(attention: {'scaled_dot_product_attention' if SDPA else 'baddbmm/softmax/bmm'}), {args.threads} threads, "
      f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, median of {args.iters} samples (rows under 20 ms: "
      f"each sample the mean of back-to-back runs filling 20 ms)")
if args.markdown:
    print("| op | pass | booth ms | PyTorch ms | booth/PyTorch |")
    print("|---|---|---:|---:|---:|")
    for op, label, bt, pt in results:
        print(f"| {op} | {label} | {ms(bt)} | {ms(pt)} | {bt / pt:.2f} |")
else:
    print(f"{'op':52s} {'pass':18s} {'booth ms':>9s} {'torch ms':>9s} {'ratio':>6s}")
    for op, label, bt, pt in results:
        print(f"{op:52s} {label:18s} {ms(bt):>9s} {ms(pt):>9s} {bt / pt:6.2f}")
worst = max((bt / pt for _, _, bt, pt in results), default=0)
print(f"worst ratio: {worst:.2f}")
