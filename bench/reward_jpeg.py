"""Issue #28 item 3: does a compressibility (or incompressibility) LoRA move the JPEG size of held-out samples?

    python bench/reward_jpeg.py --model runs/default_v2/model --lora runs/reward_jpeg/pytorch_lora_weights.safetensors \
        --out runs/reward_jpeg_eval

Draws every held-out prompt (never a training prompt) ``--images`` times with the model alone and with the LoRA,
on the same seeds and the model's default sampler, steps and guidance; measures each image's JPEG size at the
reward's quality (:func:`latentdiff.train.rewards.jpeg_kb`); prints and writes (OUT/results.json) the mean size
before and after with 95 % intervals (normal approximation over images) and the relative change; and writes a
before/after picture, OUT/before_after.png (top row: the model alone; bottom row: with the LoRA; eight prompts).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def draw(pipe, prompts: list[str], images: int, seed: int) -> np.ndarray:
    """(len(prompts) * images, H, W, 3) uint8; image j of a prompt starts from seed + j."""
    out = []
    for prompt in prompts:
        out += [np.asarray(im) for im in pipe.generate(prompt, num_images=images, seed=seed)]
    return np.stack(out)


def summary(sizes: np.ndarray) -> dict:
    mean, se = float(sizes.mean()), float(sizes.std(ddof=1) / np.sqrt(len(sizes)))
    return {"mean_kb": mean, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "n": int(len(sizes))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--lora", required=True, help="the reward fine-tune's LoRA file")
    ap.add_argument("--images", type=int, default=2, help="images per held-out prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/reward_jpeg_eval")
    args = ap.parse_args()

    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.eval.report import grid
    from latentdiff.pipeline import Pipeline
    from latentdiff.speed import cpu_model_name
    from latentdiff.train.rewards import jpeg_kb

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = held_out_prompts()
    t0 = time.time()
    pipe = Pipeline.load(args.model, device="cpu")
    before = draw(pipe, prompts, args.images, args.seed)
    pipe.load_loras([(args.lora, 1.0)])
    after = draw(pipe, prompts, args.images, args.seed)
    kb_before = np.array([jpeg_kb(im) for im in before])
    kb_after = np.array([jpeg_kb(im) for im in after])
    result = {"model": args.model, "lora": args.lora, "prompts": len(prompts), "images_per_prompt": args.images,
              "before": summary(kb_before), "after": summary(kb_after),
              "relative_change": float(kb_after.mean() / kb_before.mean() - 1),
              "paired_change_ci95": list(summary(kb_after - kb_before)["ci95"]),
              "cpu": cpu_model_name(), "seconds": time.time() - t0}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    picks = list(range(0, len(prompts), max(1, len(prompts) // 8)))[:8]
    grid([[before[i * args.images] for i in picks], [after[i * args.images] for i in picks]], out / "before_after.png")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
