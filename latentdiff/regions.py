"""Region phrases: binding a prompt's objects to the regions of a segmentation map.

A class map says where each shape goes and what shape it is, never its colour. The colours come from
the prompt ("a red circle left of a blue circle"), and the U-Net alone ties them to the wrong region
about half the time: the shipped map ControlNet gets the named colours right on 54.0 % of held-out maps,
the prompt with no map at all on 57.0 % (docs/layout.md). The layout conditioning, in contrast, draws a
phrase in a given box (94.1 % of boxes right).

So when the prompt is in the shapes-world grammar (:func:`latentdiff.data.grammar.parse_caption`),
:func:`bind_regions` matches each object it names to one region of the map of that object's class: of
all the one-to-one assignments, the one that agrees with most of what the prompt says of positions
("in the top left"), sizes ("small") and the relation ("left of"); ties go to the first in reading
order. It returns a layout, each bound region's bounding box with the phrase "a red circle", which the
layout checkpoint draws together with the map, with the checkpoint's regional text (each box takes part
of its text from its phrase alone: :func:`latentdiff.layout.region_weights`). Regions no object is bound
to keep the map alone. A prompt outside the grammar, or one naming a shape the map lacks, is not bound
(:attr:`Binding.reason` says why): give the phrases yourself with ``--layout`` (boxes and phrases, any
wording).
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from latentdiff.data.components import label_components
from latentdiff.data.grammar import CaptionError, parse_caption
from latentdiff.data.shapes import CANVAS, SEG_LABELS, SIZE_THRESHOLD, position_of, relation_holds, with_article
from latentdiff.layout import LayoutEntry

MIN_PIXELS = 4  # smaller connected pieces of a class are specks, not regions
MAX_REGIONS = 12  # the largest regions of each class that are considered


@dataclass(frozen=True)
class Region:
    """A connected region of one class of a map; ``box`` normalised xyxy (x1, y1 exclusive)."""

    label: int
    box: tuple[float, float, float, float]
    pixels: int

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Binding:
    """The layout a prompt binds to a map (None when it does not bind), why not, and how many of the
    prompt's positions, sizes and relation the chosen regions agree with."""

    layout: list[LayoutEntry] | None
    reason: str = ""
    agreed: int = 0
    stated: int = 0

    def describe(self) -> str:
        if self.layout is None:
            return f"not bound: {self.reason}"
        boxes = ", ".join(f"{e.phrase} → ({', '.join(f'{v:.2f}' for v in e.box)})" for e in self.layout)
        return (f"{boxes}; the regions agree with {self.agreed} of the prompt's {self.stated} positions, sizes "
                f"and relations")


def map_regions(segmap: np.ndarray, min_pixels: int = MIN_PIXELS) -> list[Region]:
    """The connected regions (8-connected) of every class of an (H, W) class map, background 0 left out,
    in reading order of their centres."""
    h, w = segmap.shape
    regions = []
    for label in sorted(set(np.unique(segmap).tolist()) - {0}):
        parts = label_components(segmap == label)
        found = []
        for k in range(1, int(parts.max()) + 1):
            ys, xs = np.nonzero(parts == k)
            if len(xs) >= min_pixels:
                box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
                found.append(Region(int(label), tuple(float(v) for v in box), len(xs)))
        regions += sorted(found, key=lambda r: -r.pixels)[:MAX_REGIONS]
    return sorted(regions, key=lambda r: (r.centre[1], r.centre[0]))


def _agreement(spec, chosen: tuple[Region, ...]) -> tuple[int, int]:
    """(agreed, stated): how many of the prompt's positions, sizes and relation the regions satisfy."""
    agreed = stated = 0
    for obj, region in zip(spec.objects, chosen):
        x, y = region.centre
        if obj.position is not None:
            stated += 1
            agreed += position_of(x * CANVAS, y * CANVAS) == obj.position
        if obj.size is not None:
            x0, y0, x1, y1 = region.box
            stated += 1
            agreed += ("large" if max(x1 - x0, y1 - y0) * CANVAS >= SIZE_THRESHOLD else "small") == obj.size
    if spec.relation is not None:
        word, i, j = spec.relation
        stated += 1
        agreed += relation_holds(word, chosen[i].centre, chosen[j].centre)
    return agreed, stated


def bind_regions(prompt: str, segmap: np.ndarray) -> Binding:
    """Bind the objects a shapes-world prompt names to regions of ``segmap`` (see the module docstring)."""
    try:
        spec = parse_caption(prompt)
    except CaptionError:
        return Binding(None, "the prompt is not a shapes-world caption ('a red circle left of a blue square', ...)")
    regions = map_regions(np.asarray(segmap))
    named = Counter(o.shape for o in spec.objects)
    candidates = []
    for obj in spec.objects:
        mine = [k for k, r in enumerate(regions) if r.label == SEG_LABELS[obj.shape]]
        if not mine:
            return Binding(None, f"the prompt names a {obj.colour} {obj.shape} and the map has no {obj.shape} region")
        if len(mine) < named[obj.shape]:
            return Binding(None, f"the prompt names {named[obj.shape]} {obj.shape}s and the map has fewer "
                                 f"{obj.shape} regions")
        candidates.append(mine)
    best = None  # (agreed, stated, combo); every shape has enough regions, so some combo is one-to-one
    for combo in itertools.product(*candidates):
        if len(set(combo)) == len(combo):
            agreed, stated = _agreement(spec, tuple(regions[k] for k in combo))
            if best is None or agreed > best[0]:
                best = (agreed, stated, combo)
    agreed, stated, combo = best
    layout = [LayoutEntry(with_article(f"{o.colour} {o.shape}"), regions[k].box) for o, k in zip(spec.objects, combo)]
    return Binding(layout, agreed=agreed, stated=stated)
