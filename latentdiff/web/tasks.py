"""Requests of the web app → checked jobs.

A request is a JSON object with ``kind`` (txt2img | inpaint | layout | segmap) and the fields of that
panel. Everything is checked here, before anything is queued, so a bad request is answered at once
with a one-line message naming the field, the value and what was expected: limits (:class:`Limits`, from
:mod:`latentdiff.limits`, the bounds every front end shares; the web app's defaults are ``WEB_LIMITS`` there),
the model's own checks (:meth:`Pipeline.resolve`), uploads (a base64 ``data:`` URL that must decode to
an image no larger than the size limit — read from the header, before any pixel is decoded) and the
inpainting mask (the image's size; :func:`latentdiff.inpaint.load_inputs`).

Layout boxes and segmentation maps become a :class:`latentdiff.layout.Spatial` for ``Pipeline.generate``
through :func:`latentdiff.conditions.request_conditions`, as on the command line (region phrases, the
layout checkpoint's defaults); they are offered when the pipeline has the checkpoint they need attached (a layout one:
:meth:`Pipeline.attach_layout`; a segmentation ControlNet: :meth:`Pipeline.attach_segmap`; ``latentdiff
serve`` attaches the model's layout and segmap companions when it has them, :func:`latentdiff.checkpoint.
companion`), and refused with a message that says how to get one otherwise (:func:`layout_support`).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from latentdiff.conditions import request_conditions
from latentdiff.errors import UserError
from latentdiff.inpaint import load_inputs
from latentdiff.layout import LayoutEntry, segmap_array
from latentdiff.limits import MAX_SEED, Limits, check_scale, check_text, parse_float
from latentdiff.request import batch_size

KINDS = ("txt2img", "inpaint", "layout", "segmap")
MAX_BOXES = 16


@dataclass(frozen=True)
class Plan:
    """A checked request: ``run(pipe) -> images`` and its number of U-Net evaluations."""

    kind: str
    run: Callable[[Any], list]
    total: int


def layout_support(pipe) -> dict[str, bool]:
    """Which of layout / segmap conditioning the pipeline can do: the checkpoints attached to it."""
    return {"layout": getattr(pipe, "layout_slots", 0) > 0, "segmap": getattr(pipe, "controlnet", None) is not None}


UNAVAILABLE = {
    "layout": "layout conditioning needs a layout checkpoint and this model has none: train one with "
              "'latentdiff train-spatial configs/layout_controlnet.yaml --install' (it is installed "
              "into the model folder) or start "
              "'latentdiff serve --layout-model DIR'",
    "segmap": "segmentation-map conditioning needs a segmentation ControlNet and this model has none: train one "
              "with 'latentdiff train-spatial configs/segmap.yaml --install' (it is installed into the model "
              "folder) or start 'latentdiff serve --segmap-model DIR'",
}


# --- fields ---------------------------------------------------------------------------------------

def _text(req: dict, name: str, limits: Limits) -> str:
    value = req.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{name}: expected text")
    return check_text(value, name, limits.max_prompt_chars)


def _int(req: dict, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
    value = req.get(name)
    if value is None or value == "":
        return default
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None:
        raise UserError(f"{name} {value!r}: expected a whole number")
    if not lo <= number <= hi:
        raise UserError(f"{name} {number}: expected {lo}..{hi}")
    return number


def _float(req: dict, name: str) -> float | None:
    value = req.get(name)
    return parse_float(name, None if value == "" else value)  # a blank field: unset


def decode_image(data: Any, name: str, max_side: int):
    """A PIL image from a base64 ``data:`` URL; its size is checked from the header before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data:
        raise UserError(f"{name}: no image uploaded")
    match = re.fullmatch(r"data:[^,]*?;base64,(.*)", data, flags=re.S)
    try:
        raw = base64.b64decode(match.group(1) if match else data, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{name}: the upload is not base64 data") from None
    try:
        with warnings.catch_warnings():  # the size is checked below, before any pixel is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UserError(f"{name}: not an image (expected a PNG, JPEG, WebP, …)") from None
    w, h = img.size
    if max(w, h) > max_side:
        raise UserError(f"{name}: the image is {w}x{h} pixels; the largest side allowed is {max_side} px")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{name}: the image file is damaged ({exc})") from None
    return img


def _common(pipe, req: dict, limits: Limits, size: tuple[int, int] | None = None) -> dict:
    """Prompt, sampling options (model defaults for blanks) and seed, checked."""
    opts = dict(prompt=_text(req, "prompt", limits), negative_prompt=_text(req, "negative_prompt", limits),
                seed=_int(req, "seed", 0, MAX_SEED - (limits.max_images - 1), 0),
                num_images=_int(req, "num_images", 1, limits.max_images, 1),
                steps=_int(req, "steps", 1, limits.max_steps), guidance=_float(req, "guidance"),
                sampler=req.get("sampler") or None)
    if size is None:
        size = (_int(req, "height", 1, limits.max_side), _int(req, "width", 1, limits.max_side))
    resolved = pipe.resolve(opts["steps"], opts["guidance"], opts["sampler"], *size)
    if max(resolved["height"], resolved["width"]) > limits.max_side:
        raise UserError(f"size {resolved['width']}x{resolved['height']}: the largest side allowed is "
                        f"{limits.max_side} px")
    if resolved["steps"] > limits.max_steps:
        raise UserError(f"steps {resolved['steps']}: expected 1..{limits.max_steps}")
    opts.update(steps=resolved["steps"], guidance=resolved["guidance"], sampler=resolved["sampler"])
    opts.update(height=resolved["height"], width=resolved["width"])
    limits.check_batch(batch_size(pipe, opts["height"], opts["width"]), opts["height"], opts["width"],
                       pipe.vae_scale_factor)
    return opts


def _total(pipe, opts: dict) -> int:
    """U-Net evaluations of a request: its steps once per forward batch."""
    return opts["steps"] * math.ceil(opts["num_images"] / batch_size(pipe, opts["height"], opts["width"]))


# --- kinds ----------------------------------------------------------------------------------------

def plan_txt2img(pipe, req: dict, limits: Limits) -> Plan:
    opts = _common(pipe, req, limits)
    return Plan("txt2img", lambda p: p.generate(**opts), _total(pipe, opts))


def plan_inpaint(pipe, req: dict, limits: Limits) -> Plan:
    image = decode_image(req.get("image"), "image", limits.max_side)
    mask = decode_image(req.get("mask"), "mask", limits.max_side)
    load_inputs(image, mask, pipe.vae_scale_factor, image_flag="image", mask_flag="mask")  # sizes, modes
    f = pipe.vae_scale_factor
    padded = (-(-image.height // f) * f, -(-image.width // f) * f)  # the size the pipeline draws at
    opts = _common(pipe, req, limits, size=padded)
    total = _total(pipe, opts)
    opts.pop("height"), opts.pop("width")  # the image's own size
    return Plan("inpaint", lambda p: p.inpaint(image=image, mask=mask, **opts), total)


def _boxes(req: dict, max_boxes: int) -> list:
    """``[{"phrase", "x0", "y0", "x1", "y1"}]`` in [0, 1] image coordinates → [LayoutEntry]."""
    boxes = req.get("boxes")
    if not isinstance(boxes, list) or not boxes:
        raise UserError("boxes: draw at least one box on the canvas")
    if len(boxes) > max_boxes:
        raise UserError(f"boxes: {len(boxes)} boxes; this model supports at most {max_boxes}")
    out = []
    for i, b in enumerate(boxes, 1):
        phrase = b.get("phrase", "").strip() if isinstance(b, dict) and isinstance(b.get("phrase", ""), str) else ""
        if not phrase:
            raise UserError(f"box {i}: give it a phrase")
        check_text(phrase, f"box {i}: phrase")
        try:
            x0, y0, x1, y1 = (float(b[k]) for k in ("x0", "y0", "x1", "y1"))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"box {i}: expected x0, y0, x1, y1 in 0..1") from None
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise UserError(f"box {i}: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not a box inside the image")
        out.append(LayoutEntry(phrase[:200], (x0, y0, x1, y1)))
    return out


def _spatial_plan(kind: str, pipe, req: dict, opts: dict, **parts) -> Plan:
    """The plan of a layout or map request: its conditions and text guidance from the library function the CLI
    calls too (:func:`latentdiff.conditions.request_conditions`: region phrases, the layout checkpoint's
    defaults)."""
    conditions = request_conditions(pipe, opts["prompt"], guidance=_float(req, "guidance"), **parts)
    if conditions.guidance is not None:  # None: the model's, as _common resolved it
        opts = {**opts, "guidance": float(conditions.guidance)}
    return Plan(kind, lambda p: p.generate(spatial=conditions.spatial, **opts), _total(pipe, opts))


def plan_layout(pipe, req: dict, limits: Limits) -> Plan:
    """Boxes + phrases → ``Pipeline.generate(prompt, spatial=Spatial(layout=…))`` (issue #7), with the layout
    checkpoint's scale (unless the request gives one) and regional text."""
    if not layout_support(pipe)["layout"]:
        raise UserError(UNAVAILABLE["layout"])
    layout = _boxes(req, min(MAX_BOXES, pipe.layout_slots))
    scale = check_scale("layout_scale", _float(req, "layout_scale"))
    return _spatial_plan("layout", pipe, req, _common(pipe, req, limits), layout=layout, layout_scale=scale)


def plan_segmap(pipe, req: dict, limits: Limits) -> Plan:
    """A class-index PNG (its size is the image's) → ``Pipeline.generate(prompt, spatial=Spatial(segmap=…))``.
    With ``region_phrases`` (default true) and a layout checkpoint attached, a shapes-world prompt's objects
    are bound to the map's regions and drawn as a layout too (:mod:`latentdiff.regions`), as the CLI does."""
    if not layout_support(pipe)["segmap"]:
        raise UserError(UNAVAILABLE["segmap"])
    image = decode_image(req.get("segmap"), "segmap", limits.max_side)
    segmap = segmap_array(image, "segmap", None, None)
    try:
        opts = _common(pipe, req, limits, size=image.size[::-1])
    except UserError as exc:  # the size comes from the upload: say so
        raise UserError(f"segmap: the image is generated at the map's size, "
                        f"{image.width}x{image.height}: {exc}") from None
    scale = check_scale("segmap_scale", _float(req, "segmap_scale"))
    regions = req.get("region_phrases", True)
    if not isinstance(regions, bool):
        raise UserError(f"region_phrases {regions!r}: expected true or false")
    return _spatial_plan("segmap", pipe, req, opts, segmap=segmap, segmap_scale=scale, region_phrases=regions)


PLANNERS = {"txt2img": plan_txt2img, "inpaint": plan_inpaint, "layout": plan_layout, "segmap": plan_segmap}


def plan(pipe, req: Any, limits: Limits) -> Plan:
    """Check a request and return what to run (a :class:`UserError` names what is wrong)."""
    if not isinstance(req, dict):
        raise UserError("request: expected a JSON object")
    kind = req.get("kind")
    if kind not in PLANNERS:
        raise UserError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    return PLANNERS[kind](pipe, req, limits)
