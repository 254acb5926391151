"""What one generation call asks for: its options, its images and its batches, checked before any work.

* :func:`resolve` fills unset options (sampler, steps, guidance, size) from the model's defaults
  (``pipe.defaults``: :data:`latentdiff.checkpoint.GENERATE_DEFAULTS` unless its ``latentdiff.json`` names
  others) and checks them.
* :func:`plan` lists the images of a call as :class:`Row` values. Seeds: the images are numbered
  k = 0, 1, … (prompt-major) and image k uses ``seed + k`` — so an image does not depend on how many others
  are drawn with it; a record's batch is rebuilt the same way.
* :func:`batches` splits the rows into forward batches (:func:`batch_size`) after :func:`check_batch` has
  checked the first against ``pipe.limits`` (a :class:`latentdiff.limits.Limits`: image side, images per
  call, steps, latent pixels per batch, prompt length) — before any tensor is allocated.

The ``pipe`` these functions take is a :class:`latentdiff.pipeline.Pipeline` (its defaults, native size,
schedule, VAE factor and limits).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

from latentdiff.config import SAMPLERS
from latentdiff.errors import UserError
from latentdiff.limits import DEFAULT_BATCH, MAX_SEED, Limits, check_int

MAX_BATCH = DEFAULT_BATCH  # images per forward pass unless batch_size says otherwise (or they exceed the limits)


@dataclass(frozen=True)
class Row:
    """One image to draw: its prompt, negative prompt and seed."""

    prompt: str
    negative_prompt: str
    seed: int


def resolve(pipe, steps=None, guidance=None, sampler=None, height=None, width=None) -> dict[str, Any]:
    """Fill unset options from the model's defaults (``pipe.defaults``, its native size) and check them (a
    :class:`UserError` names the bad value)."""
    steps = pipe.defaults["steps"] if steps is None else steps
    guidance = pipe.defaults["guidance"] if guidance is None else guidance
    sampler = pipe.defaults["sampler"] if sampler is None else sampler
    size = pipe.native_size
    height, width = height or size, width or size
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}'; expected one of {', '.join(SAMPLERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= pipe.schedule.num_timesteps:
        raise UserError(f"steps {steps!r}: expected an integer in 1..{pipe.schedule.num_timesteps}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise UserError(f"guidance {guidance!r}: expected a finite number")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % pipe.vae_scale_factor:
            raise UserError(f"{name} {v!r}: expected a positive multiple of {pipe.vae_scale_factor} "
                            f"(the VAE's downscale factor)")
        pipe.limits.check_side(name, v)
    pipe.limits.check_steps(steps)
    return dict(steps=steps, guidance=float(guidance), sampler=sampler, height=height, width=width)


def plan(limits: Limits, prompt: str | list[str], negative_prompt: str | list[str] | None, num_images: int,
         seed: int) -> list[Row]:
    """The images of a call: each prompt ``num_images`` times (prompt-major), image k with seed + k.
    Checks the prompts as text and the number of images against ``limits`` first."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negs = negative_prompt if isinstance(negative_prompt, (list, tuple)) else [negative_prompt or ""] * len(prompts)
    if len(negs) != len(prompts):
        raise UserError(f"got {len(negs)} negative prompts for {len(prompts)} prompts")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise UserError(f"num_images {num_images!r}: expected a positive integer")
    limits.check_images(num_images, prompts=len(prompts))
    for name, texts in (("prompt", prompts), ("negative_prompt", negs)):
        for text in texts:
            limits.check_text(text, name)
    try:
        seed = operator.index(seed)
    except TypeError:
        raise UserError(f"seed {seed!r}: expected a whole number") from None
    check_int(seed, "seed", 0, MAX_SEED - (len(prompts) * num_images - 1))  # the last image's seed fits too
    pairs = [(p, n) for p, n in zip(prompts, negs) for _ in range(num_images)]
    return [Row(p, n, int(seed) + k) for k, (p, n) in enumerate(pairs)]


def check_batch(pipe, batch: int, steps: int, height: int, width: int, recorded: bool = False) -> None:
    """One forward batch within ``pipe.limits``: its size, its steps and its latent pixels (``recorded``: a
    record's batch, which cannot be split)."""
    pipe.limits.check_images(batch, "batch_size")
    pipe.limits.check_steps(steps)
    pipe.limits.check_size(height, width)
    pipe.limits.check_batch(batch, height, width, pipe.vae_scale_factor, suggest=not recorded)


def batch_size(pipe, height: int, width: int, wanted: int | None = None) -> int:
    """Images per forward pass: ``wanted`` when given (checked when drawn), else up to ``MAX_BATCH`` as
    ``pipe.limits.max_batch_pixels`` allows at this size."""
    return wanted or pipe.limits.batch_size(height, width, pipe.vae_scale_factor, MAX_BATCH)


def batches(pipe, rows: list[Row], opts: dict, wanted: int | None = None) -> list[list[Row]]:
    """``rows`` in forward batches of :func:`batch_size` for the resolved ``opts``, the batch checked against
    the limits (:func:`check_batch`) before any work."""
    bs = batch_size(pipe, opts["height"], opts["width"], wanted)
    check_batch(pipe, min(bs, len(rows)), opts["steps"], opts["height"], opts["width"])
    return [rows[i:i + bs] for i in range(0, len(rows), bs)]
