"""Scoring layout- and segmentation-conditioned generation with the shapes scorer.

For a case (a folder record with boxes and a segmentation map) the model draws the record's caption with
its layout (``condition="layout"``) or its map (``"segmap"``), and :func:`latentdiff.eval.scorer.score_layout`
/ :func:`~latentdiff.eval.scorer.score_segmap` say whether each box holds an object of the phrase's
colour and shape (and the found box's IoU), or how well the found objects cover the map.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from latentdiff.conditions import request_conditions

GREY, BOX = 40, (255, 255, 255)
CLASS_COLOURS = np.array([[40, 40, 40], [230, 80, 80], [80, 200, 80], [80, 120, 230], [230, 200, 60]], np.uint8)


def draw_layout(layout, size: int) -> np.ndarray:
    """A (size, size, 3) picture of a layout: each box's outline on grey."""
    img = np.full((size, size, 3), GREY, np.uint8)
    for _, (x0, y0, x1, y1) in layout:
        a, b = int(round(x0 * size)), int(round(y0 * size))
        c, d = max(int(round(x1 * size)) - 1, a), max(int(round(y1 * size)) - 1, b)
        img[b, a:c + 1] = img[d, a:c + 1] = BOX
        img[b:d + 1, a] = img[b:d + 1, c] = BOX
    return img


def draw_segmap(segmap: np.ndarray) -> np.ndarray:
    """(H, W, 3) picture of a class map (one colour per class)."""
    return CLASS_COLOURS[np.clip(segmap, 0, len(CLASS_COLOURS) - 1)]


def _found(obj) -> str | None:
    """A found object in words ("red circle"), or None."""
    return None if obj is None else f"{obj.colour} {obj.shape}"


def pixel_boxes(layout, size: int) -> list[dict]:
    return [{"phrase": p, "box": [x0 * size, y0 * size, x1 * size, y1 * size]} for p, (x0, y0, x1, y1) in layout]


def run_cases(pipe, records, condition: str, size: int, steps: int = 25, seed: int = 0, guidance=None,
              scale: float = 1.0, progress: bool = False, both: bool = False,
              cases: list | None = None, text_only: bool = False,
              region_phrases: bool = False, region_scale: float | None = None,
              regional_text: float | None = None) -> tuple[dict, list[np.ndarray]]:
    """Generate and score every record; returns (metrics, tiles: input | output per case). ``both`` gives
    the other condition too (layout and map together); ``text_only`` gives neither, the caption alone scored
    as the condition would be (the baseline the condition adds to). ``cases``, a list, gets one dict per case: the
    caption, and each box's verdict (phrase, ok, IoU, what was found) or the map's pixel accuracy and each
    captioned object's colour and shape verdicts. ``region_phrases`` (map alone): the caption's objects are
    bound to the map's regions (:func:`latentdiff.regions.bind_regions`) and drawn as a layout too, at
    ``region_scale`` (default: the layout checkpoint's scale) and, unless ``guidance`` is given, the
    checkpoint's ``region_guidance`` (:func:`latentdiff.layout.text_guidance`): the conditions come from
    :func:`latentdiff.conditions.request_conditions`, as for ``latentdiff generate --segmap``; the metrics
    then hold the text guidance the images were drawn with (a list when it varied).
    ``regional_text``: the share of each box's text that is its phrase alone
    (:func:`latentdiff.layout.region_weights`); default: the layout checkpoint's
    (:func:`latentdiff.layout.regional_share`), as generate does; the metrics hold the share the images with a layout
    were drawn with, read from their records like the guidance."""
    from latentdiff.data.latents import layout_of, segmap_of
    from latentdiff.eval.scorer import score_layout, score_segmap
    from latentdiff.layout import LayoutEntry
    from latentdiff.provenance import Record

    box_ok, ious, pix, blank, colours, tiles, bound, used, shares = [], [], [], [], [], [], [], set(), set()
    region_scale = pipe.layout_scale if region_scale is None else region_scale  # as generate: the checkpoint's
    for k, rec in enumerate(tqdm(records, desc=f"{condition} cases", disable=not progress)):
        layout, seg = layout_of(rec, size), segmap_of(rec, size)
        use_layout, use_seg = condition == "layout" or both, condition == "segmap" or both
        boxes = [LayoutEntry(p, b) for p, b in layout] if use_layout else None
        regions = region_phrases and use_seg and boxes is None
        conditions = request_conditions(pipe, rec.text, boxes, seg if use_seg else None,  # as generate does
                                        layout_scale=region_scale if regions else scale, segmap_scale=scale,
                                        regional_text=regional_text, region_phrases=regions)
        if regions:
            bound.append(conditions.spatial.region_phrases)
        spatial = None if text_only else conditions.spatial
        image = pipe.generate(rec.text, seed=seed + k, steps=steps, guidance=guidance, height=size, width=size,
                              spatial=spatial)[0]
        img = np.asarray(image)
        record = Record.from_json(image.info["latentdiff"])
        used.add(record.guidance)  # the region guidance, for region phrases
        if "layout" in record.extra:
            shares.add(record.extra["layout"].get("regional_text", 0.0))
        case = {"index": k, "caption": rec.text}
        if use_layout:
            s = score_layout(img, pixel_boxes(layout, size))
            box_ok += [b.ok for b in s.boxes]
            ious += [b.iou for b in s.boxes]
            case["boxes"] = [{"phrase": b.phrase, "box": [round(v, 1) for v in b.box], "ok": b.ok,
                              "iou": round(b.iou, 3), "found": _found(b.found)} for b in s.boxes]
        if use_seg:
            s = score_segmap(img, seg, caption=rec.text)
            pix.append(s.pixel_accuracy)
            blank.append(float((seg == 0).mean()))  # what an image with no object at all would score
            colours.append(bool(s.colour))
            case.update(pixel_accuracy=round(s.pixel_accuracy, 4), colour=bool(s.colour),
                        objects=[{"requested": f"{o.requested.colour} {o.requested.shape}", "colour": o.colour,
                                  "shape": o.shape, "found": _found(o.found)} for o in s.caption_score.objects])
        if cases is not None:
            cases.append(case)
        tiles += [draw_layout(layout, size) if condition == "layout" else draw_segmap(seg), img]
    metrics = {"cases": len(records)}
    if box_ok:
        metrics.update(boxes=len(box_ok), box_accuracy=float(np.mean(box_ok)), mean_iou=float(np.mean(ious)))
    if pix:
        metrics.update(pixel_accuracy=float(np.mean(pix)), pixel_accuracy_of_an_empty_image=float(np.mean(blank)),
                       colour_accuracy=float(np.mean(colours)))
    if region_phrases and pix:
        metrics.update(region_phrases_bound=int(np.sum(bound)), region_scale=region_scale, guidance=_as_drawn(used))
    if shares:
        metrics.update(regional_text=_as_drawn(shares))
    return metrics, tiles


def _as_drawn(values: set):
    """One setting the images were drawn with, or the sorted list when it varied between them."""
    return sorted(values)[0] if len(values) == 1 else sorted(values)
