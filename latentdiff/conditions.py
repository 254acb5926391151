"""A request's layout and segmentation map → the conditions and text guidance of a generation call.

Every front end (``latentdiff generate`` and ``inpaint``, the web app's panels) reads its own inputs — a
layout file or boxes drawn on a canvas, a map's PNG file or upload — and then calls :func:`request_conditions`,
which makes the decisions they share:

* **Region phrases**: with a map and no layout, the objects a shapes-world prompt names are bound to the
  map's regions (:func:`latentdiff.regions.bind_regions`) and drawn as a layout too, when the model has a
  layout checkpoint (unless the request turns them off).
* **Defaults from the attached layout checkpoint**: the layout scale (its ``layout_scale``), the regional text
  share (its ``regional_text``, :func:`latentdiff.layout.regional_share`) and, for region phrases, the text
  guidance (its ``region_guidance``, :func:`latentdiff.layout.text_guidance`); a segmentation map's scale is 1.

What it says along the way (why region phrases were not used, what they bound) comes back as notes, which the
CLI prints and the web app leaves out. The result's ``spatial`` goes to ``Pipeline.generate(spatial=…)`` (see
:class:`latentdiff.layout.Spatial`; :mod:`latentdiff.conditioning` turns it into routes), its ``guidance`` as
the call's text guidance (None: the model's default).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from latentdiff.layout import LayoutEntry, Spatial, regional_share, text_guidance
from latentdiff.regions import bind_regions


@dataclass(frozen=True)
class Conditions:
    """What a request's spatial parts give a generation call: its :class:`Spatial` (None: neither a layout nor
    a map), the text guidance (None: the model's default) and notes for the user."""

    spatial: Spatial | None
    guidance: float | None
    notes: tuple[str, ...] = ()


def request_conditions(pipe, prompt: str, layout: list[LayoutEntry] | None = None, segmap: np.ndarray | None = None,
                       *, layout_scale: float | None = None, segmap_scale: float | None = None,
                       regional_text: float | None = None, region_phrases: bool | None = None,
                       guidance: float | None = None,
                       find_layout: Callable[[], str | Path | None] | None = None) -> Conditions:
    """The conditions and text guidance of a request (see the module docstring). ``layout`` and ``segmap`` are
    read and checked by the front end, with the checkpoints they need attached to ``pipe``; scales, the share
    and ``region_phrases`` None take the defaults (the attached layout checkpoint's; region phrases on).
    ``guidance``: the text guidance asked for. ``find_layout``: where a layout checkpoint is, when region
    phrases bind and ``pipe`` has none attached yet (None: nowhere)."""
    notes, regions = [], layout is None and segmap is not None and region_phrases is not False and bool(prompt.strip())
    if regions:
        layout, note = _region_layout(pipe, prompt, segmap, find_layout)
        notes.append(note if layout is None else note + _defaults_note(pipe, guidance, regional_text))
        regions = layout is not None
    if layout is None and segmap is None:
        return Conditions(None, guidance, tuple(notes))
    spatial = Spatial(layout, segmap, layout_scale=pipe.layout_scale if layout_scale is None else layout_scale,
                      segmap_scale=1.0 if segmap_scale is None else segmap_scale, region_phrases=regions,
                      regional_text=regional_share(pipe, regional_text, layout))
    return Conditions(spatial, text_guidance(pipe, guidance, spatial), tuple(notes))


def _region_layout(pipe, prompt: str, segmap: np.ndarray, find_layout) -> tuple[list[LayoutEntry] | None, str]:
    """The layout binding the prompt's objects to the map's regions, with a layout checkpoint attached, and a
    note saying what it bound; None and a note saying why when the prompt does not bind or there is no layout
    checkpoint."""
    binding = bind_regions(prompt, segmap)
    if binding.layout is None:
        return None, (f"--segmap: the prompt's colours are left to the text, {binding.reason}; "
                      "--layout gives a phrase per box")
    if not pipe.layout_slots:
        folder = find_layout() if find_layout is not None else None
        if folder is None:
            return None, (f"--segmap: {pipe.name} has no layout checkpoint to draw the prompt's objects in their "
                          "regions; the map is drawn alone (--layout-model DIR gives one)")
        pipe.attach_layout(folder)
    return binding.layout, f"--segmap: region phrases from the prompt: {binding.describe()}"


def _defaults_note(pipe, guidance: float | None, share: float | None) -> str:
    """What region phrases take from the layout checkpoint unless the request says otherwise."""
    text = "" if guidance is not None or pipe.region_guidance is None else (
        f"; text guidance {pipe.region_guidance:g}, the layout checkpoint's region_guidance (--guidance overrides)")
    return text + ("" if share is not None or not pipe.regional_text else
                   f"; regional text {pipe.regional_text:g}, the checkpoint's (--regional-text overrides)")
