"""The shapes world: seeded scenes of 1-3 flat shapes on a grey canvas, their captions and annotations.

The contract is ``/work/shared/design/shapes.md`` (user doc: ``docs/shapes.md``). Everything here is
drawn exactly (boolean masks, no antialiasing), so the segmentation map and the boxes match the pixels.

Main entry points:
    sample_scene(rng, ...)  -> Scene            a random scene (1-3 non-overlapping objects)
    render(scene)           -> (rgb, segmap)     (64, 64, 3) uint8 and (64, 64) uint8 label map
    caption(scene, rng)     -> str               one caption in any form of the contract
    box_mask / stroke_mask / rect_mask           inpainting masks, (64, 64) uint8 in {0, 255}
    held_out_prompts()      -> list[str]         prompts for measuring generalisation
    write_dataset(out, num, seed, ...)           an image folder with metadata.jsonl and *_seg.png
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 64
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (50, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (160, 70, 210),
    "orange": (245, 145, 40),
    "cyan": (60, 210, 220),
    "white": (240, 240, 240),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
BASE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
STAR = "star"
SHAPES: tuple[str, ...] = BASE_SHAPES + (STAR,)
SEG_LABELS: dict[str, int] = {"circle": 1, "square": 2, "triangle": 3, "star": 4}  # 0 = background
SIZES: dict[str, int] = {"small": 12, "large": 22}  # bounding-box side in px, drawn with +-1 px
SIZE_THRESHOLD = 17  # a scorer calls a bbox side >= this "large"
CELL_CENTRES: tuple[int, int, int] = (12, 32, 52)
CELL_BOUNDARIES: tuple[int, int] = (22, 42)
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
JITTER = 3  # px, position jitter around the cell centre
GAP = 2  # px, minimum empty gap between object boxes
BACKGROUND_MAX = 50  # background grey level is drawn from 0..BACKGROUND_MAX
STAR_INNER_RATIO = 0.45  # inner/outer radius; bbox fill ~0.38 (a triangle fills ~0.5)

# --- held-out rule -------------------------------------------------------------------------------
# (colour, shape, position) triples that never appear as an object with exclude_held_out=True:
# one per position, three per base shape, every colour at least once.
HELD_OUT_TRIPLES: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "top left"),
    ("green", "circle", "top"),
    ("blue", "square", "top right"),
    ("yellow", "square", "left"),
    ("purple", "triangle", "center"),
    ("orange", "circle", "right"),
    ("cyan", "circle", "bottom left"),
    ("white", "triangle", "bottom"),
    ("red", "square", "bottom right"),
)
# Validation triples: nine more (colour, shape, position) triples, disjoint from the held-out ones and built the
# same way (one per position, three per base shape, every colour at least once), that a recipe may also keep
# out of its data (exclude_validation=True). Its model has then never seen them either, so its one-object
# accuracy on them measures generalisation to unseen triples the way the held-out triples do, and a choice
# (a guidance scale, a fine-tune's settings) can be made on them without touching the held-out split.
VALIDATION_TRIPLES: tuple[tuple[str, str, str], ...] = (
    ("blue", "circle", "top left"),
    ("white", "square", "top"),
    ("orange", "triangle", "top right"),
    ("cyan", "triangle", "left"),
    ("green", "square", "center"),
    ("yellow", "triangle", "right"),
    ("purple", "square", "bottom left"),
    ("red", "circle", "bottom"),
    ("green", "circle", "bottom right"),
)
# (colour, shape) pairs that never appear together in one scene with exclude_held_out=True.
HELD_OUT_PAIRS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("red", "circle"), ("blue", "square")),
    (("green", "triangle"), ("yellow", "circle")),
    (("purple", "square"), ("cyan", "triangle")),
    (("white", "circle"), ("orange", "triangle")),
)


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. ``centre`` is the box centre (x, y); ``box`` is (x0, y0, x1, y1), x1/y1 exclusive."""

    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]
    box: tuple[int, int, int, int]

    @property
    def phrase(self) -> str:
        """The box phrase of the layout format: colour + shape, e.g. ``"a red circle"``, ``"an orange square"``."""
        return with_article(f"{self.colour} {self.shape}")


@dataclass(frozen=True)
class Scene:
    """A canvas: flat grey ``background`` level (0-50) and 1-3 non-overlapping objects."""

    background: int
    objects: tuple[ShapeObject, ...]


