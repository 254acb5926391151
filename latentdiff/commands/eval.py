"""``latentdiff eval``: prompt-following accuracy and diversity against guidance, on held-out prompts."""
from __future__ import annotations

import argparse
import shlex
import sys
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model on held-out shapes prompts across guidance scales",
                       description=__doc__)
    p.add_argument("--model", help="model folder (default: the default model)")
    p.add_argument("--out", default="eval_out", help="report folder (default: eval_out)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.0], help="scales w (1 = none)")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (seeds 0..N-1)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N held-out prompts (0: all)")
    p.add_argument("--sampler", help="ddpm | ddim | dpm++ | euler (default: the model's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.errors import UserError
    from latentdiff.eval.report import guidance_sweep, write_report
    from latentdiff.pipeline import Pipeline

    if args.num_images < 1:
        raise UserError(f"--num-images {args.num_images}: expected a positive integer")
    pipe = Pipeline.load(args.model, device=args.device)
    prompts = held_out_prompts()
    if args.limit > 0:
        prompts = prompts[: args.limit]
    t0 = time.time()
    results = guidance_sweep(pipe, prompts, args.guidance, num_images=args.num_images, sampler=args.sampler,
                             steps=args.steps)
    command = "latentdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "latentdiff eval"
    grid = [p for p in prompts if " of " in p][:1] + prompts[:2]
    report = write_report(Path(args.out), args.model or "default model", pipe, results, command, grid,
                          args.guidance, time.time() - t0, sampler=args.sampler, steps=args.steps)
    print(f"wrote {report}")
    for r in results:
        print(f"w={r['guidance']:g}: " + ", ".join(f"{k}={r[k]['accuracy']:.1%}" for k in
                                                ("one_colour_shape", "one_position", "one_size", "two_relation")
                                                if r[k]["n"]))
    return 0
