"""latentdiff vs stock diffusers ``StableDiffusionPipeline`` on the CPU: same weights, sampler, steps,
guidance, seed and batch, in one process, runs interleaved: stock diffusers in float32, latentdiff's plain
path (float32) and latentdiff's fast path (``--speed``, default ``auto``: what this CPU supports), for each
batch size of ``--num-images``; plus the start-up of ``latentdiff generate`` (interpreter + imports + model
load) next to the import floor, measured in fresh processes in the same run.

    .venv/bin/python bench/cpu_generate.py                      # the default model, 1 and 4 images, dpm++ 25 steps
    .venv/bin/python bench/cpu_generate.py --model PATH --steps 10 --repeats 5 --json out.json
    .venv/bin/python bench/cpu_generate.py --speed bf16,eager,threads=2 --num-images 4

All three get the same diffusers scheduler object type and config (``Pipeline.make_scheduler``) and the
same initial latents (drawn on the CPU by latentdiff's per-image generators), so stock diffusers and the
plain path draw the same images (the largest pixel difference proves it measured the same work) and the fast
path's largest pixel difference from them is its rounding. The header names the CPU (``lscpu``'s model
name), its native bf16 (``latentdiff.speed.cpu_bf16_kind``) and the options ``--speed`` resolved to.
Results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

STARTUP_SNIPPET = """
import time, sys
t0 = time.perf_counter()
from latentdiff.cli import build_parser
args = build_parser().parse_args(["generate", "a red circle", "--device", "cpu"])
args.own_process = True  # as `latentdiff generate` sets it
from latentdiff.commands.generate import load_pipeline
t1 = time.perf_counter()
load_pipeline(args, None if sys.argv[1] == "-" else sys.argv[1], "cpu")
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""
# What any Stable Diffusion pipeline on these libraries must import: the floor under our start-up.
FLOOR_SNIPPET = """
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
print(0, 0)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fresh_process(snippet: str, model: str | None) -> tuple[float, float, float, float]:
    """(wall s, CPU s, the snippet's two timings) of one fresh interpreter running ``snippet``."""
    t, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, "-c", snippet, model or "-"], capture_output=True, text=True, check=False)
    total, cpu = time.perf_counter() - t, _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"start-up run failed:\n{proc.stderr}")
    imp, load = map(float, proc.stdout.split()[-2:])
    return total, cpu, imp, load


def startup(model: str | None, repeats: int) -> dict:
    """A fresh process that imports the CLI and the pipeline and loads the model (what ``latentdiff generate``
    does before sampling) against one that only imports torch, diffusers' U-Net/VAE and transformers' CLIP
    (the floor), alternating: medians of wall time and of CPU time (user + system: what the process itself
    spent, much less moved by other busy processes than wall time), and the median of the paired differences."""
    runs, floor = [], []
    for _ in range(repeats):
        runs.append(_fresh_process(STARTUP_SNIPPET, model))
        floor.append(_fresh_process(FLOOR_SNIPPET, model))
    total, cpu, imp, load = (statistics.median(r[i] for r in runs) for i in range(4))
    return {"startup_s": total, "startup_cpu_s": cpu, "import_s": imp, "load_s": load,
            "library_import_floor_s": statistics.median(f[0] for f in floor),
            "library_import_floor_cpu_s": statistics.median(f[1] for f in floor),
            "startup_overhead_s": statistics.median(r[0] - f[0] for r, f in zip(runs, floor)),
            "startup_overhead_cpu_s": statistics.median(r[1] - f[1] for r, f in zip(runs, floor)),
            "startup_runs": runs, "floor_runs": floor}


def diffusers_pipeline(pipe, model: str | None):
    import torch
    from diffusers import StableDiffusionPipeline

    path = Path(model) if model else pipe.path
    if path.is_dir():
        sd = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, local_files_only=True,
                                                     dtype=torch.float32)  # as latentdiff loads fp16 folders
    else:
        sd = StableDiffusionPipeline.from_single_file(str(path), config=str(path.with_name(path.stem + "_config")),
                                                      local_files_only=True)
    sd.set_progress_bar_config(disable=True)
    return sd


