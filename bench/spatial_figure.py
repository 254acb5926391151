"""Done-when 3: text + layout + segmentation together, and the docs figure showing inputs beside outputs.

    nice python bench/spatial_figure.py --model latentdiff/assets/default_model --out docs/img/spatial.png

For a few scenes it draws, in one row each: the layout (boxes), the segmentation map, then the images for
text only, text + layout, text + segmentation map, and text + layout + map (seed fixed per row). Text +
map is what `latentdiff generate --segmap` does by default: the prompt's objects bound to the map's regions
and drawn as region phrases; every layout gets the layout checkpoint's regional text (docs/layout.md),
as `latentdiff generate` gives it. The model folder
must hold layout_controlnet/ (or gligen/) and controlnet/; the layout uses its checkpoint's default scale.
Cost: 4 images per row, 4 rows (a few seconds on CPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (prompt, layout in 64×64 pixels, segmentation map drawn from the same boxes with these classes)
SCENES = [
    ("a red circle", [("a red circle", (6, 6, 28, 28))], [1]),
    ("a blue square left of a yellow triangle",
     [("a blue square", (4, 22, 26, 44)), ("a yellow triangle", (40, 22, 62, 44))], [2, 3]),
    ("a green triangle above a purple circle",
     [("a green triangle", (22, 2, 44, 24)), ("a purple circle", (26, 44, 38, 56))], [3, 1]),
    ("a white square, a orange circle and a cyan triangle",
     [("a white square", (2, 2, 14, 14)), ("a orange circle", (26, 26, 38, 38)), ("a cyan triangle", (46, 46, 58, 58))],
     [2, 1, 3]),
]


def segmap_for(layout, classes, size: int):
    """A class map with each box filled by its class's exact shape (the shapes world's own drawing)."""
    import numpy as np

    from latentdiff.data.shapes import shape_mask

    seg = np.zeros((size, size), np.uint8)
    names = {1: "circle", 2: "square", 3: "triangle"}
    for (_, (x0, y0, x1, y1)), c in zip(layout, classes):
        k = size / 64
        a, b, w, h = int(x0 * k), int(y0 * k), int((x1 - x0) * k), int((y1 - y0) * k)
        seg[b:b + h, a:a + w][shape_mask(names[c], w, h)] = c
    return seg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="docs/img/spatial.png")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import numpy as np

    from latentdiff.commands.generate import spatial_checkpoint
    from latentdiff.eval.spatial import draw_layout, draw_segmap
    from latentdiff.layout import LayoutEntry, Spatial, regional_share
    from latentdiff.pipeline import Pipeline
    from latentdiff.pixels import save_grid
    from latentdiff.regions import bind_regions

    pipe = Pipeline.load(args.model, device="auto")
    pipe.attach_layout(spatial_checkpoint(pipe, "--model", None, "layout"))
    pipe.attach_segmap(spatial_checkpoint(pipe, "--model", None, "segmap"))
    s = pipe.layout_scale
    size = pipe.resolve()["height"]
    tiles = []
    for i, (prompt, boxes, classes) in enumerate(SCENES):
        layout = [LayoutEntry(ph, tuple(v / 64 for v in box)) for ph, box in boxes]
        seg = segmap_for(boxes, classes, size)
        tiles += [draw_layout([(e.phrase, e.box) for e in layout], size), draw_segmap(seg)]
        share = regional_share(pipe, None, layout)  # every layout as generate draws it: the checkpoint's
        bound = bind_regions(prompt, seg).layout  # as generate --segmap; None: the prompt does not bind
        regions = Spatial(segmap=seg) if bound is None else Spatial(bound, seg, s, region_phrases=True,
                                                                    regional_text=share)
        for spatial in (None, Spatial(layout, None, s, regional_text=share), regions,
                        Spatial(layout, seg, s, regional_text=share)):
            img = pipe.generate(prompt, seed=args.seed + i, steps=args.steps, spatial=spatial)[0]
            tiles.append(np.asarray(img))
    save_grid(np.stack(tiles), len(SCENES), Path(args.out), scale=3)
    print(f"{args.out}: rows = scenes; columns = layout | segmentation map | text | text+layout | text+map | all")


if __name__ == "__main__":
    main()
