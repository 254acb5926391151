"""Choose a model's default guidance scale (and check its sampler and steps) on validation prompts, never on
the held-out ones: prompts of training combinations (``training_prompts``: no held-out triple or pair),
seeds far from the evaluation's (the suite draws image j from seed j), scored by the shapes scorer with the
same tallies as ``latentdiff eval --sections accuracy``, plus two continuous measures of the one-object
images that move before a verdict flips: ``one_colour_error`` (mean distance, in 0-255 RGB units, of the
object's core colour from the asked palette colour) and ``one_shape_iou`` (its fit to the shape template).
``--unseen`` adds the one-object prompts of the validation triples (``unseen_*``): for a model whose data kept
them out (``data.exclude_validation``) they are unseen combinations, as the held-out triples are, so a choice
can weigh generalisation without the held-out split; with it the ordinary prompts hold no validation triple.

    python bench/guidance_select.py --model runs/default_v2/model --guidance 2 3 4 6 8 --out runs/guidance_v2

Prints one row per setting and writes OUT/results.json. The chosen setting goes into the model folder's
latentdiff.json as "generate_defaults" (``--write w``), which `latentdiff generate` and `eval` then use.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def validation_prompts(num_each: int, kinds: tuple[int, ...] = (1, 2), exclude_validation: bool = False) -> list[str]:
    """Prompts of training combinations drawn with seed 0; with ``exclude_validation`` none holds a validation
    triple, so that for a model whose data kept them out these "seen" prompts are all seen combinations."""
    from latentdiff.data.shapes import training_prompts

    return [p for k in kinds
            for p in training_prompts(num_each, seed=0, objects=(k, k), exclude_validation=exclude_validation)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                    help="LoRA weights to apply (as latentdiff eval --lora)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0, 3.0, 4.0, 6.0, 8.0])
    ap.add_argument("--sampler", default=None, help="default: the model's")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's")
    ap.add_argument("--prompts", type=int, default=24, help="prompts of each kind (one object, two objects)")
    ap.add_argument("--objects", type=int, nargs="+", choices=(1, 2), default=[1, 2],
                    help="which prompts: one-object, two-object or both (default)")
    ap.add_argument("--images", type=int, default=2, help="images per prompt")
    ap.add_argument("--unseen", action="store_true",
                    help="also score the 18 one-object prompts of the validation triples (for a model whose data "
                         "kept them out, exclude_validation): columns unseen_*; the other prompts then hold "
                         "no validation triple")
    ap.add_argument("--seed", type=int, default=1000, help="image j of a prompt starts from seed + j")
    ap.add_argument("--out", default="runs/guidance_select")
    ap.add_argument("--write", type=float, default=None, metavar="W",
                    help="record guidance W (with --sampler/--steps when given) as the model's generate_defaults")
    args = ap.parse_args()

    from latentdiff.eval.accuracy import evaluate_prompts
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(args.model, device="cpu")
    if args.lora:
        from latentdiff.lora import parse_lora_spec

        pipe.load_loras([parse_lora_spec(text) for text in args.lora])
    prompts = validation_prompts(args.prompts, tuple(args.objects), exclude_validation=args.unseen)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in args.guidance:
        t0 = time.perf_counter()
        s = evaluate_prompts(pipe, prompts, num_images=args.images, guidance=w, sampler=args.sampler,
                             steps=args.steps, seed=args.seed, progress=False)
        if args.unseen:
            from latentdiff.data.shapes import validation_triple_prompts

            u = evaluate_prompts(pipe, validation_triple_prompts(), num_images=args.images, guidance=w,
                                 sampler=args.sampler, steps=args.steps, seed=args.seed, progress=False)
            s.update({f"unseen_{k.removeprefix('one_')}": u[k] for k in
                      ("one_colour_shape", "one_position", "one_size", "one_colour_error", "one_shape_iou")})
        row = {**{k: (v["accuracy"] if isinstance(v, dict) else v) for k, v in s.items()},
               "guidance": w, "sampler": args.sampler or pipe.defaults["sampler"],
               "steps": args.steps or pipe.defaults["steps"], "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": args.model, "lora": args.lora, "prompts": len(prompts), "images_per_prompt": args.images,
              "seed": args.seed, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    cols = ("one_colour_shape", "one_position", "one_size", "two_relation", "two_count", "two_match", "any_match")
    more = ("diversity", "one_colour_error", "one_shape_iou")  # the last two: continuous, one-object prompts
    if args.unseen:
        more += ("unseen_colour_shape", "unseen_position", "unseen_size", "unseen_colour_error")
    print(f"{'w':>5} " + " ".join(f"{c:>16}" for c in cols + more))
    for r in rows:
        cells = (f"{r[c]:>16.3f}" if r.get(c) is not None else f"{'-':>16}" for c in cols + more)
        print(f"{r['guidance']:>5} " + " ".join(cells))
    if args.write is not None:
        index = Path(args.model) / "latentdiff.json"
        meta = json.loads(index.read_text())
        defaults = {"guidance": args.write}
        if args.sampler:
            defaults["sampler"] = args.sampler
        if args.steps:
            defaults["steps"] = args.steps
        meta["generate_defaults"] = {**meta.get("generate_defaults", {}), **defaults}
        index.write_text(json.dumps(meta, indent=1))
        print(f"{index}: generate_defaults = {meta['generate_defaults']}")


if __name__ == "__main__":
    main()
