"""Image folders: the on-disk data set format, for the shapes world and for users' own data alike.

A folder holds images and their captions, from the first of these that exists:

* ``metadata.jsonl``: one JSON object per line, ``{"file_name": "000123.png", "text": "...",
  "boxes": [{"phrase": "a red circle", "box": [x0, y0, x1, y1]}], "segmap": "000123_seg.png"}``;
  ``boxes`` and ``segmap`` are optional (the Hugging Face imagefolder convention plus two fields).
* ``metadata.csv``: columns ``file_name`` and ``text`` (optional ``boxes`` as JSON text, ``segmap``).
* ``name.txt`` beside each ``name.png``/``.jpg``/...: the caption; ``name_seg.png`` beside it, if there,
  is its segmentation map.

Every problem raises :class:`latentdiff.errors.DataError` with a one-line message naming the file and
line, e.g. ``data/metadata.jsonl line 3: file_name '000003.png': image not found``. A path that resolves
outside the folder (absolute, ``..``, or a symlink leading out) is refused before anything is read.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image

from latentdiff.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SEG_SUFFIX = "_seg"


@dataclass(frozen=True)
class Box:
    """A layout box: a phrase and pixel coordinates (x0, y0, x1, y1), x1/y1 exclusive."""

    phrase: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Record:
    """One image of a folder. ``line`` is the metadata line it came from (None for ``.txt`` captions)."""

    image_path: Path
    text: str
    boxes: tuple[Box, ...] | None = None
    segmap_path: Path | None = None
    line: int | None = None


def load_folder(path: str | Path) -> list[Record]:
    """Read and validate an image folder (see the module docstring). Raises DataError on any problem."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder" + ("" if root.exists() else " (not found)"))
    try:
        return _load_folder(root)
    except OSError as exc:  # an unreadable folder, metadata or caption file
        raise DataError(f"{exc.filename or root}: cannot read ({exc.strerror or exc})") from None


def _load_folder(root: Path) -> list[Record]:
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file() and csv_path.is_file():
        raise DataError(f"{root}: has both metadata.jsonl and metadata.csv; keep one")
    if not (jsonl.is_file() or csv_path.is_file()):
        return _read_sidecars(root)
    meta = jsonl if jsonl.is_file() else csv_path
    try:
        rows = _read_jsonl(meta) if meta == jsonl else _read_csv(meta)
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta}: not UTF-8 text (byte {exc.start})") from None
    records, seen = [], {}
    for line, row in rows:
        record = _record(root, f"{meta} line {line}", row, line)
        if record.image_path in seen:
            first = seen[record.image_path]
            raise DataError(f"{meta} line {line}: file_name {row['file_name']!r} repeats line {first}")
        seen[record.image_path] = line
        records.append(record)
    if not records:
        raise DataError(f"{meta}: no entries")
    return records