# --- geometry --------------------------------------------------------------------------------------
def cell_centre(position: str) -> tuple[int, int]:
    """Pixel centre (x, y) of a named grid cell."""
    index = POSITIONS.index(position)
    return CELL_CENTRES[index % 3], CELL_CENTRES[index // 3]


def position_of(x: float, y: float) -> str:
    """Name of the grid cell that contains the point (x, y); cell boundaries at 22 and 42."""
    col = sum(x >= b for b in CELL_BOUNDARIES)
    row = sum(y >= b for b in CELL_BOUNDARIES)
    return POSITIONS[row * 3 + col]


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str:
    """The relation word that holds for centre ``a`` relative to ``b``, on the axis of larger separation."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether ``a {relation} b`` holds between two centres (x, y); image y grows downwards."""
    checks = {"left of": a[0] < b[0], "right of": a[0] > b[0], "above": a[1] < b[1], "below": a[1] > b[1]}
    return bool(checks[relation])


@functools.lru_cache(maxsize=512)
def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Exact filled mask of a shape stretched to fill a ``width`` x ``height`` box: bool (height, width).

    Every mask touches all four sides of its box, so the tight bbox of the pixels is the box.
    The returned array is cached and read-only.
    """
    ys, xs = np.mgrid[0:height, 0:width]  # (h, w) pixel indices; pixel centres at index + 0.5
    if shape == "square":
        mask = np.ones((height, width), bool)
    elif shape == "circle":  # ellipse inscribed in the box, tested at pixel centres
        u, v = (xs + 0.5 - width / 2) / (width / 2), (ys + 0.5 - height / 2) / (height / 2)
        mask = u**2 + v**2 <= 1.0
    elif shape == "triangle":  # upright isosceles: apex at top centre, base spans the bottom row
        mask = np.abs(xs + 0.5 - width / 2) <= (ys + 1) / height * width / 2
    elif shape == STAR:
        mask = _star_mask(width, height)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    mask.setflags(write=False)
    return mask


def _star_mask(width: int, height: int) -> np.ndarray:
    """Five-pointed star, point up: pixel centres inside the polygon or within 0.55 px of its outline.

    The outer vertices sit on the outermost pixel centres, so the mask touches every side of its box.
    """
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
    vx, vy = radii * np.cos(angles), radii * np.sin(angles)  # (10,) polygon vertices
    vx = 0.5 + (vx - vx.min()) / (vx.max() - vx.min()) * (width - 1)
    vy = 0.5 + (vy - vy.min()) / (vy.max() - vy.min()) * (height - 1)
    py, px = np.mgrid[0:height, 0:width] + 0.5  # (h, w) pixel centres
    ax, ay, bx, by = vx, vy, np.roll(vx, -1), np.roll(vy, -1)  # (10,) edges a -> b
    px, py = px[..., None], py[..., None]  # (h, w, 1) against (10,) edges
    crosses = ((ay > py) != (by > py)) & (px < ax + (py - ay) * (bx - ax) / (by - ay + 1e-12))
    inside = crosses.sum(-1) % 2 == 1  # even-odd rule
    t = np.clip(((px - ax) * (bx - ax) + (py - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    dist = np.hypot(px - (ax + t * (bx - ax)), py - (ay + t * (by - ay))).min(-1)  # (h, w)
    return inside | (dist <= 0.55)


# --- sampling ------------------------------------------------------------------------------------
def _is_held_out_triple(colour: str, shape: str, position: str) -> bool:
    return (colour, shape, position) in HELD_OUT_TRIPLES


def has_held_out_pair(objects: Iterable[ShapeObject]) -> bool:
    """Whether any held-out (colour, shape) pair occurs together among ``objects``."""
    kinds = {(o.colour, o.shape) for o in objects}
    return any(a in kinds and b in kinds for a, b in HELD_OUT_PAIRS)


def is_held_out(scene: Scene) -> bool:
    """Whether a scene contains a held-out triple or a held-out pair (never true with exclude_held_out)."""
    triple = any(_is_held_out_triple(o.colour, o.shape, o.position) for o in scene.objects)
    return triple or has_held_out_pair(scene.objects)


def _sample_object(rng: np.random.Generator, cell: int, shapes: Sequence[str], exclude_held_out: bool,
                   exclude_validation: bool = False) -> ShapeObject:
    """One object in grid cell ``cell`` (0-8): kind, size and a jittered, clamped box."""
    position = POSITIONS[cell]
    while True:  # an excluded triple pins one colour per shape and cell, so this ends quickly
        shape, colour = str(rng.choice(shapes)), str(rng.choice(COLOURS))
        if not ((exclude_held_out and _is_held_out_triple(colour, shape, position))
                or (exclude_validation and (colour, shape, position) in VALIDATION_TRIPLES)):
            break
    size = str(rng.choice(tuple(SIZES)))
    side = SIZES[size] + int(rng.integers(-1, 2))
    cx0, cy0 = cell_centre(position)
    cx, cy = cx0 + int(rng.integers(-JITTER, JITTER + 1)), cy0 + int(rng.integers(-JITTER, JITTER + 1))
    x0 = min(max(cx - side // 2, 0), CANVAS - side)  # clamp: the object stays inside the canvas
    y0 = min(max(cy - side // 2, 0), CANVAS - side)
    box = (x0, y0, x0 + side, y0 + side)
    return ShapeObject(shape, colour, size, position, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), box)


def boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = GAP) -> bool:
    """Whether two boxes (x1/y1 exclusive) have at least ``gap`` empty pixels between them on some axis."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= gap


def sample_scene(
    rng: np.random.Generator,
    objects: tuple[int, int] = (1, 3),
    shapes: Sequence[str] = BASE_SHAPES,
    exclude_held_out: bool = False,
    exclude_validation: bool = False,
) -> Scene:
    """A random scene: ``objects`` = (min, max) count, objects in distinct cells, boxes >= GAP px apart.

    ``shapes`` defaults to the base shapes (no star). With ``exclude_held_out`` no object is a held-out
    (colour, shape, position) triple and no held-out (colour, shape) pair shares a scene; with
    ``exclude_validation`` no object is a validation triple (:data:`VALIDATION_TRIPLES`). Without it the
    random draws are the same as before the option existed.
    """
    lo, hi = objects
    if not 1 <= lo <= hi <= 3:
        raise ValueError(f"objects must be (min, max) with 1 <= min <= max <= 3, got {objects}")
    background = int(rng.integers(0, BACKGROUND_MAX + 1))
    count = int(rng.integers(lo, hi + 1))
    for _ in range(1000):
        placed: list[ShapeObject] = []
        for cell in rng.permutation(9)[:count]:
            obj = _sample_object(rng, int(cell), shapes, exclude_held_out, exclude_validation)
            if not all(boxes_apart(obj.box, o.box) for o in placed):
                break
            placed.append(obj)
        if len(placed) == count and not (exclude_held_out and has_held_out_pair(placed)):
            return Scene(background, tuple(placed))
    raise RuntimeError("could not place the objects; this should not happen")  # pragma: no cover


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene exactly: rgb (64, 64, 3) uint8 and segmap (64, 64) uint8 (0 background, SEG_LABELS)."""
    rgb = np.full((CANVAS, CANVAS, 3), scene.background, np.uint8)  # (H, W, 3)
    seg = np.zeros((CANVAS, CANVAS), np.uint8)  # (H, W)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        mask = shape_mask(obj.shape, x1 - x0, y1 - y0)  # (h, w) bool
        rgb[y0:y1, x0:x1][mask] = PALETTE[obj.colour]
        seg[y0:y1, x0:x1][mask] = SEG_LABELS[obj.shape]
    return rgb, seg


# --- captions ------------------------------------------------------------------------------------
def with_article(words: str) -> str:
    """``words`` after the English indefinite article: "an orange circle", "a large orange circle"."""
    return ("an " if words[:1] in ("a", "e", "i", "o", "u") else "a ") + words


def object_phrase(obj: ShapeObject, size: bool = True, position: bool = True, preposition: str = "in the") -> str:
    """``a {size} {colour} {shape} {in the|at the} {position}``; size and position can be left out."""
    words = ([obj.size] if size else []) + [obj.colour, obj.shape]
    if position:
        words += [preposition, obj.position]
    return with_article(" ".join(words))


def caption(scene: Scene, rng: np.random.Generator, training: bool = True) -> str:
    """A caption of ``scene`` in one of the contract's forms.

    ``training=True`` draws the form at random (size/position dropped, "and" vs relation, object order);
    ``training=False`` gives the most specific form (sizes and positions; relation for two objects).
    """
    objs = list(scene.objects)
    if training and len(objs) > 1:
        objs = [objs[i] for i in rng.permutation(len(objs))]
    prep = str(rng.choice(["in the", "at the"])) if training else "in the"
    if len(objs) == 1:
        size, pos = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if training else (True, True)
        return object_phrase(objs[0], size, pos, prep)
    if len(objs) == 2:
        a, b = (object_phrase(o, size=False, position=False) for o in objs)
        if training and rng.random() < 0.5:
            return f"{a} and {b}"
        return f"{a} {relation_between(objs[0].centre, objs[1].centre)} {b}"
    sizes = [bool(rng.random() < 0.5) if training else True for _ in objs]
    p = [object_phrase(o, s, True, prep) for o, s in zip(objs, sizes)]
    return f"{p[0]}, {p[1]} and {p[2]}"


def boxes_annotation(scene: Scene) -> list[dict]:
    """The layout annotation: ``[{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...]``."""
    return [{"phrase": o.phrase, "box": list(o.box)} for o in scene.objects]


def held_out_prompts() -> list[str]:
    """Evaluation prompts that exclude_held_out training never shows.

    One-object prompts: every held-out triple at both sizes (18). Two-object relation prompts: every
    held-out pair, in both orders, with each of the four relations (32).
    """
    prompts = _one_object_prompts(HELD_OUT_TRIPLES)
    for pair in HELD_OUT_PAIRS:
        for (c1, s1), (c2, s2) in (pair, pair[::-1]):
            prompts += [f"{with_article(f'{c1} {s1}')} {rel} {with_article(f'{c2} {s2}')}" for rel in RELATIONS]
    return prompts


def _one_object_prompts(triples) -> list[str]:
    """The most specific one-object prompt of each (colour, shape, position) triple at both sizes."""
    return [f"a {size} {colour} {shape} in the {position}" for colour, shape, position in triples for size in SIZES]


def validation_triple_prompts() -> list[str]:
    """One-object prompts of the validation triples at both sizes (18), for a model whose data kept them out
    (``exclude_validation``): unseen combinations, like the held-out triples, that choices may be made on."""
    return _one_object_prompts(VALIDATION_TRIPLES)


def training_prompts(num: int = 256, seed: int = 0, objects: tuple[int, int] = (1, 2),
                     exclude_validation: bool = False) -> list[str]:
    """``num`` distinct prompts of training combinations, in a fixed order for ``seed``: the most specific
    caption (sizes and positions; a relation for two objects) of scenes drawn with exclude_held_out=True,
    so no held-out triple or pair, and never one of :func:`held_out_prompts`; with ``exclude_validation``
    no validation triple either (prompts to fine-tune a model on that kept them out)."""
    held, found = set(held_out_prompts()), {}
    for index in range(100 * num):
        rng = np.random.default_rng([seed, index])
        scene = sample_scene(rng, objects, BASE_SHAPES, exclude_held_out=True, exclude_validation=exclude_validation)
        text = caption(scene, rng, training=False)
        if text not in held:
            found.setdefault(text)
        if len(found) == num:
            break
    return list(found)


# --- inpainting masks ---------------------------------------------------------------------------
def box_mask(scene: Scene, index: int, dilate: int = 2) -> np.ndarray:
    """Mask of object ``index``'s box grown by ``dilate`` px (clamped): (64, 64) uint8 in {0, 255}."""
    x0, y0, x1, y1 = scene.objects[index].box
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    mask[max(y0 - dilate, 0) : y1 + dilate, max(x0 - dilate, 0) : x1 + dilate] = 255
    return mask


def stroke_mask(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """Free-form brush strokes: 1-4 polylines of 2-5 points, 4-10 px wide. (size, size) uint8 {0, 255}."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        points = [tuple(p) for p in rng.integers(0, size, (int(rng.integers(2, 6)), 2)).tolist()]
        width = int(rng.integers(4, 11))
        draw.line(points, fill=255, width=width, joint="curve")
        for x, y in points:  # round caps
            draw.ellipse((x - width // 2, y - width // 2, x + width // 2, y + width // 2), fill=255)
    return np.asarray(img, np.uint8).copy()


def rect_mask(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """One random axis-aligned rectangle, sides 1/5 to 2/3 of the canvas: (size, size) uint8 {0, 255}."""
    w, h = (int(v) for v in rng.integers(size // 5, 2 * size // 3 + 1, 2))
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    mask = np.zeros((size, size), np.uint8)
    mask[y0 : y0 + h, x0 : x0 + w] = 255
    return mask


# --- writing a data set ----------------------------------------------------------------------------
STAR_MODES: dict[str, tuple[str, ...]] = {"none": BASE_SHAPES, "with": SHAPES, "only": (STAR,)}


@dataclass(frozen=True)
class _WriteJob:
    out: str
    seed: int
    objects: tuple[int, int]
    shapes: tuple[str, ...]
    exclude_held_out: bool
    exclude_validation: bool = False


def scene_for_index(seed: int, index: int, objects=(1, 3), shapes=BASE_SHAPES, exclude_held_out=False,
                    exclude_validation=False):
    """The (scene, caption) of image ``index`` of a data set: seeded per image, so independent of workers."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, objects, shapes, exclude_held_out, exclude_validation)
    return scene, caption(scene, rng, training=True)


def _file_names(index: int) -> tuple[str, str]:
    """The image and segmap file names of scene ``index`` (``_WRITTEN_NAME`` matches both)."""
    return f"{index:06d}.png", f"{index:06d}_seg.png"


def _write_one(job: _WriteJob, index: int) -> str:
    """Render and save image ``index`` and its segmap; return its metadata.jsonl line."""
    scene, text = scene_for_index(job.seed, index, job.objects, job.shapes, job.exclude_held_out,
                                  job.exclude_validation)
    rgb, seg = render(scene)
    name, seg_name = _file_names(index)
    Image.fromarray(rgb, "RGB").save(os.path.join(job.out, name), compress_level=1)
    Image.fromarray(seg, "L").save(os.path.join(job.out, seg_name), compress_level=1)
    record = {"file_name": name, "text": text, "boxes": boxes_annotation(scene), "segmap": seg_name}
    return json.dumps(record)


def write_dataset(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    objects: tuple[int, int] = (1, 3),
    star: str = "none",
    exclude_held_out: bool = False,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    exclude_validation: bool = False,
) -> Path:
    """Write ``num`` scenes to the image folder ``out`` (``NNNNNN.png``, ``NNNNNN_seg.png``, metadata.jsonl).

    ``star``: "none" (default, no star anywhere), "with" (star is a fourth shape) or "only" (every object
    is a star). ``progress(n)`` is called after every ``n`` finished images. metadata.jsonl is written
    last, atomically, so an interrupted run leaves no half data set behind. Returns the folder.
    """
    if star not in STAR_MODES:
        raise ValueError(f"star must be one of {', '.join(STAR_MODES)}, got {star!r}")
    if num < 1 or seed < 0:
        raise ValueError(f"need num >= 1 and seed >= 0, got num={num}, seed={seed}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = _listed_files(out / "metadata.jsonl")
    job = _WriteJob(str(out), seed, tuple(objects), STAR_MODES[star], exclude_held_out, exclude_validation)
    work = functools.partial(_write_one, job)
    lines: list[str] = []
    if workers <= 1 or num < 256:
        for index in range(num):
            lines.append(work(index))
            if progress:
                progress(1)
    else:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(workers) as pool:
            for line in pool.imap(work, range(num), chunksize=64):  # imap keeps index order
                lines.append(line)
                if progress:
                    progress(1)
    tmp = out / "metadata.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out / "metadata.jsonl")
    written = {name for index in range(num) for name in _file_names(index)}
    for name in sorted(before - written):  # a replaced, larger data set: its images past the new end
        (out / name).unlink(missing_ok=True)
    return out


_WRITTEN_NAME = re.compile(r"\d{6}(_seg)?\.png")


def _listed_files(metadata: Path) -> set[str]:
    """The image and segmap file names a shapes data set's metadata.jsonl lists (empty when there is none):
    only names this writer gives (``NNNNNN.png``, ``NNNNNN_seg.png``) in the folder itself, so no file of
    someone else's data set, and nothing outside the folder, is ever touched."""
    if not metadata.is_file():
        return set()
    names = set()
    for line in metadata.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for key in ("file_name", "segmap"):
            name = record.get(key)
            if isinstance(name, str) and _WRITTEN_NAME.fullmatch(name):
                names.add(name)
    return names
