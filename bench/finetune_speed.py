"""Fine-tuning speed on this machine: optimizer steps per second of LoRA (U-Net only, and U-Net + text
encoder) against full fine-tuning, same model, data, batch and resolution, through ``latentdiff finetune``'s
own code path (:func:`latentdiff.train.finetune.finetune`). Results go to BENCHMARKS.md.

    nice -n 19 env OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python bench/finetune_speed.py --model latentdiff/assets/default_model
    .venv/bin/python bench/finetune_speed.py                 # no --model: random weights, the default recipe's architecture
    .venv/bin/python bench/finetune_speed.py --steps 12 --batch-size 16 --json out.json

Each mode runs ``--steps`` steps on a 64-image star folder (written by the shapes world); the first
``--warmup`` steps are not timed (allocator and autograd warm-up); the table reports the median seconds per
step over the rest. Latent encoding, model loading and validation are outside the timed steps. Speed
depends on the architecture, not on the weights, so the random model measures what the default model costs.
CPU cost: about 2 × steps full-model forward/backward passes per mode; a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's latentdiff, whichever one is installed
TRAINED = re.compile(r"training ([\d,]+) of")  # finetune's log line before the first step
MODES = {"lora": ["--lora", "{rank}"], "lora+text": ["--lora", "{rank}", "--train-text-encoder"], "full": ["--full"]}


def default_architecture(folder: Path) -> Path:
    """A random model with the default recipe's VAE, text encoder and U-Net (configs/default.yaml)."""
    import torch

    from latentdiff.config import load_config
    from latentdiff.diffusion.schedule import Schedule
    from latentdiff.models.factory import build_text_encoder, build_unet, build_vae
    from latentdiff.models.tokenizer import load_clip_tokenizer
    from latentdiff.pipeline import Pipeline
    from latentdiff.train.config import TrainConfig

    cfg = load_config(ROOT / "configs" / "default.yaml", TrainConfig)
    torch.manual_seed(0)
    tok = load_clip_tokenizer(None)
    tok.model_max_length = cfg.clip.text.max_length
    pipe = Pipeline.from_components(build_unet(cfg.unet.model), build_vae(cfg.vae.model), build_text_encoder(cfg.clip.text),
                                    tok, Schedule.from_config(cfg.unet.schedule))
    pipe.save(folder)
    return folder


def time_mode(mode: str, args, model: str, data: Path, work: Path) -> dict:
    """Run one fine-tune of ``args.steps`` steps; seconds per step after the warm-up ones."""
    import torch

    from latentdiff.cli import build_parser
    from latentdiff.commands.finetune import build_config
    from latentdiff.train import finetune as ft

    flags = [f.format(rank=args.rank) for f in MODES[mode]]
    argv = ["finetune", "--data", str(data), "--out", str(work / mode), "--steps", str(args.steps), "--batch-size",
            str(args.batch_size), "--validation-prompts", "0", "--checkpoint-every", str(args.steps), "--device",
            args.device, *flags] + (["--model", model] if model else [])
    cfg = build_config(build_parser().parse_args(argv))
    stamps: list[float] = []
    lines: list[str] = []
    t0 = time.perf_counter()
    ft.finetune(cfg, on_step=lambda s: stamps.append(time.perf_counter()), log=lines.append)
    trained = next(int(m.group(1).replace(",", "")) for m in map(TRAINED.match, lines) if m)
    steps = [b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:])]
    sec = statistics.median(steps)
    return {"mode": mode, "s_per_step": sec, "steps_per_s": 1 / sec, "images_per_s": args.batch_size / sec,
            "timed_steps": len(steps), "step_times": steps, "trained_params": trained,
            "total_wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model to fine-tune (default: random weights, default architecture)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.steps < args.warmup + 2:
        p.error("--steps must exceed --warmup by at least 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from latentdiff.data.shapes import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or str(default_architecture(work / "model"))
        data = write_dataset(work / "stars", 64, seed=0, star="only", workers=1)
        results = [time_mode(m, args, model, data, work) for m in args.modes]
    by = {r["mode"]: r for r in results}
    out = {"model": args.model or "default architecture, random weights", "batch_size": args.batch_size,
           "rank": args.rank, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "results": results}
    if "full" in by and "lora" in by:
        out["full_over_lora"] = by["full"]["s_per_step"] / by["lora"]["s_per_step"]
    for r in results:
        print(f"{r['mode']:>10}: {r['s_per_step']:.3f} s/step  {r['steps_per_s']:.2f} steps/s  "
              f"{r['images_per_s']:.1f} images/s  trained parameters {r['trained_params']:,}")
    if "full_over_lora" in out:
        print(f"a full step costs {out['full_over_lora']:.2f}x a LoRA step")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
