#!/usr/bin/python3
"""booth vs PyTorch + diffusers on whole models: inference and one DreamBooth LoRA step.

    bench/model.py [--booth build/bench/bench_model] [--cli build/booth]
                   [--python /tmp/benchenv/bin/python] [--sd15 /tmp/sd15] [--sd15-fp16 /tmp/sd15h]
                   [--tiny tests/fixtures/tiny-sd] [--threads 2] [--iters N]
                   [--rounds R] [--row NAME ...] [--markdown] [--json FILE]

Rows (see ROWS below; --list prints them):
  unet_fwd_*   UNet forward of a classifier-free-guidance pair (batch 2) with a
               77-token context; vae_dec_*: VAE decode of one latent.
  train_*      one DreamBooth step with prior preservation (1 instance + 1 class
               example), LoRA rank 4 on to_q/to_k/to_v/to_out.0, text encoder
               frozen but run every step, UNet forward + backward, clip_grad_norm
               to 1, AdamW. PyTorch does it the way diffusers' train_dreambooth_lora
               does: UNet2DConditionModel + peft LoRA (unet.add_adapter), AdamW;
               *_ckpt rows add unet.enable_gradient_checkpointing() / booth's
               --checkpoint.
  generate_*   `booth generate` end to end (booth only): total time, peak RSS.
  *_sd15h*     the same on an fp16 folder, as real snapshots ship: booth keeps its weight
               matrices in fp16 and widens them per use (the same float32 arithmetic);
               PyTorch loads the same files (diffusers' variant="fp16") upcast to float32.

Every measurement is its own process (booth's bench_model, or this script in
--torch-worker mode under --python), so each reports its own peak RSS
(getrusage ru_maxrss, which includes loading the weights). Within a row the two
sides run back to back; --rounds repeats the whole list and reports the median
per side. Each process times N runs after one warm-up run and reports the median.

Fairness: the same model folder (booth writes the diffusers layout), float32,
the same thread count (booth's pool; torch.set_num_threads and OpenBLAS's
threads for PyTorch), and OPENBLAS_CORETYPE set for PyTorch exactly as booth
sets it for itself (SkylakeX on AVX-512, Haswell on AVX2: OpenBLAS 0.3.21
otherwise falls back to slow Prescott kernels on recent Xeons). PyTorch is
Debian's torch 1.13 (OpenBLAS through libblas.so.3, oneDNN convolutions;
diffusers uses its baddbmm/softmax/bmm AttnProcessor there). The VAE encode of
diffusers' training loop is left out on both sides (booth caches latents).

Needs a virtualenv with diffusers for the PyTorch side, e.g.
  /usr/bin/python3 -m venv --system-site-packages /tmp/benchenv
  /tmp/benchenv/bin/pip install --no-deps diffusers==0.25.1 transformers==4.35.2 peft==0.7.1 \\
      accelerate==0.25.0 safetensors==0.4.2 huggingface_hub==0.20.3 tokenizers==0.15.2 \\
      packaging tqdm filelock regex fsspec importlib_metadata zipp
and SD 1.5-sized folders: build/booth init-model --arch sd15 --out /tmp/sd15 (and
--dtype fp16 --out /tmp/sd15h: the same weights rounded to fp16).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


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


# ----------------------------------------------------------------- PyTorch side

# the same token ids booth's bench_model uses (BOS "a photo of sks dog" / "a photo of dog" EOS, padded with EOS)
PROMPT_IDS = [[49406, 320, 1125, 539, 48136, 1929], [49406, 320, 1125, 539, 1929, 49407]]


def variant(model, sub):
    """diffusers' variant name when a part ships only as NAME.fp16/.bf16.safetensors (as booth
    init-model --dtype fp16 writes it): PyTorch then loads those files and upcasts to float32."""
    d = os.path.join(model, sub)
    names = os.listdir(d) if os.path.isdir(d) else []
    if any(n.endswith(".safetensors") and n.count(".") == 1 for n in names):
        return None
    for v in ("fp16", "bf16"):
        if any(n.endswith(f".{v}.safetensors") for n in names):
            return v
    return None


def torch_worker(a):
    import resource

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    def rss_now_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    t0 = time.perf_counter()
    if a.task == "unet_fwd":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet", torch_dtype=torch.float32,
                                                    variant=variant(a.model, "unet")).eval()
        h = a.px // 8 if a.px else unet.config.sample_size
        x = torch.randn(2, unet.config.in_channels, h, h)
        ehs = torch.randn(2, 77, unet.config.cross_attention_dim)
        t = torch.tensor([500.0, 500.0])

        def run():
            with torch.no_grad():
                unet(x, t, encoder_hidden_states=ehs).sample

    elif a.task == "vae_dec":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae", torch_dtype=torch.float32,
                                            variant=variant(a.model, "vae")).eval()
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        h = a.px // f if a.px else vae.config.sample_size // f
        z = torch.randn(1, vae.config.latent_channels, h, h)

        def run():
            with torch.no_grad():
                vae.decode(z).sample

    elif a.task == "train":
        import torch.nn.functional as F
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder", torch_dtype=torch.float32,
                                                     variant=variant(a.model, "text_encoder"))
        unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet", torch_dtype=torch.float32,
                                                    variant=variant(a.model, "unet"))
        noise_scheduler = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
        # as train_dreambooth_lora.py (diffusers 0.25.1) sets things up
        text_encoder.requires_grad_(False)
        unet.requires_grad_(False)
        if a.checkpoint:
            unet.enable_gradient_checkpointing()
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        unet.train()
        h = a.px // 8 if a.px else unet.config.sample_size
        ids = torch.tensor([p + [49407] * (77 - len(p)) for p in PROMPT_IDS])
        latents = torch.randn(2, unet.config.in_channels, h, h)  # [instance, class], as the collate_fn stacks them
        noise = torch.randn_like(latents)
        timesteps = torch.tensor([500, 700])

        def run():
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            ehs = text_encoder(ids)[0]
            pred = unet(noisy, timesteps, ehs, return_dict=False)[0]
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(noise, 2, dim=0)
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            loss = loss + 1.0 * F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()

    else:
        raise SystemExit(f"unknown task {a.task}")
    load_s = time.perf_counter() - t0
    rss_loaded = rss_now_mib()
    peak_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run()  # warm-up
    times = []
    for _ in range(a.iters):
        t1 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t1)
    s = sorted(times)
    print(json.dumps({
        "side": "torch", "task": a.task, "model": a.model, "px": a.px, "checkpoint": a.checkpoint,
        "threads": torch.get_num_threads(), "iters": a.iters, "median_s": statistics.median(times),
        "min_s": s[0], "max_s": s[-1], "times_s": [round(t, 4) for t in times], "load_s": round(load_s, 2),
        "rss_loaded_mib": round(rss_loaded), "peak_rss_loaded_mib": round(peak_loaded), "torch": torch.__version__,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


# ------------------------------------------------------------------ the driver

def run_child(cmd, env):
    """Runs cmd; returns its stdout (the process reports its own peak RSS)."""
    p = subprocess.run(cmd, capture_output=True, env=env, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout


def run_generate(a, model, px, steps):
    """`booth generate` as a user runs it: wall time and peak RSS of that process (wait4)."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [a.cli, "generate", "--model", model, "--prompt", "a photo of sks dog", "--steps", str(steps),
               "--sampler", "pndm", "--width", str(px), "--height", str(px), "--seed", "0",
               "--out", os.path.join(d, "x.png")]
        env = dict(os.environ, BOOTH_THREADS=str(a.threads))
        with open(os.path.join(d, "stderr"), "w+") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
            _, status, ru = os.wait4(p.pid, 0)  # the rusage of that process alone
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            if p.returncode != 0:
                err.seek(0)
                sys.stderr.write(err.read()[-4000:])
                raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return {"side": "booth", "task": "generate", "median_s": wall, "times_s": [round(wall, 2)],
            "peak_rss_mib": ru.ru_maxrss / 1024, "steps": steps, "px": px}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--booth", default=os.path.join(ROOT, "build/bench/bench_model"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "build/booth"))
    ap.add_argument("--python", default="/tmp/benchenv/bin/python" if os.path.exists("/tmp/benchenv/bin/python")
                    else sys.executable, help="a Python with torch, diffusers, transformers and peft")
    ap.add_argument("--sd15", default="/tmp/sd15", help="SD 1.5-sized model folder (booth init-model --arch sd15)")
    ap.add_argument("--sd15-fp16", default="/tmp/sd15h",
                    help="the same in fp16, as real snapshots ship (booth init-model --arch sd15 --dtype fp16)")
    ap.add_argument("--tiny", default=os.path.join(ROOT, "tests/fixtures/tiny-sd"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=0, help="timed runs per process (default: per row)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every row this often, alternating sides")
    ap.add_argument("--row", action="append", help="only these rows (repeatable)")
    ap.add_argument("--side", choices=["both", "booth", "torch"], default="both")
    ap.add_argument("--torch-blas-threads", type=int, default=0,
                    help="OPENBLAS_NUM_THREADS for PyTorch (default: --threads; 1 avoids OpenMP x OpenBLAS "
                         "oversubscription, which helps PyTorch on the tiny model)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables for docs/BENCHMARKS.md")
    ap.add_argument("--json", help="append every measurement as a JSON line to this file")
    # worker mode (internal)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--px", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        a.iters = a.iters or 3
        return torch_worker(a)

    tiny, sd15, sd15h = a.tiny, a.sd15, a.sd15_fp16
    # name: (task, model, px, checkpoint, default iters, description)
    ROWS = {
        "unet_fwd_tiny": ("unet_fwd", tiny, 128, False, 20, "UNet forward, tiny, 128 px, batch 2"),
        "vae_dec_tiny": ("vae_dec", tiny, 128, False, 20, "VAE decode, tiny, 128 px, batch 1"),
        "unet_fwd_sd15": ("unet_fwd", sd15, 512, False, 3, "UNet forward, SD 1.5, 512 px, batch 2"),
        "vae_dec_sd15": ("vae_dec", sd15, 512, False, 3, "VAE decode, SD 1.5, 512 px, batch 1"),
        "train_tiny": ("train", tiny, 128, False, 20, "DreamBooth step, tiny, 128 px"),
        "train_tiny_ckpt": ("train", tiny, 128, True, 20, "DreamBooth step, tiny, 128 px, grad. checkpointing"),
        "train_sd15_256": ("train", sd15, 256, False, 3, "DreamBooth step, SD 1.5, 256 px"),
        "train_sd15_256_ckpt": ("train", sd15, 256, True, 3, "DreamBooth step, SD 1.5, 256 px, grad. checkpointing"),
        "train_sd15_512": ("train", sd15, 512, False, 2, "DreamBooth step, SD 1.5, 512 px"),
        "train_sd15_512_ckpt": ("train", sd15, 512, True, 2, "DreamBooth step, SD 1.5, 512 px, grad. checkpointing"),
        "generate_sd15_512": ("generate", sd15, 512, False, 20, "booth generate, SD 1.5, 512 px, 20 PNDM steps"),
        # an fp16 snapshot: booth keeps the weight matrices in fp16 and widens them per use (the same
        # float32 arithmetic); PyTorch loads the same files upcast to float32, as diffusers' script does
        "unet_fwd_sd15h": ("unet_fwd", sd15h, 512, False, 3, "UNet forward, SD 1.5 fp16 files, 512 px, batch 2"),
        "vae_dec_sd15h": ("vae_dec", sd15h, 512, False, 3, "VAE decode, SD 1.5 fp16 files, 512 px, batch 1"),
        "train_sd15h_256": ("train", sd15h, 256, False, 3, "DreamBooth step, SD 1.5 fp16 files, 256 px"),
        "train_sd15h_256_ckpt": ("train", sd15h, 256, True, 3,
                                 "DreamBooth step, SD 1.5 fp16 files, 256 px, grad. checkpointing"),
        "train_sd15h_512": ("train", sd15h, 512, False, 2, "DreamBooth step, SD 1.5 fp16 files, 512 px"),
        "train_sd15h_512_ckpt": ("train", sd15h, 512, True, 2,
                                 "DreamBooth step, SD 1.5 fp16 files, 512 px, grad. checkpointing"),
        "generate_sd15h_512": ("generate", sd15h, 512, False, 20,
                               "booth generate, SD 1.5 fp16 files, 512 px, 20 PNDM steps"),
    }
    if a.list:
        for k, v in ROWS.items():
            print(f"{k:22s} {v[5]}")
        return
    names = [n for n in ROWS if not a.row or n in a.row]
    for n in a.row or []:
        if n not in ROWS:
            raise SystemExit(f"unknown row {n} (see --list)")

    coretype = os.environ.get("OPENBLAS_CORETYPE") or blas_coretype()
    env_booth = dict(os.environ)
    env_torch = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.torch_blas_threads or a.threads),
                     OMP_NUM_THREADS=str(a.threads))
    if coretype:
        env_torch["OPENBLAS_CORETYPE"] = coretype

    res = {}  # (row, side) -> list of reports
    jf = open(a.json, "a") if a.json else None
    for rnd in range(a.rounds):
        for n in names:
            task, model, px, ckpt, iters, _ = ROWS[n]
            iters = a.iters or iters
            sides = ["booth"] if task == "generate" else (["booth", "torch"] if a.side == "both" else [a.side])
            for side in sides:
                if task == "generate":
                    if side != "booth":
                        continue
                    r = run_generate(a, model, px, iters)
                else:
                    args = ["--task", task, "--model", model, "--px", str(px), "--iters", str(iters),
                            "--threads", str(a.threads)] + (["--checkpoint"] if ckpt else [])
                    cmd = [a.booth] + args if side == "booth" else [a.python, os.path.abspath(__file__),
                                                                     "--torch-worker"] + args
                    out = run_child(cmd, env_booth if side == "booth" else env_torch)
                    r = json.loads(out.strip().split("\n")[-1])
                r["row"], r["round"] = n, rnd
                res.setdefault((n, side), []).append(r)
                if jf:
                    jf.write(json.dumps(r) + "\n")
                    jf.flush()
                print(f"# {n} {side}: median {r['median_s']:.3f} s (runs {r['times_s']}), "
                      f"peak RSS {r['peak_rss_mib'] / 1024:.2f} GiB", file=sys.stderr, flush=True)

    def agg(n, side):
        rs = res.get((n, side))
        if not rs:
            return None
        return (statistics.median(r["median_s"] for r in rs), max(r["peak_rss_mib"] for r in rs) / 1024,
                [round(r["median_s"], 3) for r in rs])

    tv = "?"
    for (n, side), rs in res.items():
        if side == "torch":
            tv = rs[0].get("torch", "?")
    print(f"# booth {os.path.relpath(a.booth)} vs torch {tv} + diffusers, {a.threads} threads "
          f"(PyTorch: OpenBLAS {a.torch_blas_threads or a.threads}), OPENBLAS_CORETYPE={coretype}, float32 "
          f"arithmetic (booth keeps an fp16 folder's weights in fp16, PyTorch upcasts them); "
          f"median of per-process medians over {a.rounds} round(s)")
    rows = []
    for n in names:
        b, t = agg(n, "booth"), agg(n, "torch")
        rows.append((n, ROWS[n][5], b, t))
    fmt_s = lambda x: f"{x:.3f}" if x < 1 else f"{x:.2f}"
    if a.markdown:
        print("| row | booth s | PyTorch s | booth/PyTorch | booth peak RSS GiB | PyTorch peak RSS GiB | RSS ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for n, d, b, t in rows:
            bs = fmt_s(b[0]) if b else "-"
            ts = fmt_s(t[0]) if t else "-"
            ratio = f"{b[0] / t[0]:.2f}" if b and t else "-"
            br = f"{b[1]:.2f}" if b else "-"
            tr = f"{t[1]:.2f}" if t else "-"
            rr = f"{b[1] / t[1]:.2f}" if b and t else "-"
            print(f"| {d} | {bs} | {ts} | {ratio} | {br} | {tr} | {rr} |")
    else:
        print(f"{'row':22s} {'booth s':>9s} {'torch s':>9s} {'ratio':>6s} {'booth GiB':>9s} {'torch GiB':>9s} "
              f"{'ratio':>6s}  per-round booth / torch")
        for n, d, b, t in rows:
            bs = fmt_s(b[0]) if b else "-"
            ts = fmt_s(t[0]) if t else "-"
            print(f"{n:22s} {bs:>9s} {ts:>9s} {(b[0] / t[0] if b and t else float('nan')):6.2f} "
                  f"{(b[1] if b else float('nan')):9.2f} {(t[1] if t else float('nan')):9.2f} "
                  f"{(b[1] / t[1] if b and t else float('nan')):6.2f}  {b[2] if b else '-'} / {t[2] if t else '-'}")
    # training targets: booth with checkpointing vs PyTorch's best (time and memory taken separately)
    for size in ("tiny", "sd15_256", "sd15_512", "sd15h_256", "sd15h_512"):
        bc = agg(f"train_{size}_ckpt", "booth")
        ts = [x for x in (agg(f"train_{size}", "torch"), agg(f"train_{size}_ckpt", "torch")) if x]
        if bc and ts:
            bt, br = min(x[0] for x in ts), min(x[1] for x in ts)
            print(f"# train {size}: booth --checkpoint vs PyTorch's best: time {bc[0] / bt:.2f}x (target <= 0.7), "
                  f"peak RSS {bc[1] / br:.2f}x (target <= 0.5)")


if __name__ == "__main__":
    main()