def _read_jsonl(meta: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a metadata.jsonl."""
    rows = []
    with meta.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{meta} line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{meta} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append((number, row))
    return rows


def _read_csv(meta: Path) -> list[tuple[int, dict]]:
    """(line number, row) for every row of a metadata.csv; ``boxes`` cells are parsed as JSON."""
    rows = []
    with meta.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file_name", "text"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{meta} line 1: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            row = {k: v for k, v in row.items() if v not in (None, "") or k in ("file_name", "text")}
            if "boxes" in row:
                try:
                    row["boxes"] = json.loads(row["boxes"])
                except json.JSONDecodeError as exc:
                    raise DataError(f"{meta} line {reader.line_num}: boxes: invalid JSON: {exc.msg}") from None
            rows.append((reader.line_num, row))
    return rows


def _record(root: Path, where: str, row: dict[str, Any], line: int) -> Record:
    """Validate one metadata row. ``where`` prefixes every message (``file line N``)."""
    name, text = row.get("file_name"), row.get("text")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: 'file_name' must be a non-empty string")
    if not isinstance(text, str):
        raise DataError(f"{where}: file_name {name!r}: 'text' must be a string caption")
    image = _inside(root, name, f"{where}: file_name {name!r}")
    if not image.is_file():
        raise DataError(f"{where}: file_name {name!r}: image not found")
    size = None  # (width, height), read lazily from the image header only when needed
    boxes = segmap = None
    if row.get("boxes") is not None:
        size = _image_size(image, f"{where}: file_name {name!r}")
        boxes = _boxes(row["boxes"], size, f"{where}: file_name {name!r}")
    if row.get("segmap") is not None:
        size = size or _image_size(image, f"{where}: file_name {name!r}")
        segmap = _segmap(root, row["segmap"], size, where)
    return Record(image, text, boxes, segmap, line)


def _inside(root: Path, name: str, where: str) -> Path:
    """``root / name`` if it stays inside ``root`` after resolving symlinks; refuse it otherwise.

    Only path strings and symlinks are looked at: nothing outside the folder is opened.
    """
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise DataError(f"{where}: absolute paths are not allowed; give a path relative to the folder")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DataError(f"{where}: '..' is not allowed; the file must be inside the folder")
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, name))
    if not target.startswith(base.rstrip(os.sep) + os.sep):
        raise DataError(f"{where}: resolves outside the folder (symlink to {target}); refused")
    return root / name


def _image_size(image: Path, where: str) -> tuple[int, int]:
    """(width, height) from the image header (PIL opens lazily and reads no pixels)."""
    try:
        with Image.open(image) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises UnidentifiedImageError (an OSError)
        raise DataError(f"{where}: not a readable image ({exc})") from None


def _boxes(value: Any, size: tuple[int, int], where: str) -> tuple[Box, ...]:
    """Validate ``[{"phrase": str, "box": [x0, y0, x1, y1]}, ...]`` against the image size."""
    if not isinstance(value, list):
        raise DataError(f"{where}: 'boxes' must be a list of {{\"phrase\", \"box\"}} objects")
    width, height = size
    boxes = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("phrase"), str):
            raise DataError(f"{where}: boxes[{i}] must be an object with a string 'phrase' and a 'box'")
        coords = item.get("box")
        ok = isinstance(coords, list) and len(coords) == 4
        if not ok or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords):
            raise DataError(f"{where}: boxes[{i}].box must be [x0, y0, x1, y1] numbers, got {coords!r}")
        x0, y0, x1, y1 = coords
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DataError(
                f"{where}: boxes[{i}].box {coords} is outside the {width}x{height} image or empty "
                "(need 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)"
            )
        boxes.append(Box(item["phrase"], (x0, y0, x1, y1)))
    return tuple(boxes)


def _segmap(root: Path, name: Any, size: tuple[int, int], where: str) -> Path:
    """Validate a segmap path: inside the folder, exists, single channel, same size as its image."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: 'segmap' must be a non-empty string file name")
    label = f"{where}: segmap {name!r}"
    path = _inside(root, name, label)
    if not path.is_file():
        raise DataError(f"{label}: file not found")
    try:
        with Image.open(path) as img:
            seg_size, bands = img.size, len(img.getbands())
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label}: not a readable image ({exc})") from None
    if seg_size != size:
        raise DataError(f"{label}: size {seg_size[0]}x{seg_size[1]} differs from the image's {size[0]}x{size[1]}")
    if bands != 1:
        raise DataError(f"{label}: must be a single-channel label image, has {bands} channels")
    return path


def _read_sidecars(root: Path) -> list[Record]:
    """Records from ``name.txt`` captions beside images; ``name_seg.png`` is taken as name's segmap."""
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    stems = {p.stem for p in images}
    images = [p for p in images if not (p.stem.endswith(SEG_SUFFIX) and p.stem[: -len(SEG_SUFFIX)] in stems)]
    if not images:
        raise DataError(f"{root}: no images and no metadata.jsonl / metadata.csv")
    uncaptioned = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if len(uncaptioned) == len(images):
        raise DataError(f"{root}: no captions: add metadata.jsonl, metadata.csv or a name.txt beside each image")
    if uncaptioned:
        more = f" and {len(uncaptioned) - 3} more" if len(uncaptioned) > 3 else ""
        raise DataError(f"{root}: no caption (.txt) for {', '.join(uncaptioned[:3])}{more}")
    records = []
    for image in images:
        _inside(root, image.name, f"{root}: {image.name}")
        _inside(root, image.with_suffix(".txt").name, f"{root}: {image.with_suffix('.txt').name}")
        text = _read_caption(image.with_suffix(".txt"))
        seg = image.with_name(image.stem + SEG_SUFFIX + ".png")
        segmap = None
        if seg.is_file():
            size = _image_size(image, f"{root}: {image.name}")
            segmap = _segmap(root, seg.name, size, f"{root}: {image.name}")
        records.append(Record(image, text, None, segmap, None))
    return records


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: caption is not UTF-8 text (byte {exc.start})") from None