def load(args) -> dict:
    """The three pipelines on the same weights: latentdiff plain, latentdiff fast (``args.speed``; '': not
    measured), stock diffusers with latentdiff's scheduler. A ``threads`` option of the fast path is
    process-wide, so all three run with the same threads."""
    from latentdiff.pipeline import Pipeline
    from latentdiff.speed import parse_speed

    pipe = Pipeline.load(args.model, device="cpu")
    fast = Pipeline.load(args.model, device="cpu").optimize(parse_speed(args.speed)) if args.speed else None
    sd = diffusers_pipeline(pipe, args.model)
    sd.scheduler = pipe.make_scheduler(args.sampler)  # the same scheduler type and config on both sides
    return {"plain": pipe, "fast": fast, "diffusers": sd}


def bench(args, pipes: dict | None = None) -> dict:
    """Times of ``args.num_images`` images (one batch) on each pipeline: a warm-up call each (its time is
    ``first_s``: compilation when the fast path compiles), then ``args.repeats`` rounds, interleaved, the
    order alternating."""
    import numpy as np
    import torch

    pipes = pipes or load(args)
    pipe, fast, sd = pipes["plain"], pipes["fast"], pipes["diffusers"]
    n = args.num_images
    opts = pipe.resolve(args.steps, args.guidance, args.sampler)
    seeds = list(range(args.seed, args.seed + n))

    def ours(p):  # PIL images, as both pipelines return by default
        return lambda: p.generate(args.prompt, num_images=n, seed=args.seed, batch_size=n, **opts)

    def theirs():  # the idiomatic diffusers call: one prompt, num_images_per_prompt, our seeds' latents
        latents = pipe.initial_latents(seeds, opts["height"], opts["width"])
        return sd(args.prompt, negative_prompt="", num_images_per_prompt=n, num_inference_steps=opts["steps"],
                  guidance_scale=opts["guidance"], latents=latents, height=opts["height"], width=opts["width"]).images

    runs = {"diffusers": theirs, "latentdiff": ours(pipe)}
    if fast is not None:
        runs["latentdiff_fast"] = ours(fast)
    images, first = {}, {}
    for name, fn in runs.items():  # warm-up, and the images each drew
        t = time.perf_counter()
        images[name] = np.stack([np.asarray(im) for im in fn()]).astype(int)
        first[name] = time.perf_counter() - t
    times, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for i in range(args.repeats):
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):  # interleaved, alternating the order
            t, c = time.perf_counter(), time.process_time()
            runs[name]()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "model": pipe.name, "sampler": opts["sampler"], "steps": opts["steps"], "guidance": opts["guidance"],
        "images": n, "size": [opts["height"], opts["width"]], "threads": torch.get_num_threads(),
        "latentdiff_s": med["latentdiff"], "diffusers_s": med["diffusers"],
        "speed_ratio": med["diffusers"] / med["latentdiff"],
        "paired_ratio": statistics.median(d / o for d, o in zip(times["diffusers"], times["latentdiff"])),
        "cpu_ratio": med_cpu["diffusers"] / med_cpu["latentdiff"],
        "best_ratio": min(times["diffusers"]) / min(times["latentdiff"]),
        "max_pixel_diff": int(np.abs(images["latentdiff"] - images["diffusers"]).max()),
        "first_s": first, "times": times, "cpu_times": cpu,
    }
    if fast is not None:
        result.update(
            fast_speed=fast.speed.describe(), fast_s=med["latentdiff_fast"],
            fast_vs_diffusers=med["diffusers"] / med["latentdiff_fast"],
            fast_vs_plain=med["latentdiff"] / med["latentdiff_fast"],
            fast_paired_vs_diffusers=statistics.median(
                d / f for d, f in zip(times["diffusers"], times["latentdiff_fast"])),
            fast_cpu_vs_diffusers=med_cpu["diffusers"] / med_cpu["latentdiff_fast"],
            fast_cpu_vs_plain=med_cpu["latentdiff"] / med_cpu["latentdiff_fast"],
            fast_best_vs_diffusers=min(times["diffusers"]) / min(times["latentdiff_fast"]),
            fast_max_pixel_diff=int(np.abs(images["latentdiff_fast"] - images["diffusers"]).max()),
            fast_mean_pixel_diff=float(np.abs(images["latentdiff_fast"] - images["diffusers"]).mean()))
    return result


