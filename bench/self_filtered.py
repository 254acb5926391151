"""Best-of-n data from the model itself (reward-ranked fine-tuning, RAFT: Dong et al. 2023): generate images for
prompts of training combinations, keep those the shapes scorer passes in full (``match``: every asked attribute
and no object more), and write them as an image folder that ``latentdiff finetune --data`` trains on.

    python bench/self_filtered.py --model runs/default_v2_rel/model --objects 2 --prompts 192 --images 8 \\
        --out runs/raft_data

Prompts come from ``training_prompts`` with --prompt-seed (default 7), never the validation prompts of
bench/guidance_select.py (seed 0) nor the held-out ones; image j of a prompt starts from seed --seed + j
(default 5000, far from validation's 1000 and evaluation's 0). Prints the pass rate; OUT/summary.json keeps
it with the settings.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]")
    ap.add_argument("--objects", type=int, nargs="+", choices=(1, 2), default=[2])
    ap.add_argument("--prompts", type=int, default=192, help="prompts of each kind")
    ap.add_argument("--prompt-seed", type=int, default=7)
    ap.add_argument("--exclude-validation", action="store_true",
                    help="draw no prompt with a validation triple (for a model whose data kept them out, so that "
                         "guidance_select.py --unseen still scores unseen triples after training on these)")
    ap.add_argument("--images", type=int, default=8, help="images per prompt")
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep-failed", action="store_true",
                    help="also write the images the scorer fails, to OUT/failed/ with OUT/failed.jsonl (text, "
                         "objects found): the losers of preference pairs (bench/diffusion_dpo.py)")
    args = ap.parse_args()

    from guidance_select import validation_prompts
    from tqdm import tqdm

    from latentdiff.data.shapes import training_prompts
    from latentdiff.eval.scorer import parse_caption, score
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(args.model, device="cpu")
    if args.lora:
        from latentdiff.lora import parse_lora_spec

        pipe.load_loras([parse_lora_spec(text) for text in args.lora])
    avoid = set(validation_prompts(4 * args.prompts, (1, 2), exclude_validation=args.exclude_validation))
    prompts = [p for k in args.objects
               for p in training_prompts(2 * args.prompts, seed=args.prompt_seed, objects=(k, k),
                                         exclude_validation=args.exclude_validation)
               if p not in avoid][: args.prompts * len(args.objects)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept, failed, seen, t0 = [], 0, 0, time.perf_counter()
    if args.keep_failed:
        (out / "failed").mkdir(exist_ok=True)
    failures = (out / "failed.jsonl").open("w") if args.keep_failed else contextlib.nullcontext()
    with (out / "metadata.jsonl").open("w") as meta, failures as lost:
        for start in tqdm(range(0, len(prompts), 4), desc="generate + score"):
            group = prompts[start:start + 4]
            images = pipe.generate(group, num_images=args.images, seed=args.seed, batch_size=16)
            for i, prompt in enumerate(group):
                spec = parse_caption(prompt)
                for j in range(args.images):
                    image, seen = images[i * args.images + j], seen + 1
                    result = score(image, spec)
                    if result.match:
                        name = f"{len(kept):06d}.png"
                        image.save(out / name)
                        meta.write(json.dumps({"file_name": name, "text": prompt, "seed": args.seed + j}) + "\n")
                        kept.append(prompt)
                    elif lost is not None:
                        name = f"failed/{failed:06d}.png"
                        image.save(out / name)
                        lost.write(json.dumps({"file_name": name, "text": prompt, "seed": args.seed + j,
                                               "num_found": result.num_found}) + "\n")
                        failed += 1
    summary = {"model": args.model, "lora": args.lora, "prompts": len(prompts), "images_per_prompt": args.images,
               "seed": args.seed, "prompt_seed": args.prompt_seed, "generated": seen, "kept": len(kept),
               "pass_rate": len(kept) / seen, "prompts_with_none": len(set(prompts) - set(kept)),
               "seconds": round(time.perf_counter() - t0, 1), "defaults": pipe.defaults}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
