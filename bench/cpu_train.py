"""Training throughput of the default recipe's networks on this CPU: fp32 (SDPA attention, the stock
diffusers path) against the path ``mixed_precision: auto`` takes (bf16 autocast with the classic attention
processor where the CPU computes bf16 natively, else fp32), side by side in one process, runs interleaved.

    .venv/bin/python bench/cpu_train.py                        # the U-Net, VAE and CLIP of configs/default.yaml
    .venv/bin/python bench/cpu_train.py --config configs/default.yaml --nets unet --repeats 5 --json out.json
    .venv/bin/python bench/cpu_train.py --config configs/default_v2.yaml --nets unet   # U-Net + text encoder

Each timed step is a forward, a backward and an AdamW step on random data of the stage's shapes and batch;
with ``unet.text_encoder_lr_scale`` > 0 the U-Net's step includes the text encoder, as the recipe trains it.
Prints samples/s per network and path, the ratio, the CPU model (lscpu) and which bf16 unit it has.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def nets(cfg):
    """(name, module, batch, step function building a loss from random inputs) for each network."""
    from latentdiff.models.factory import build_clip, build_text_encoder, build_unet, build_vae
    from latentdiff.train.stages import UNetWithText

    u, v, c = cfg.unet, cfg.vae, cfg.clip
    side = u.model.sample_size
    length = c.text.max_length

    def unet_loss(m, b):
        x = torch.randn(b, 4, side, side)
        if isinstance(m, UNetWithText):  # the text encoder trains too: token ids in, encoded in the step
            out = m(x, torch.randint(0, 1000, (b,)), torch.randint(0, m.text_encoder.config.vocab_size, (b, length)))
        else:
            out = m(x, torch.randint(0, 1000, (b,)),
                    encoder_hidden_states=torch.randn(b, length, c.text.hidden_size)).sample
        return (out.float() - x).pow(2).mean()

    unet = build_unet(u.model)
    if u.text_encoder_lr_scale > 0:
        unet = UNetWithText(unet, build_text_encoder(c.text))

    def vae_loss(m, b):
        x = torch.rand(b, 3, v.crop or 64, v.crop or 64) * 2 - 1
        post = m.encode(x).latent_dist
        return (m.decode(post.sample()).sample.float() - x).abs().mean() + 1e-6 * post.kl().mean()

    def clip_loss(m, b):
        ids = torch.randint(0, m.config.text_config.vocab_size, (b, length))
        return m(input_ids=ids, pixel_values=torch.rand(b, 3, 64, 64), return_loss=True).loss

    return {"unet": (unet, u.loop.batch_size, unet_loss),
            "vae": (build_vae(v.model), v.loop.batch_size, vae_loss),
            "clip": (build_clip(c.text, c.image), c.loop.batch_size, clip_loss)}


def timed_steps(model, batch: int, loss_fn, bf16: bool, steps: int) -> float:
    """Seconds per training step (the first, warm-up step not counted)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    times = []
    for i in range(steps + 1):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    from latentdiff.config import load_config
    from latentdiff.speed import classic_attention, cpu_bf16_kind
    from latentdiff.train.config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--nets", default="unet,vae,clip")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per path")
    ap.add_argument("--compile", action="store_true",
                    help="also time each path with the model under torch.compile (inductor; its compilation, "
                         "the first step, is reported apart)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, TrainConfig)
    kind = cpu_bf16_kind()
    print(f"CPU: {cpu_model()}; native bf16: {kind or 'none'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    built, results = nets(cfg), {}
    for name in args.nets.split(","):
        model, batch, loss_fn = built[name]
        stock = copy.deepcopy(model).train()  # fp32, diffusers' default (SDPA) attention
        ours = copy.deepcopy(model).train()
        if kind is not None:
            classic_attention(ours)
        paths = {"fp32": (stock, False), "recipe": (ours, kind is not None)}
        if args.compile:  # compiled copies of both; the first step of each is its compilation
            for key, (m, bf16) in list(paths.items()):
                compiled = copy.deepcopy(m).train()
                compiled.compile()
                t0 = time.perf_counter()
                timed_steps(compiled, batch, loss_fn, bf16, 1)  # compiles at the first
                took = time.perf_counter() - t0
                print(f"{name}: {key}+compile first two steps (compilation + one) {took:.1f} s", flush=True)
                paths[f"{key}+compile"] = (compiled, bf16)
        runs = {k: [] for k in paths}
        for _ in range(args.repeats):
            for key, (m, bf16) in paths.items():
                runs[key].append(timed_steps(m, batch, loss_fn, bf16, args.steps))
        sps = {k: batch / statistics.median(v) for k, v in runs.items()}
        results[name] = {"batch": batch, "fp32_samples_per_s": sps["fp32"], "recipe_samples_per_s": sps["recipe"],
                         "recipe_path": (f"bf16 autocast + classic attention ({kind})" if kind
                                         else "fp32 (no native bf16)"),
                         "ratio": sps["recipe"] / sps["fp32"]}
        results[name].update({f"{k}_samples_per_s": v for k, v in sps.items() if "+" in k})
        extra = "".join(f"   {k} {v:7.1f} samples/s ({v / sps['fp32']:.2f}x)" for k, v in sps.items() if "+" in k)
        print(f"{name:5s} batch {batch:3d}: fp32 {sps['fp32']:7.1f} samples/s   recipe {sps['recipe']:7.1f} samples/s"
              f"   ({results[name]['recipe_path']})   ratio {results[name]['ratio']:.2f}x{extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "bf16": kind, "nets": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
