"""Done-when 1 and 2 of the layout/segmentation issue: layout box accuracy and IoU, segmentation pixel
accuracy and colour accuracy, over held-out shapes-world scenes (seed 90210, never in training data).

    nice python bench/spatial_eval.py --model latentdiff/assets/default_model --condition layout --num 200
    nice python bench/spatial_eval.py --model latentdiff/assets/default_model --condition segmap --num 200

The model folder must hold layout_controlnet/ or gligen/ (layout; the first is used) or controlnet/
(segmap), or pass --checkpoint DIR. Each case
is a scene of 1-3 objects; the prompt is its caption (naming colours and shapes) and the condition its
boxes (phrases "a red circle") or its class map. With the map, the caption's objects are bound to the map's
regions and drawn as a layout too (region phrases, as `latentdiff generate --segmap` does; the model's
layout checkpoint at --region-scale, default its layout_scale, and its region_guidance as the text
guidance); --no-region-phrases gives the map alone. Every layout, given or bound, gets the layout
checkpoint's regional text (its regional_text: the share of each box's text that is its phrase alone;
--regional-text overrides). Targets: box accuracy >= 0.90 and mean IoU >= 0.6;
pixel accuracy >= 0.90 and colours right >= 0.90. Cost: one image per case (25 DPM++ steps, one batched
U-Net forward per step of one row per guidance branch and, with regional text, one more per box); for
the default model on one thread about 1.9 s per segmap case with region phrases, 2.6 s with regional text. Writes
a JSON line of metrics to stdout (--text-only: the same cases from the caption alone, the baseline);
with --grid, an input | output grid of the first 16 cases; with --cases, one JSON line per case
(caption, each box's or object's verdict).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--condition", choices=("layout", "segmap", "both"), required=True)
    p.add_argument("--checkpoint", default=None, help="gligen/ or controlnet/ folder (default: inside --model)")
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--scale", type=float, default=None,
                   help="layout/segmap guidance scale (default: the layout checkpoint's layout_scale; segmap 1)")
    p.add_argument("--guidance", type=float, default=None,
                   help="text guidance (default: the model's; with region phrases the layout checkpoint's "
                        "region_guidance when it has one)")
    p.add_argument("--seed", type=int, default=90210)
    p.add_argument("--grid", default=None, help="PNG path for an input | output grid of the first 16 cases")
    p.add_argument("--text-only", action="store_true",
                   help="baseline: the caption alone (no layout, no map, no checkpoint), scored the same way")
    p.add_argument("--no-region-phrases", action="store_true",
                   help="segmap: the map alone, without binding the caption's objects to its regions as a layout")
    p.add_argument("--region-scale", type=float, default=None,
                   help="segmap: the guidance scale of the bound region phrases (default: the layout checkpoint's)")
    p.add_argument("--regional-text", type=float, default=None, metavar="A",
                   help="the share in [0, 1] of each box's text that is its phrase alone, the caption's elsewhere "
                        "(regional text; default: the layout checkpoint's regional_text, 0 when it has none)")
    p.add_argument("--cases", default=None, help="JSONL path for one line per case (caption and verdicts)")
    args = p.parse_args()

    import numpy as np

    from latentdiff.commands.generate import spatial_checkpoint
    from latentdiff.data.folder import load_folder
    from latentdiff.data.shapes import write_dataset
    from latentdiff.eval.spatial import run_cases
    from latentdiff.pipeline import Pipeline
    from latentdiff.pixels import save_grid

    pipe = Pipeline.load(args.model, device="auto")
    model = Path(args.model)
    regions = args.condition == "segmap" and not args.text_only and not args.no_region_phrases
    if (args.condition in ("layout", "both") or regions) and not args.text_only:  # regions: the model's own
        given = args.checkpoint if args.condition == "layout" else None
        pipe.attach_layout(spatial_checkpoint(pipe, "--checkpoint", given, "layout"))
    if args.condition in ("segmap", "both") and not args.text_only:
        given = args.checkpoint if args.condition == "segmap" else None
        pipe.attach_segmap(spatial_checkpoint(pipe, "--checkpoint", given, "segmap"))
    size = pipe.resolve()["height"]
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), args.num, seed=args.seed, workers=1)
        records = load_folder(tmp)
        t0 = time.time()
        cond = "layout" if args.condition == "both" else args.condition
        scale = args.scale if args.scale is not None else (pipe.layout_scale if cond == "layout" else 1.0)
        cases = []
        metrics, tiles = run_cases(pipe, records, cond, size, steps=args.steps, guidance=args.guidance,
                                   scale=scale, progress=True, both=args.condition == "both", cases=cases,
                                   text_only=args.text_only, region_phrases=regions,
                                   region_scale=args.region_scale, regional_text=args.regional_text)
    metrics.setdefault("guidance", pipe.resolve(guidance=args.guidance)["guidance"])  # region phrases: as drawn
    metrics.update(condition=args.condition, text_only=args.text_only, region_phrases=regions, scale=scale,
                   steps=args.steps, seconds=round(time.time() - t0, 1), model=str(model))
    print(json.dumps(metrics))
    if args.cases:
        Path(args.cases).parent.mkdir(parents=True, exist_ok=True)
        Path(args.cases).write_text("".join(json.dumps(c) + "\n" for c in cases))
    if args.grid:
        save_grid(np.stack(tiles[:32]), 4, Path(args.grid))


if __name__ == "__main__":
    main()
