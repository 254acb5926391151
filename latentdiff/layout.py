"""Layout (boxes + phrases) and segmentation-map inputs, checked, and turned into conditioning routes.

A layout file is JSON: ``[{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...]`` in pixels of the
generated image (x1, y1 exclusive), or normalised to [0, 1] (``normalized=True``). A segmentation map is
a single-channel PNG of class indices (0 background, 1 circle, 2 square, 3 triangle, 4 star), or a
palette PNG whose indices are the classes, of the generated image's size. Every problem is a one-line
:class:`UserError` naming the file, the entry and what was expected.

:class:`Spatial` carries them (with their guidance scales) into :meth:`latentdiff.pipeline.Pipeline.generate`,
which adds the routes to the :class:`~latentdiff.conditioning.Conditioning` of each image and guides
with :func:`~latentdiff.diffusion.guidance.nested_guidance` over the chain
∅ → + segmentation → + layout → + text. The layout enters as a picture for a layout ControlNet
(:func:`layout_picture`) or as GLIGEN's grounding tokens (:func:`grounding_for`), whichever checkpoint the
pipeline has attached.

Regional text (``Spatial.regional_text``, a share in [0, 1]): in the text branch of the chain, each box takes
that share of its text from its own phrase alone and the rest from the prompt, mixed per latent pixel
(:func:`region_weights`, :class:`~latentdiff.diffusion.guidance.Regional`). The prompt "a orange square
left of a white circle" then cannot pull the square towards white: inside the square's box half the text
is "a orange square".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from latentdiff.conditioning import Conditioning, Grounding
from latentdiff.diffusion.guidance import nested_guidance
from latentdiff.errors import UserError
from latentdiff.limits import check_text, short

Box = tuple[float, float, float, float]
MAX_PHRASE_CHARS = 1000  # one box's phrase (CLIP reads 77 tokens of it)


@dataclass(frozen=True)
class LayoutEntry:
    phrase: str
    box: Box  # normalised xyxy in [0, 1]


def parse_layout(data, where: str, width: int, height: int, normalized: bool = False,
                 max_boxes: int = 10) -> list[LayoutEntry]:
    """Check a decoded layout (a list of {"phrase", "box"}) and normalise its boxes; ``where`` names the
    file in errors."""
    if not isinstance(data, list):
        raise UserError(f"{where}: expected a JSON list of {{\"phrase\": ..., \"box\": [x0, y0, x1, y1]}} objects")
    if not data:
        raise UserError(f"{where}: the layout is empty; give at least one box")
    if len(data) > max_boxes:
        raise UserError(f"{where}: {len(data)} boxes; at most {max_boxes} are supported")
    return [_entry(e, f"{where}: entry {i}", width, height, normalized) for i, e in enumerate(data)]


def _entry(e, where: str, width: int, height: int, normalized: bool) -> LayoutEntry:
    if not isinstance(e, dict) or set(e) - {"phrase", "box"} or not {"phrase", "box"} <= set(e):
        raise UserError(f"{where}: expected an object with exactly the keys 'phrase' and 'box', got {e!r}")
    phrase, box = e["phrase"], e["box"]
    if not isinstance(phrase, str) or not phrase.strip():
        raise UserError(f"{where}: phrase {short(phrase)}: expected a non-empty string")
    check_text(phrase, f"{where}: phrase", MAX_PHRASE_CHARS)  # before it reaches the tokenizer
    ok = isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    if not ok:
        raise UserError(f"{where}: box {box!r}: expected four numbers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise UserError(f"{where}: box {box}: expected x0 < x1 and y0 < y1")
    w, h = (1.0, 1.0) if normalized else (float(width), float(height))
    unit = "[0, 1] (normalised)" if normalized else f"the {width}x{height} image"
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise UserError(f"{where}: box {box} is outside {unit}")
    return LayoutEntry(phrase.strip(), (x0 / w, y0 / h, x1 / w, y1 / h))


def read_layout(path: str | Path, width: int, height: int, normalized: bool = False,
                max_boxes: int = 10) -> list[LayoutEntry]:
    """Read and check a layout JSON file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the layout ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    return parse_layout(data, str(path), width, height, normalized, max_boxes)