def report(r: dict) -> None:
    print(f"{r['images']} images {r['size'][0]}x{r['size'][1]}, {r['sampler']} {r['steps']} steps, guidance "
          f"{r['guidance']}, {r['threads']} threads: diffusers fp32 {r['diffusers_s']:.3f} s, latentdiff plain "
          f"{r['latentdiff_s']:.3f} s (x{r['speed_ratio']:.2f}, paired x{r['paired_ratio']:.2f}, best x"
          f"{r['best_ratio']:.2f}, CPU time x{r['cpu_ratio']:.2f}; max pixel diff {r['max_pixel_diff']})")
    if "fast_s" in r:
        print(f"  latentdiff fast {r['fast_speed']}: {r['fast_s']:.3f} s = x{r['fast_vs_diffusers']:.2f} diffusers "
              f"fp32 (paired x{r['fast_paired_vs_diffusers']:.2f}, best x{r['fast_best_vs_diffusers']:.2f}, CPU time "
              f"x{r['fast_cpu_vs_diffusers']:.2f}), x{r['fast_vs_plain']:.2f} plain (CPU time "
              f"x{r['fast_cpu_vs_plain']:.2f}); pixel diff from "
              f"fp32 max {r['fast_max_pixel_diff']}, mean {r['fast_mean_pixel_diff']:.2f}; first call "
              f"{r['first_s']['latentdiff_fast']:.2f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or .safetensors (default: the default model)")
    p.add_argument("--prompt", default="a red circle above a blue square")
    p.add_argument("--num-images", default="1,4",
                   help="batch sizes to time, a comma list (default: 1,4; '' times the start-up only)")
    p.add_argument("--speed", default="auto", help="latentdiff's fast path, as --speed of generate (default: auto; "
                                                  "'' to time the plain path only)")
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each pipeline (median reported)")
    p.add_argument("--startup-repeats", type=int, default=3, help="fresh processes of each kind (0: skip)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from latentdiff.speed import cpu_bf16_kind, cpu_model_name

    sizes = [int(n) for n in args.num_images.split(",") if n.strip()]  # '' : start-up only
    result = {"cpu": cpu_model_name(), "cores": os.cpu_count(), "cpu_bf16": cpu_bf16_kind(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "speed": args.speed, "runs": []}
    print(f"CPU: {result['cpu']} ({result['cores']} logical CPUs, native bf16: {result['cpu_bf16']}), "
          f"OMP_WAIT_POLICY={result['omp_wait_policy']}, {result['date']}")
    pipes = load(args) if sizes else None
    for n in sizes:
        args.num_images = n
        result["runs"].append(bench(args, pipes))
        report(result["runs"][-1])
    if args.startup_repeats:
        result.update(startup(args.model, args.startup_repeats))
        print(f"start-up (fresh process: interpreter + CLI + imports + model load) {result['startup_s']:.2f} s, "
              f"CPU {result['startup_cpu_s']:.2f} s (in it: CLI + pipeline imports {result['import_s']:.2f} s, load "
              f"incl. the libraries' imports {result['load_s']:.2f} s); floor (torch + diffusers' U-Net/VAE + "
              f"transformers' CLIP imported) {result['library_import_floor_s']:.2f} s, CPU "
              f"{result['library_import_floor_cpu_s']:.2f} s; overhead above the floor (median of pairs) "
              f"{result['startup_overhead_s']:.2f} s, CPU {result['startup_overhead_cpu_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
