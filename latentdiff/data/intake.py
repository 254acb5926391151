"""Real-world image intake: every image of a user's folder becomes an R×R RGB array, or is skipped with
a reason, and a summary says which.

Conversions (each one counted and named in the summary):

* **EXIF orientation** is applied (phone photos stored sideways come out upright).
* **Transparency** (RGBA, LA, PA, a palette or grey image with a transparent colour) is composited on a
  flat background, white by default or black (``background``); fully opaque alpha is simply dropped.
* **Grayscale** (L, 1), **palette** (P), **CMYK**, YCbCr, LAB and HSV images are converted to RGB.
* **16-bit** images (I;16, I) are scaled to 8 bits over their full range (v / 257); float images (F)
  in [0, 1] are scaled by 255.
* **Size**: the centre square of the image is kept (*centre crop*, no aspect-ratio buckets: the models
  here are trained on squares) and resized to R×R (bicubic, antialiased). Images smaller than R are
  upscaled; very large JPEGs are decoded at 1/2, 1/4 or 1/8 scale first, which is fast and exact enough.

Skipped, with the reason: files that are not images or cannot be identified (corrupt), truncated files,
images over Pillow's decompression-bomb limit (~179 megapixels), and anything else a decoder refuses.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from latentdiff.data.folder import Record

BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_MODE_NOTES = {"L": "grayscale", "1": "black-and-white (1-bit)", "P": "palette", "CMYK": "CMYK"}
EXIF_ORIENTATION = 0x0112


class Skipped(Exception):
    """An image that cannot be used; the message is the reason shown to the user."""


@dataclass
class Intake:
    """The result of :func:`take_in`: the usable records with their pixels, and what was skipped or converted."""

    records: list[Record]
    images: torch.Tensor  # (N, 3, R, R) uint8
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    notes: dict[str, list[str]] = field(default_factory=dict)  # conversion -> file names
    resolution: int = 0
    background: str = "white"

    @property
    def total(self) -> int:
        return len(self.records) + len(self.skipped)

    def summary(self, limit: int = 10) -> str:
        """Several lines: counts, then each skip reason and each conversion with up to ``limit`` names."""
        lines = [f"intake: {self.total} images, {len(self.records)} used, {len(self.skipped)} skipped "
                 f"(centre crop to {self.resolution}x{self.resolution})"]
        by_reason: dict[str, list[str]] = defaultdict(list)
        for name, reason in self.skipped:
            by_reason[reason.split(":")[0]].append(name)
        for reason, names in by_reason.items():
            lines.append(f"  skipped, {reason}: {len(names)} ({_names(names, limit)})")
        for note, names in self.notes.items():
            lines.append(f"  converted, {note}: {len(names)} ({_names(names, limit)})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"used": len(self.records), "skipped": [{"file": n, "reason": r} for n, r in self.skipped],
                "converted": self.notes, "resolution": self.resolution, "background": self.background,
                "crop": "centre"}


def _names(names: list[str], limit: int) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def take_in(records: list[Record], size: int, background: str = "white", root: Path | None = None,
            progress: bool = True) -> Intake:
    """Decode and convert every record's image to (size, size, 3) uint8 (see the module docstring).

    Never raises for a bad image: it lands in ``skipped``. ``root`` makes the names in the summary relative.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    used, arrays, skipped, notes = [], [], [], defaultdict(list)
    for record in tqdm(records, desc="reading images", disable=not progress, leave=False):
        name = _display_name(record.image_path, root)
        try:
            pixels, done = load_rgb(record.image_path, size, background)
        except Skipped as exc:
            skipped.append((name, str(exc)))
            continue
        used.append(record)
        arrays.append(pixels)
        for note in done:
            notes[note].append(name)
    images = np.stack(arrays) if arrays else np.empty((0, size, size, 3), np.uint8)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R)
    return Intake(used, tensor, skipped, dict(notes), size, background)


def _display_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return path.name


def load_rgb(path: Path, size: int, background: str = "white") -> tuple[np.ndarray, list[str]]:
    """One image as (size, size, 3) uint8 and the list of conversions applied; :class:`Skipped` if unusable.
    ``background``: what transparent pixels are composited on, "white" or "black"."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft(None, (size, size))  # decode at 1/2..1/8 scale when the image is large
                im.load()
                return _convert(im, size, background)
    except Skipped:
        raise
    except Image.DecompressionBombError as exc:
        raise Skipped(f"too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 — any decoder failure on a user's file means "skip it"
        raise Skipped(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    text = str(exc).split("\n")[0]
    if isinstance(exc, UnidentifiedImageError):
        return "not an image or corrupt: cannot identify the image format"
    if isinstance(exc, FileNotFoundError):
        return "missing: file not found"
    if isinstance(exc, PermissionError):
        return f"unreadable: {text}"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return f"truncated file: {text or type(exc).__name__}"
    return f"cannot decode: {type(exc).__name__}: {text}"


def _convert(im: Image.Image, size: int, background: str) -> tuple[np.ndarray, list[str]]:
    notes = []
    orientation = im.getexif().get(EXIF_ORIENTATION)
    if orientation not in (None, 1):
        im = ImageOps.exif_transpose(im)
        notes.append("rotated by EXIF orientation")
    im, note = to_rgb(im, background)
    if note:
        notes.append(note)
    w, h = im.size
    if min(w, h) < size:
        notes.append(f"upscaled (smaller than {size} px)")
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.resize((size, size), Image.BICUBIC, box=(left, top, left + s, top + s), reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8).copy(), notes


def to_rgb(im: Image.Image, background: str = "white") -> tuple[Image.Image, str | None]:
    """An RGB image and a note naming the conversion (None when the image already was 8-bit RGB)."""
    note = None
    if im.mode.startswith("I") or im.mode == "F":
        im, note = _to_8bit(im), "16-bit scaled to 8-bit" if im.mode != "F" else "float scaled to 8-bit"
    if im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            base = Image.new("RGBA", rgba.size, (*BACKGROUNDS[background], 255))
            return Image.alpha_composite(base, rgba).convert("RGB"), f"transparency composited on {background}"
        return rgba.convert("RGB"), note or "alpha channel dropped (opaque)"
    if im.mode == "RGB":
        return im, note
    return im.convert("RGB"), note or _MODE_NOTES.get(im.mode, f"{im.mode} converted to RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """I;16 / I / F → L: 16-bit data divided by 257 (65535 → 255), floats in [0, 1] times 255."""
    arr = np.asarray(im).astype(np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if im.mode == "F" and peak <= 1.0:
        scale = 1 / 255
    elif im.mode.startswith("I;16") or 255 < peak <= 65535:
        scale = 257.0
    else:
        scale = max(1.0, peak / 255)
    return Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8), "L")