def read_segmap(path: str | Path, width: int, height: int, num_classes: int = 5) -> np.ndarray:
    """Read and check a segmentation map: (H, W) uint8 class indices."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return segmap_array(im, str(path), width, height, num_classes)
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{path}: cannot read the segmentation map ({getattr(exc, 'strerror', None) or exc})") from None


def segmap_array(im, where: str, width: int | None, height: int | None, num_classes: int = 5) -> np.ndarray:
    """Check a loaded segmentation map image (``where`` names it in errors) → (H, W) uint8 class indices.
    ``width``/``height`` None: any size."""
    if im.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"{where}: mode {im.mode}: expected a single-channel (L) or palette (P) PNG of class indices")
    if width is not None and height is not None and im.size != (width, height):
        raise UserError(f"{where}: size {im.size[0]}x{im.size[1]} differs from the image's {width}x{height}")
    arr = np.asarray(im)
    bad = sorted(set(np.unique(arr).tolist()) - set(range(num_classes)))
    if bad:
        raise UserError(f"{where}: unknown class ids {bad[:5]}; expected 0..{num_classes - 1} "
                        f"(0 background, 1 circle, 2 square, 3 triangle, 4 star)")
    return arr.astype(np.uint8)


@dataclass(frozen=True)
class Spatial:
    """Layout and/or segmentation conditions of a call, with their guidance scales (1: no extra guidance)."""

    layout: list[LayoutEntry] | None = None
    segmap: np.ndarray | None = None  # (H, W) uint8 class indices
    layout_scale: float = 1.0
    segmap_scale: float = 1.0
    region_phrases: bool = False  # the layout was bound from the prompt to the map's regions (latentdiff.regions)
    regional_text: float = 0.0  # the share of each box's text that is its phrase alone (region_weights); 0: none

    def describe(self) -> dict:
        out = {}
        if self.layout is not None:
            out["layout"] = {"boxes": [{"phrase": e.phrase, "box": list(e.box)} for e in self.layout],
                             "scale": self.layout_scale}
            if self.region_phrases:
                out["layout"]["region_phrases"] = True
            if self.regional_text:
                out["layout"]["regional_text"] = self.regional_text
        if self.segmap is not None:
            out["segmap"] = {"sha256": segmap_sha256(self.segmap),
                             "classes": sorted(np.unique(self.segmap).tolist()), "scale": self.segmap_scale}
        return out


def segmap_sha256(segmap: np.ndarray) -> str:
    """The SHA-256 a provenance record keeps of a class map: over its (H, W) uint8 bytes, row by row."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(segmap, np.uint8).tobytes()).hexdigest()


def recorded_spatial(record, segmap: np.ndarray | None = None, where: str = "the image") -> Spatial | None:
    """The layout / segmentation map an image was made with, from its provenance record (``extra.layout``,
    ``extra.segmap``), or None when it had neither. The record keeps the boxes and scales but only the map's
    SHA-256, so a map-conditioned image needs ``segmap`` back: it must have the recorded hash."""
    layout, seg = record.extra.get("layout"), record.extra.get("segmap")
    if segmap is not None and seg is None:
        raise UserError(f"{where} was made without a segmentation map; leave out --segmap")
    if layout is None and seg is None:
        return None
    if seg is not None:
        if segmap is None:
            raise UserError(f"{where} was made with a segmentation map; pass it with --segmap PNG "
                            f"(its sha256 is {seg['sha256'][:12]}…)")
        digest = segmap_sha256(segmap)
        if digest != seg["sha256"]:
            raise UserError(f"--segmap: the map has sha256 {digest[:12]}…, {where} was made with "
                            f"{seg['sha256'][:12]}…")
    entries = None if layout is None else [LayoutEntry(b["phrase"], tuple(float(v) for v in b["box"]))
                                           for b in layout["boxes"]]
    return Spatial(entries, segmap if seg is not None else None,
                   layout_scale=float(layout["scale"]) if layout else 1.0,
                   segmap_scale=float(seg["scale"]) if seg else 1.0,
                   region_phrases=bool(layout and layout.get("region_phrases")),
                   regional_text=float(layout.get("regional_text", 0.0)) if layout else 0.0)


