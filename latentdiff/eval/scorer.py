"""Score an image against a shapes-world prompt, layout or segmentation map.

Objects are found as connected regions (8-connected) of pixels far from the background grey (the
per-channel median of the border). Each region's colour is the nearest palette colour of its median
pixel; its shape is the best match (IoU) between its mask, cropped to its bounding box, and the four
shape templates drawn at that box size (this separates star from triangle far better than the bbox fill
ratio alone, which is also reported); its size is small/large by the longer bbox side (threshold 17 px);
its position is the grid cell of its bbox centre (cell boundaries at 22 and 42).

    spec = parse_caption("a small red circle in the top left")
    result = score(image, spec)            # or score(image, "a red circle left of a blue square")
    result.match, result.objects[0].colour, result.relation
    score_layout(image, [{"phrase": "a red circle", "box": [4, 4, 16, 16]}]).mean_iou
    score_segmap(image, segmap).miou
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from latentdiff.data.components import label_components, pad1
from latentdiff.data.grammar import ObjectSpec, Spec, parse_caption, spec_of_scene
from latentdiff.data.shapes import (
    COLOURS,
    PALETTE,
    SEG_LABELS,
    SHAPES,
    SIZE_THRESHOLD,
    Scene,
    position_of,
    relation_holds,
    shape_mask,
)

MIN_PIXELS = 20  # smaller components are noise
FOREGROUND_DISTANCE = 60.0  # Euclidean RGB distance from the background that counts as an object
MAX_CANDIDATES = 8  # largest components considered when matching requested objects


def _as_spec(value: str | Spec | Scene) -> Spec:
    if isinstance(value, Spec):
        return value
    if isinstance(value, Scene):
        return spec_of_scene(value)
    if isinstance(value, str):
        return parse_caption(value)
    raise TypeError(f"expected a caption, Spec or Scene, got {type(value).__name__}")


# --- finding objects -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FoundObject:
    """An object found in an image. ``box`` is (x0, y0, x1, y1), x1/y1 exclusive; ``centre`` its centre."""

    colour: str
    shape: str
    size: str
    position: str
    centre: tuple[float, float]
    box: tuple[int, int, int, int]
    area: int
    fill: float  # area / bbox area
    shape_iou: float  # IoU with the best shape template (confidence)
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  # median colour of its core, the colour's evidence


def as_rgb_array(image: Any) -> np.ndarray:
    """PIL image or (H, W, 3) uint8 array -> (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    return array


def _background(rgb: np.ndarray) -> np.ndarray:
    """Background colour estimate: per-channel median of the border pixels. (3,) float."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def _classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best-matching shape of a component mask cropped to its bbox (bool (h, w)) and its template IoU."""
    h, w = mask.shape
    scores = {}
    for shape in SHAPES:
        template = shape_mask(shape, w, h)
        scores[shape] = (template & mask).sum() / max((template | mask).sum(), 1)
    best = max(scores, key=scores.get)
    return best, float(scores[best])


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation of a bool (H, W) mask by ``steps`` pixels (3x3 square element)."""
    h, w = mask.shape
    for _ in range(steps):
        padded = pad1(mask, False)
        mask = np.zeros_like(mask)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                mask |= padded[dy : dy + h, dx : dx + w]
    return mask


def _refine(rgb: np.ndarray, component: np.ndarray, free: np.ndarray, background: np.ndarray, colour: np.ndarray):
    """Re-cut a component at the half-way level between background and its colour (the edge of a blur).

    A fixed distance threshold grows bright objects and shrinks dark ones when edges are soft; the 50%
    level does neither. Only pixels within 2 px of the component and ``free`` (not another component)
    are considered. Returns bool (H, W).
    """
    direction = colour - background  # (3,)
    level = (rgb.astype(np.float32) - background) @ direction / max(float(direction @ direction), 1e-6)
    refined = _dilate(component, 2) & free & (level >= 0.5)
    return refined if refined.sum() >= max(component.sum() // 2, 1) else component


def _describe(rgb: np.ndarray, component: np.ndarray, free: np.ndarray, background: np.ndarray, offset=(0, 0)):
    """Attributes of one component and its refined mask, all (h, w) crops whose corner is ``offset`` (x, y)."""
    pixels = rgb[component].astype(np.float32)  # (N, 3)
    far = np.linalg.norm(pixels - background, axis=1)
    median = np.median(pixels[far >= np.median(far)], axis=0)  # (3,) colour of the core, not soft edges
    component = _refine(rgb, component, free, background, median)
    ys, xs = np.nonzero(component)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    shape, shape_iou = _classify_shape(component[y0:y1, x0:x1])
    x0, y0, x1, y1 = x0 + offset[0], y0 + offset[1], x1 + offset[0], y1 + offset[1]
    palette = np.array([PALETTE[c] for c in COLOURS], np.float32)  # (8, 3)
    colour = COLOURS[int(np.argmin(((palette - median) ** 2).sum(1)))]
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    size = "large" if max(x1 - x0, y1 - y0) >= SIZE_THRESHOLD else "small"
    area = int(component.sum())
    fill = area / ((x1 - x0) * (y1 - y0))
    box = (x0, y0, x1, y1)
    rgb = (float(median[0]), float(median[1]), float(median[2]))
    return FoundObject(colour, shape, size, position_of(*centre), centre, box, area, fill, shape_iou, rgb), component


def _find(image: Any, min_pixels: int = MIN_PIXELS) -> tuple[list[FoundObject], np.ndarray]:
    """Found objects, largest first, and their label map (int (H, W), 0 = none, i + 1 = object i)."""
    rgb = as_rgb_array(image)
    background = _background(rgb)  # (3,)
    distance = np.linalg.norm(rgb.astype(np.float32) - background, axis=-1)  # (H, W)
    labels = label_components(distance > FOREGROUND_DISTANCE)
    counts = np.bincount(labels.ravel())
    keep = [i for i in np.argsort(-counts, kind="stable") if i != 0 and counts[i] >= min_pixels]
    found, label_map = [], np.zeros(labels.shape, np.int32)
    h, w = labels.shape
    for rank, i in enumerate(keep):
        ys, xs = np.nonzero(labels == i)
        y0, y1, x0, x1 = max(ys.min() - 2, 0), min(ys.max() + 3, h), max(xs.min() - 2, 0), min(xs.max() + 3, w)
        crop = labels[y0:y1, x0:x1]  # (h', w') window: the component plus its 2 px margin
        obj, mask = _describe(rgb[y0:y1, x0:x1], crop == i, (crop == 0) | (crop == i), background, (x0, y0))
        found.append(obj)
        window = label_map[y0:y1, x0:x1]
        window[mask & (window == 0)] = rank + 1
    return found, label_map


def find_objects(image: Any, min_pixels: int = MIN_PIXELS) -> list[FoundObject]:
    """All objects in a PIL image or (H, W, 3) uint8 array, largest first."""
    return _find(image, min_pixels)[0]


# --- scoring a prompt ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectScore:
    """How one requested object fared. ``size``/``position`` are None when the prompt leaves them free."""

    requested: ObjectSpec
    found: FoundObject | None
    colour: bool
    shape: bool
    size: bool | None
    position: bool | None
    matched: bool  # found, and every specified attribute is right


@dataclass(frozen=True)
class Score:
    """Result of :func:`score`. ``relation`` is None when the prompt has no relation."""

    objects: tuple[ObjectScore, ...]
    relation: bool | None
    count: bool  # as many objects found as requested
    num_found: int
    match: bool  # every object matched, relation right, count right
    found: tuple[FoundObject, ...]


def _object_score(req: ObjectSpec, obj: FoundObject | None) -> ObjectScore:
    if obj is None:
        none = lambda attr: None if attr is None else False  # noqa: E731
        return ObjectScore(req, None, False, False, none(req.size), none(req.position), False)
    size = None if req.size is None else obj.size == req.size
    position = None if req.position is None else obj.position == req.position
    colour, shape = obj.colour == req.colour, obj.shape == req.shape
    matched = colour and shape and size is not False and position is not False
    return ObjectScore(req, obj, colour, shape, size, position, matched)


def _relation_ok(spec: Spec, scores: Sequence[ObjectScore]) -> bool | None:
    if spec.relation is None:
        return None
    word, i, j = spec.relation
    a, b = scores[i].found, scores[j].found
    return bool(a and b and relation_holds(word, a.centre, b.centre))


def _points(s: ObjectScore) -> int:
    return s.colour + s.shape + bool(s.size) + bool(s.position)


def score(image: Any, caption_or_spec: str | Spec | Scene, min_pixels: int = MIN_PIXELS) -> Score:
    """Score an image (PIL or (H, W, 3) uint8) against a caption, a :class:`Spec` or a :class:`Scene`.

    Requested objects are assigned to found ones by the best assignment (most correct attributes,
    then the relation), trying every permutation of the largest MAX_CANDIDATES found objects.
    """
    spec = _as_spec(caption_or_spec)
    found = find_objects(image, min_pixels)
    candidates: list[FoundObject | None] = list(found[:MAX_CANDIDATES])
    candidates += [None] * max(len(spec.objects) - len(candidates), 0)
    best, best_key = None, None
    for perm in itertools.permutations(candidates, len(spec.objects)):
        scores = tuple(_object_score(r, f) for r, f in zip(spec.objects, perm))
        relation = _relation_ok(spec, scores)
        key = (sum(s.matched for s in scores), sum(map(_points, scores)), bool(relation))
        if best_key is None or key > best_key:
            best, best_key = (scores, relation), key
    scores, relation = best
    count = len(found) == len(spec.objects)
    match = all(s.matched for s in scores) and relation is not False and count
    return Score(scores, relation, count, len(found), match, tuple(found))


# --- scoring a layout ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BoxScore:
    """One layout box: is an object of the phrase's colour and shape centred in it, and its bbox IoU."""

    phrase: str
    box: tuple[float, float, float, float]
    ok: bool
    iou: float
    found: FoundObject | None


@dataclass(frozen=True)
class LayoutScore:
    boxes: tuple[BoxScore, ...]
    accuracy: float  # fraction of boxes that are ok
    mean_iou: float  # mean over boxes (0 for a box with no matching object)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def _box_fields(item: Any) -> tuple[str, tuple[float, ...]]:
    """(phrase, box) from a dict ``{"phrase", "box"}`` or an object with those attributes (folder.Box)."""
    if isinstance(item, dict):
        return item["phrase"], tuple(item["box"])
    return item.phrase, tuple(item.box)


def score_layout(image: Any, boxes: Sequence[Any], min_pixels: int = MIN_PIXELS) -> LayoutScore:
    """For each box, find an object of the phrase's colour and shape whose centre lies in the box."""
    found = find_objects(image, min_pixels)
    results = []
    for item in boxes:
        phrase, box = _box_fields(item)
        want = parse_caption(phrase).objects[0]
        inside = [
            f for f in found
            if (f.colour, f.shape) == (want.colour, want.shape)
            and box[0] <= f.centre[0] < box[2] and box[1] <= f.centre[1] < box[3]
        ]
        best = max(inside, key=lambda f: box_iou(f.box, box), default=None)
        iou = box_iou(best.box, box) if best else 0.0
        results.append(BoxScore(phrase, box, best is not None, iou, best))
    n = max(len(results), 1)
    return LayoutScore(tuple(results), sum(r.ok for r in results) / n, sum(r.iou for r in results) / n)


# --- scoring a segmentation map ---------------------------------------------------------------
@dataclass(frozen=True)
class SegmapScore:
    pixel_accuracy: float  # found foreground vs segmap > 0
    miou: float  # mean IoU over the classes present in the map or the prediction, background included
    class_iou: dict[int, float]
    colour: bool | None  # every captioned object has the right colour (None without a caption)
    caption_score: Score | None


def _as_label_array(segmap: Any) -> np.ndarray:
    if isinstance(segmap, Image.Image):
        return np.asarray(segmap)
    array = np.asarray(segmap)
    if array.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {array.shape}")
    return array


def score_segmap(
    image: Any, segmap: Any, caption: str | Spec | None = None, min_pixels: int = MIN_PIXELS
) -> SegmapScore:
    """Compare the found objects' pixels and shape labels with a segmentation map (H, W), 0 = background."""
    target = _as_label_array(segmap).astype(np.int64)  # (H, W)
    found, label_map = _find(image, min_pixels)
    if target.shape != label_map.shape:
        raise ValueError(f"segmap is {target.shape}, image is {label_map.shape}")
    lut = np.array([0] + [SEG_LABELS[f.shape] for f in found], np.int64)
    predicted = lut[label_map]  # (H, W) shape labels
    accuracy = float(((predicted > 0) == (target > 0)).mean())
    classes = sorted(set(np.unique(target).tolist()) | set(np.unique(predicted).tolist()))
    class_iou = {
        int(c): float(((predicted == c) & (target == c)).sum() / ((predicted == c) | (target == c)).sum())
        for c in classes
    }
    caption_score = score(image, caption, min_pixels) if caption is not None else None
    colour = None if caption_score is None else all(s.colour for s in caption_score.objects)
    return SegmapScore(accuracy, float(np.mean(list(class_iou.values()))), class_iou, colour, caption_score)
