"""Bounds on the work one call may ask for, shared by every front end: the CLI, the web app, ``replay``
(whose record comes from a PNG anyone can craft) and the Python API.

A diffusion call costs about image area × images × steps. Left unbounded, one typo (``--height 100000``)
or one crafted record (``"batch_size": 1000000``) allocates gigabytes inside a single native operation,
where Ctrl-C is not seen until that operation returns — minutes later, if ever. So each request is checked
here before any tensor is allocated; beyond a limit it is a one-line :class:`UserError` naming the value,
the limit and the flag that raises it. Within the limits every operation is small enough that Ctrl-C (seen
by Python between operations) and the web app's cancel (checked at every U-Net evaluation) act within a
step.

=====================  ============  ===========  ==========================================================
limit                  CLI, Python   web app      what it bounds
=====================  ============  ===========  ==========================================================
``max_side``           2048 px       1024 px      height and width of a generated or input image
``max_images``         128           8            images per call (prompts × num_images; a record's batch)
``max_steps``          1000          150          sampler steps (the schedule's own length also applies)
``max_batch_pixels``   262,144       262,144      latent pixels of one forward batch, B · H/f · W/f
``max_prompt_chars``   10,000        2,000        characters of one prompt (CLIP reads 77 tokens of it)
=====================  ============  ===========  ==========================================================

``generate``, ``inpaint`` and ``replay`` take ``--max-side``, ``--max-images``, ``--max-steps`` and
``--max-batch-pixels`` to raise them; ``latentdiff serve`` takes the same flags for its requests. In Python,
``pipe.limits = Limits(max_side=4096)``. Fixed bounds that no use needs to raise: :data:`MAX_SEED`,
:data:`MAX_MASK_BLUR`, :data:`MAX_RESAMPLE`.

Prompts are checked as text (:func:`check_text`) before they reach a tokenizer: a ``str`` of valid Unicode
(a prompt passed as non-UTF-8 bytes on the command line arrives as lone surrogates), without control
characters other than tab and newline, and not longer than ``max_prompt_chars``.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from latentdiff.errors import UserError

MAX_SEED = 2**63 - 1  # seeds are 64-bit; seed + k of the last image must still fit
MAX_MASK_BLUR = 64  # px of inpainting feather (its cost grows with the square of the width)
MAX_RESAMPLE = 50  # RePaint resampling: U-Net evaluations per step
MAX_THREADS = 4096  # speed option threads (torch.set_num_threads)
# Control characters (Unicode category Cc) other than tab, newline and carriage return, and surrogates (Cs).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
DEFAULT_BATCH = 8  # images per forward pass unless a call says otherwise (when they fit max_batch_pixels)
MAX_SCALE = 50  # a condition's guidance scale (layout, segmentation map): 0..50, 1 = no extra guidance


@dataclass(frozen=True)
class Limits:
    """What one call may ask for (see the module docstring); every field is a positive integer."""

    max_side: int = 2048
    max_images: int = 128
    max_steps: int = 1000
    max_batch_pixels: int = 2**18
    max_prompt_chars: int = 10_000

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"limit {name} {value!r}: expected a positive integer")

    def describe(self) -> dict:
        return asdict(self)

    # --- checks ----------------------------------------------------------------------------------------

    def check_side(self, name: str, value: int) -> None:
        if value > self.max_side:
            raise UserError(f"{name} {value}: above the limit of {self.max_side} px per side (--max-side)")

    def check_size(self, height: int, width: int) -> None:
        self.check_side("height", height)
        self.check_side("width", width)

    def check_steps(self, steps: int, name: str = "steps") -> None:
        if steps > self.max_steps:
            raise UserError(f"{name} {steps}: above the limit of {self.max_steps} steps (--max-steps)")

    def check_images(self, count: int, name: str = "num_images", prompts: int = 1) -> None:
        """``count`` images asked for by one call (with ``prompts`` prompts: prompts × ``count``)."""
        total = count * prompts
        if total > self.max_images:
            what = f"{name} {count}" if prompts == 1 else f"{prompts} prompts × {name} {count} = {total} images"
            raise UserError(f"{what}: above the limit of {self.max_images} images per call (--max-images)")

    def check_batch(self, batch: int, height: int, width: int, factor: int, suggest: bool = True) -> None:
        """One forward batch of ``batch`` images of height × width pixels (latents H/f × W/f); ``suggest``: name
        the ``--batch-size`` that fits (where the caller can choose one)."""
        pixels = batch * (height // factor) * (width // factor)
        if pixels > self.max_batch_pixels:
            fits = self.batch_size(height, width, factor, batch)
            useful = suggest and fits < batch and self.fits(fits, height, width, factor)
            hint = f"; --batch-size {fits} fits" if useful else ""
            raise UserError(f"a batch of {batch} image(s) of {width}x{height} is {pixels:,} latent pixels: above "
                            f"the limit of {self.max_batch_pixels:,} per batch (--max-batch-pixels{hint})")

    def check_text(self, value, name: str = "prompt") -> str:
        return check_text(value, name, self.max_prompt_chars)

    # --- choices -------------------------------------------------------------------------------------

    def fits(self, batch: int, height: int, width: int, factor: int) -> bool:
        return batch * (height // factor) * (width // factor) <= self.max_batch_pixels

    def batch_size(self, height: int, width: int, factor: int, wanted: int = DEFAULT_BATCH) -> int:
        """The largest batch ≤ ``wanted`` (at least 1) whose latents fit ``max_batch_pixels``."""
        per_image = max(1, (height // factor) * (width // factor))
        return max(1, min(wanted, self.max_batch_pixels // per_image))


# What one web request may ask for unless `latentdiff serve --max-…` says otherwise: tighter than the CLI's,
# since anything that can reach the page can ask.
WEB_LIMITS = Limits(max_side=1024, max_images=8, max_steps=150, max_prompt_chars=2000)


def check_text(value, name: str = "prompt", max_chars: int | None = None) -> str:
    """``value`` if it is text a tokenizer can take (see the module docstring), else a one-line
    :class:`UserError` naming ``name`` and what is wrong (positions count characters from 1)."""
    if not isinstance(value, str):
        raise UserError(f"{name}: expected text, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise UserError(f"{name}: {len(value):,} characters; at most {max_chars:,} (max_prompt_chars)")
    bad = _NOT_TEXT.search(value)
    if bad is not None:
        ch, i = bad.group(), bad.start() + 1
        if "\udc80" <= ch <= "\udcff":  # a byte that was not UTF-8, as Python decodes command-line arguments
            raise UserError(f"{name}: not valid UTF-8 text (byte 0x{ord(ch) - 0xdc00:02x} at character {i}); "
                            f"pass the text in UTF-8")
        if "\ud800" <= ch <= "\udfff":
            raise UserError(f"{name}: not valid Unicode text (a lone surrogate U+{ord(ch):04X} at character {i})")
        raise UserError(f"{name}: control character U+{ord(ch):04X} at character {i}; expected plain text")
    return value


def check_number(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number (not a bool) in [lo, hi], else a one-line :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} {short(value)}: expected a number")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise UserError(f"{name} {short(value)}: expected a finite number") from None
    if not math.isfinite(number):
        raise UserError(f"{name} {short(value)}: expected a finite number")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        span = f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else (
            f"≥ {lo:g}" if lo is not None else f"≤ {hi:g}")
        raise UserError(f"{name} {short(value)}: expected a number {span}")
    return number


def parse_float(name: str, value) -> float | None:
    """A finite number from a flag's text or a request's field (a number or text); None stays None (unset).
    Else a one-line :class:`UserError` naming ``name`` and the value. The CLI and the web app share it."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} {value!r}: expected a number") from None
    if not math.isfinite(number) or isinstance(value, bool):
        raise UserError(f"{name} {value!r}: expected a finite number")
    return number


def check_scale(name: str, value: float | None) -> float | None:
    """A condition's guidance scale (layout, segmentation map) in 0..:data:`MAX_SCALE`; None stays None (the
    default). Else a one-line :class:`UserError`."""
    if value is not None and not 0 <= value <= MAX_SCALE:
        raise UserError(f"{name} {value:g}: expected 0..{MAX_SCALE} (1 = no extra guidance)")
    return value


def check_int(value, name: str, lo: int, hi: int | None = None) -> int:
    """A whole number (an ``int``, not a bool) in lo..hi (hi None: no upper bound), else a one-line
    :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} {short(value)}: expected a whole number")
    if value < lo or (hi is not None and value > hi):
        raise UserError(f"{name} {short(value)}: expected {lo}..{hi}" if hi is not None else
                        f"{name} {short(value)}: expected a whole number ≥ {lo}")
    return value


def short(value, limit: int = 60) -> str:
    """repr(value) cut to ``limit`` characters for error messages: one line, however large the value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<a {value.bit_length()}-bit integer>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
