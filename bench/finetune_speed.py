"""Fine-tuning speed on this machine: optimizer steps per second of LoRA (U-Net only, and U-Net + text
encoder) against full fine-tuning, same model, data, batch and resolution, through ``latentdiff finetune``'s
own code path (:func:`latentdiff.train.finetune.finetune`). Results go to BENCHMARKS.md.

    nice -n 19 env OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python bench/finetune_speed.py \\
        --model latentdiff/assets/default_model
    .venv/bin/python bench/finetune_speed.py   # no --model: random weights, the default recipe's architecture
    .venv/bin/python bench/finetune_speed.py --steps 12 --batch-size 16 --json out.json

Each mode runs ``--steps`` steps on a 64-image star folder (written by the shapes world), ``--rounds``
times in alternating order; the first ``--warmup`` steps and the last (which writes the checkpoint) are not
timed. Reported: the median **CPU seconds** per step (process time; with one thread this is what a step
costs, whatever else the shared machine is doing) and the median wall seconds per step. Latent encoding,
model loading and validation are outside the timed steps. Speed depends on the architecture, not on the
weights, so the random model measures what the default model costs.
CPU cost: rounds × modes × steps training steps (~1–2 CPU s each at batch 16); about 3 CPU minutes by default.
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
    pipe = Pipeline.from_components(build_unet(cfg.unet.model), build_vae(cfg.vae.model),
                                    build_text_encoder(cfg.clip.text), tok, Schedule.from_config(cfg.unet.schedule))
    pipe.save(folder)
    return folder


def time_mode(mode: str, args, model: str, data: Path, out: Path) -> dict:
    """One fine-tune of ``args.steps`` steps: wall and CPU seconds of each step after the warm-up ones."""
    from latentdiff.cli import build_parser
    from latentdiff.commands.finetune import build_config
    from latentdiff.train import finetune as ft

    flags = [f.format(rank=args.rank) for f in MODES[mode]]
    argv = ["finetune", "--data", str(data), "--out", str(out), "--steps", str(args.steps), "--batch-size",
            str(args.batch_size), "--validation-prompts", "0", "--checkpoint-every", str(10**9), "--device",
            args.device, *flags] + (["--model", model] if model else [])
    cfg = build_config(build_parser().parse_args(argv))
    stamps: list[tuple[float, float]] = []
    lines: list[str] = []
    ft.finetune(cfg, on_step=lambda s: stamps.append((time.perf_counter(), time.process_time())), log=lines.append)
    trained = next(int(m.group(1).replace(",", "")) for m in map(TRAINED.match, lines) if m)
    timed = stamps[args.warmup:-1]  # the last step also writes the final checkpoint
    wall = [b[0] - a[0] for a, b in zip(timed, timed[1:])]
    cpu = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
    return {"mode": mode, "wall": wall, "cpu": cpu, "trained_params": trained}


def summarise(runs: list[dict], batch: int) -> dict:
    """Per mode: median wall and CPU seconds per step over every timed step of every round."""
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        wall = statistics.median(x for r in mine for x in r["wall"])
        cpu = statistics.median(x for r in mine for x in r["cpu"])
        out[mode] = {"wall_s_per_step": wall, "cpu_s_per_step": cpu, "steps_per_s": 1 / wall,
                     "steps_per_cpu_s": 1 / cpu, "images_per_s": batch / wall,
                     "timed_steps": sum(len(r["wall"]) for r in mine),
                     "trained_params": mine[0]["trained_params"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model to fine-tune (default: random weights, default architecture)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode, in alternating order")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.steps < args.warmup + 3:
        p.error("--steps must exceed --warmup by at least 3")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from latentdiff.data.shapes import write_dataset

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or str(default_architecture(work / "model"))
        data = write_dataset(work / "stars", 64, seed=0, star="only", workers=1)
        for k in range(args.rounds):  # rounds alternate the order, so no mode always runs first
            for mode in (args.modes if k % 2 == 0 else args.modes[::-1]):
                runs.append(time_mode(mode, args, model, data, work / f"{mode}-{k}"))
    by = summarise(runs, args.batch_size)
    out = {"model": args.model or "default architecture, random weights", "batch_size": args.batch_size,
           "rank": args.rank, "threads": torch.get_num_threads(), "rounds": args.rounds,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "load_average": os.getloadavg(), "modes": by, "runs": runs}
    if "full" in by and "lora" in by:
        out["full_over_lora_cpu"] = by["full"]["cpu_s_per_step"] / by["lora"]["cpu_s_per_step"]
        out["full_over_lora_wall"] = by["full"]["wall_s_per_step"] / by["lora"]["wall_s_per_step"]
    for mode, r in by.items():
        print(f"{mode:>10}: {r['cpu_s_per_step']:.3f} CPU s/step ({r['steps_per_cpu_s']:.2f} steps per CPU second), "
              f"wall {r['wall_s_per_step']:.3f} s/step ({r['steps_per_s']:.2f} steps/s); "
              f"trained parameters {r['trained_params']:,}")
    if "full_over_lora_cpu" in out:
        print(f"a full step costs {out['full_over_lora_cpu']:.2f}x a LoRA step in CPU time "
              f"({out['full_over_lora_wall']:.2f}x in wall time)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