def text_guidance(pipe, guidance: float | None, spatial: Spatial | None = None) -> float | None:
    """The text guidance a call asks for: ``guidance`` when given; for region phrases (a layout bound from
    the prompt to the map, :mod:`latentdiff.regions`) the layout checkpoint's ``region_guidance`` when it
    has one; else None, the model's default."""
    if guidance is None and spatial is not None and spatial.region_phrases:
        return pipe.region_guidance
    return guidance


def regional_share(pipe, share: float | None, layout) -> float:
    """The share of each layout box's text that is its phrase alone (regional text, :func:`region_weights`)
    for a call with ``layout`` (None: no layout, so 0): ``share`` when given, else the layout checkpoint's
    ``regional_text`` (0 when it has none)."""
    if layout is None:
        return 0.0
    return pipe.regional_text if share is None else float(share)


def check_spatial(pipe, spatial: Spatial, height: int, width: int) -> None:
    """A one-line error when ``spatial`` asks for a checkpoint ``pipe`` lacks, or does not fit the image."""
    if spatial.layout is not None and not pipe.layout_slots:
        raise UserError("this model has no layout checkpoint (layout_controlnet/ or gligen/); pass "
                        "--layout-model DIR")
    if spatial.layout is not None and len(spatial.layout) > pipe.layout_slots:
        raise UserError(f"{len(spatial.layout)} layout boxes; this model supports at most {pipe.layout_slots}")
    if spatial.segmap is not None and pipe.controlnet is None:
        raise UserError("this model has no segmentation ControlNet (controlnet/); pass --segmap-model DIR")
    if spatial.segmap is not None and spatial.segmap.shape != (height, width):
        raise UserError(f"segmentation map of size {spatial.segmap.shape[1]}x{spatial.segmap.shape[0]}; the "
                        f"image is {width}x{height}")


def spatial_denoiser(pipe, model, spatial: Spatial, cond: Conditioning, uncond: Conditioning | None,
                     guidance: float, size: tuple[int, int]):
    """The denoiser of a call with a layout and/or a map: checked against ``pipe``'s checkpoints
    (:func:`check_spatial`), then guided with the nested multi-condition formula over
    :func:`guidance_chain`."""
    check_spatial(pipe, spatial, *size)
    return nested_guidance(model, *guidance_chain(pipe, spatial, cond, uncond, guidance, size))

def grounding_for(pipe, layout: list[LayoutEntry], batch: int, slots: int) -> Grounding:
    """The GLIGEN tokens of one layout for ``batch`` images."""
    from latentdiff.models.gligen import grounding_tensors, phrase_embeddings

    emb = phrase_embeddings(pipe.text_encoder, pipe.tokenizer, [e.phrase for e in layout]).cpu()  # (P, D)
    boxes, e, mask = grounding_tensors([list(zip(emb, [x.box for x in layout]))], emb.shape[-1], slots)
    g = Grounding(boxes, e, mask).map(lambda v: v.expand(batch, *v.shape[1:]).to(pipe.device))
    return g


def layout_picture(pipe, layout: list[LayoutEntry], batch: int, height: int, width: int) -> torch.Tensor:
    """The layout ControlNet's input for one layout, (batch, D + 1, height, width)."""
    from latentdiff.models.control import rasterise_layout, unit_rms

    g = grounding_for(pipe, layout, 1, len(layout))  # the same phrase embeddings and boxes as GLIGEN's tokens
    return rasterise_layout(g.boxes, unit_rms(g.embeddings), g.mask, height, width).expand(batch, -1, -1, -1)


