"""Redraw the passing images of a self-filtered folder exactly, keeping the model's layout: for each image the
scorer passed, the same objects (the prompt's colours and shapes) in the boxes where the model put them, drawn
by the shapes world's renderer on the image's own background level.

Why: training on the model's own passing samples (RAFT, Diffusion-DPO's winners) raised the two-object count
but moved one-object colours (validation colour error 11.5 -> 18-20 RGB units, held-out colour + shape 94 %;
BENCHMARKS.md): the samples teach the model's off-palette colours and soft outlines along with the layouts.
Redrawn winners keep what is wanted from them (how many objects, and where the model itself puts them for a
relation prompt) and carry the palette's exact colours.

    python bench/rerender_winners.py runs/dpo_data_x runs/dpo_data_x_redrawn

Writes OUT/metadata.jsonl and OUT/NNNNNN.png for the winners (an image whose redrawn boxes would come closer
than the data's gap is dropped, and so is one the scorer no longer passes after redrawing: both counted), and
links OUT/failed + OUT/failed.jsonl to the input's losers, so that ``bench/diffusion_dpo.py --data OUT`` runs
on it unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def square_box(found) -> tuple[int, int, int, int]:
    """The data's square box for a found object: its size class's side (±1 px as the data draws it, nearest to
    the found box's mean side), centred on the found box, inside the canvas."""
    from latentdiff.data.shapes import CANVAS, SIZES

    x0, y0, x1, y1 = found.box
    base = SIZES[found.size]
    side = base + int(np.clip(round(((x1 - x0) + (y1 - y0)) / 2) - base, -1, 1))
    cx, cy = round((x0 + x1) / 2), round((y0 + y1) / 2)
    bx = min(max(cx - side // 2, 0), CANVAS - side)
    by = min(max(cy - side // 2, 0), CANVAS - side)
    return bx, by, bx + side, by + side


def redraw(image: Image.Image, text: str):
    """(rgb (64, 64, 3) uint8, None) for a passing image redrawn, or (None, why) when it cannot be."""
    from latentdiff.data.shapes import BACKGROUND_MAX, Scene, ShapeObject, boxes_apart, position_of, render
    from latentdiff.eval.scorer import _background, as_rgb_array, parse_caption, score

    spec = parse_caption(text)
    result = score(image, spec)
    if not result.match:
        return None, "not passing"
    rgb = as_rgb_array(image)
    background = int(np.clip(round(float(np.mean(_background(rgb)))), 0, BACKGROUND_MAX))
    objects = []
    for s in result.objects:
        f = s.found
        box = square_box(f)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        objects.append(ShapeObject(s.requested.shape, s.requested.colour, f.size, position_of(*centre), centre, box))
    if any(not boxes_apart(a.box, b.box) for i, a in enumerate(objects) for b in objects[i + 1:]):
        return None, "boxes too close"
    out, _ = render(Scene(background, tuple(objects)))
    if not score(out, spec).match:
        return None, "redrawn image fails"
    return out, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="a folder from bench/self_filtered.py (--keep-failed for preference pairs)")
    ap.add_argument("out")
    args = ap.parse_args()

    from diffusion_dpo import read_records

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dropped, kept = Counter(), 0
    with (out / "metadata.jsonl").open("w") as meta:
        for rec in read_records(data, "metadata.jsonl"):
            rgb, why = redraw(Image.open(data / rec["file_name"]).convert("RGB"), rec["text"])
            if rgb is None:
                dropped[why] += 1
                continue
            name = f"{kept:06d}.png"
            Image.fromarray(rgb).save(out / name)
            meta.write(json.dumps({**rec, "file_name": name, "redrawn_from": rec["file_name"]}) + "\n")
            kept += 1
    for name in ("failed", "failed.jsonl"):
        if (data / name).exists() and not (out / name).exists():
            os.symlink((data / name).resolve(), out / name)
    print(json.dumps({"data": str(data), "out": str(out), "redrawn": kept, "dropped": dropped}))


if __name__ == "__main__":
    main()
