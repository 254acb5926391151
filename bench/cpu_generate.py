"""latentdiff vs stock diffusers ``StableDiffusionPipeline`` on the CPU: same weights, sampler, steps,
guidance, seed and batch, in one process, runs interleaved; plus the start-up time of ``latentdiff generate``
(interpreter + imports + model load) measured in fresh processes.

    .venv/bin/python bench/cpu_generate.py                      # the default model, 4 images, dpm++ 25 steps
    .venv/bin/python bench/cpu_generate.py --model PATH --steps 10 --repeats 5 --json out.json

Both pipelines get the same diffusers scheduler object type and config (``Pipeline.make_scheduler``) and the
same initial latents (drawn on the CPU by latentdiff's per-image generators), so they also produce the same
images; the script reports the largest pixel difference to prove it measured the same work.
Results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

STARTUP_SNIPPET = """
import time, sys
t0 = time.perf_counter()
from latentdiff.cli import build_parser
build_parser()
from latentdiff.pipeline import Pipeline
t1 = time.perf_counter()
Pipeline.load(None if sys.argv[1] == "-" else sys.argv[1], device="cpu")
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""
# What any Stable Diffusion pipeline on these libraries must import: the floor under our start-up.
FLOOR_SNIPPET = """
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
print(0, 0)
"""


def _fresh_process(snippet: str, model: str | None) -> tuple[float, float, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", snippet, model or "-"], capture_output=True, text=True)
    total = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"start-up run failed:\n{proc.stderr}")
    imp, load = map(float, proc.stdout.split()[-2:])
    return total, imp, load


def startup(model: str | None, repeats: int) -> dict:
    """Median wall time of a fresh process that imports the CLI and the pipeline and loads the model (what
    ``latentdiff generate`` does before sampling), and of one that only imports diffusers' U-Net/VAE and
    transformers' CLIP (the floor). Runs alternate."""
    runs, floor = [], []
    for _ in range(repeats):
        runs.append(_fresh_process(STARTUP_SNIPPET, model))
        floor.append(_fresh_process(FLOOR_SNIPPET, model)[0])
    total, imp, load = (statistics.median(r[i] for r in runs) for i in range(3))
    return {"startup_s": total, "import_s": imp, "load_s": load, "library_import_floor_s": statistics.median(floor),
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


def bench(args) -> dict:
    import numpy as np
    import torch

    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(args.model, device="cpu")
    sd = diffusers_pipeline(pipe, args.model)
    sd.scheduler = pipe.make_scheduler(args.sampler)  # the same scheduler type and config on both sides
    opts = pipe.resolve(args.steps, args.guidance, args.sampler)
    seeds = list(range(args.seed, args.seed + args.num_images))

    def ours():  # PIL images, as both pipelines return by default
        return pipe.generate(args.prompt, num_images=args.num_images, seed=args.seed, batch_size=args.num_images,
                             **opts)

    def theirs():  # the idiomatic diffusers call: one prompt, num_images_per_prompt, our seeds' latents
        latents = pipe.initial_latents(seeds, opts["height"], opts["width"])
        return sd(args.prompt, negative_prompt="", num_images_per_prompt=args.num_images,
                  num_inference_steps=opts["steps"], guidance_scale=opts["guidance"], latents=latents,
                  height=opts["height"], width=opts["width"]).images

    def array(images):
        return np.stack([np.asarray(im) for im in images]).astype(int)

    a, b = array(ours()), array(theirs())  # warm-up, and proof that both drew the same images
    times = {"latentdiff": [], "diffusers": []}
    for i in range(args.repeats):
        order = [("latentdiff", ours), ("diffusers", theirs)]
        for name, fn in (order if i % 2 == 0 else order[::-1]):  # interleaved, alternating who goes first
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(d / o for d, o in zip(times["diffusers"], times["latentdiff"]))
    return {
        "model": pipe.name, "sampler": opts["sampler"], "steps": opts["steps"], "guidance": opts["guidance"],
        "images": args.num_images, "size": [opts["height"], opts["width"]], "threads": torch.get_num_threads(),
        "latentdiff_s": med["latentdiff"], "diffusers_s": med["diffusers"],
        "speed_ratio": med["diffusers"] / med["latentdiff"], "paired_ratio": paired,
        "max_pixel_diff": int(np.abs(a - b).max()),
        "times": times,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or .safetensors (default: the default model)")
    p.add_argument("--prompt", default="a red circle above a blue square")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each pipeline (median reported)")
    p.add_argument("--startup-repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = bench(args)
    result.update(startup(args.model, args.startup_repeats))
    result.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(unset)"))
    print(f"model {result['model']}: {result['images']} images {result['size'][0]}x{result['size'][1]}, "
          f"{result['sampler']} {result['steps']} steps, guidance {result['guidance']}, {result['threads']} threads")
    print(f"latentdiff {result['latentdiff_s']:.3f} s   diffusers {result['diffusers_s']:.3f} s   "
          f"ratio (diffusers / latentdiff) {result['speed_ratio']:.3f} (median of paired runs "
          f"{result['paired_ratio']:.3f})   max pixel diff {result['max_pixel_diff']}")
    print(f"start-up (fresh process: interpreter + imports + load) {result['startup_s']:.2f} s "
          f"(latentdiff CLI + torch {result['import_s']:.2f} s, load incl. diffusers/transformers imports "
          f"{result['load_s']:.2f} s); importing diffusers' U-Net/VAE + transformers' CLIP alone: "
          f"{result['library_import_floor_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