def guidance_chain(pipe, spatial: Spatial, cond: Conditioning, uncond: Conditioning | None, guidance: float,
                   size: tuple[int, int] | None = None) -> tuple[list[Conditioning], list[float]]:
    """The nested chain C_0 … C_k and scales for :func:`nested_guidance`: conditions are added in the
    order segmentation, layout, text; C_0 has the negative prompt and the null of every route. ``size``
    (height, width) of the image: needed by a layout ControlNet, whose input is a picture."""
    from latentdiff.models.control import one_hot

    b = cond.batch_size
    full = cond
    if spatial.segmap is not None:
        control = one_hot(torch.from_numpy(np.array(spatial.segmap))[None]).expand(b, -1, -1, -1).to(pipe.device)
        full = replace(full, control=control)
    if spatial.layout is not None and pipe.layout_controlnet is not None:
        if size is None:
            raise ValueError("guidance_chain: a layout ControlNet needs the image size")
        full = replace(full, layout_control=layout_picture(pipe, spatial.layout, b, *size))
    elif spatial.layout is not None:
        full = replace(full, grounding=grounding_for(pipe, spatial.layout, b, pipe.layout_slots))
    base = uncond if uncond is not None else cond  # guidance 1: the text is in every branch
    current = full.null(base.context)  # C_0: the null of every route (both branches share any concat)
    text = lambda c: c  # noqa: E731  (the prompt's text as it is)
    if spatial.regional_text and spatial.layout is not None:
        if size is None:
            raise ValueError("guidance_chain: regional text needs the image size")
        text = regional_text(pipe, spatial.layout, b, pipe.latent_shape(1, *size)[2:], spatial.regional_text)
    branch = text if uncond is None else (lambda c: c)  # guidance 1: every branch has the prompt's text
    chain, scales = [branch(current)], []
    if full.control is not None:
        current = replace(current, control=full.control)
        chain.append(branch(current)), scales.append(spatial.segmap_scale)
    if full.grounding is not None or full.layout_control is not None:
        current = replace(current, grounding=full.grounding, layout_control=full.layout_control)
        chain.append(branch(current)), scales.append(spatial.layout_scale)
    if uncond is not None:
        chain.append(text(replace(current, context=cond.context))), scales.append(guidance)
    return chain, scales


def region_weights(layout: list[LayoutEntry], height: int, width: int, share: float = 1.0) -> torch.Tensor:
    """Weight maps (P + 1, height, width) on a grid of the image (the latent's) for regional text: map p + 1 is
    ``share`` times the part of each cell that box p covers, map 0 the rest (the whole prompt's). Where boxes
    overlap they split the cell in proportion to their cover; every cell's weights sum to 1. With share 1
    a cell inside a box takes its text from the box's phrase alone; with 0.5 half from the phrase and half
    from the prompt."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"region_weights: share {share} is outside [0, 1]")

    def cover(lo: float, hi: float, n: int) -> torch.Tensor:  # (n,) fraction of each cell inside [lo, hi]
        edges = torch.arange(n + 1, dtype=torch.float64) / n
        return ((torch.minimum(edges[1:], torch.tensor(hi)) - torch.maximum(edges[:-1], torch.tensor(lo)))
                .clamp(min=0) * n)

    boxes = torch.stack([cover(y0, y1, height)[:, None] * cover(x0, x1, width)[None, :]
                         for x0, y0, x1, y1 in (e.box for e in layout)])  # (P, h, w)
    boxes = (boxes / boxes.sum(0).clamp(min=1.0)).float()
    return torch.cat([1.0 - share * boxes.sum(0, keepdim=True), share * boxes])


def regional_text(pipe, layout: list[LayoutEntry], batch: int, latent_size: tuple[int, int], share: float = 1.0):
    """``text(branch)``: the :class:`~latentdiff.diffusion.guidance.Regional` condition in which each box of
    ``layout`` takes ``share`` of its text from its own phrase (the branch with the phrase's tokens) and the
    rest, like the remainder of the image, from the branch's own text; mixed by :func:`region_weights` on the
    latent grid. Regional prompting: a phrase's colour cannot leak into another box through the prompt."""
    from latentdiff.diffusion.guidance import Regional

    phrases = pipe.conditioning([e.phrase for e in layout]).context  # (P, L, D)
    weights = region_weights(layout, *latent_size, share)[:, None, None].to(pipe.device)  # (P + 1, 1, 1, h, w)

    def text(branch: Conditioning) -> Regional:
        return Regional([branch] + [replace(branch, context=phrases[p:p + 1].expand(batch, -1, -1))
                                    for p in range(len(layout))], weights)

    return text
