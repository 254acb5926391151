"""Inpainting: repaint the masked region of an image from a prompt (white in the mask = repaint).

>>> pipe = Pipeline.load("runs/inpaint/model")
>>> images = pipe.inpaint("a small purple square", image="scene.png", mask="mask.png", seed=0)

Two ways through the one sampling path of :meth:`Pipeline.sample_rows`, differing only in what is passed:

* ``model`` — a dedicated inpainting U-Net (9 input channels, diffusers' layout): the condition route
  ``Conditioning.concat`` carries the mask at latent size and the latents of the masked image,
  ``[x_t (4), mask (1), E(image ⊙ (1 − mask)) (4)]``, exactly what ``StableDiffusionInpaintPipeline`` feeds.
* ``blend`` — any text-to-image model, training-free: blended latent diffusion, a sampler hook
  (:mod:`latentdiff.diffusion.blend`) that keeps the known region on the forward process at every step,
  optionally with RePaint's resampling (``resample``, ddpm sampler).
* ``auto`` — ``model`` when the U-Net has the inpainting inputs, else ``blend``.

In both, the decoded image is composited onto the input with a feathered mask (:func:`feather`): pixels
further than ``mask_blur`` px outside the mask are exactly the input's.

Inpainting is a conditioner, not a pipeline of its own: :func:`inpainting` reads and checks the inputs into an
:class:`Inpainting` value, and :meth:`Pipeline.generate` — the driver of every call — draws with it, so a
layout and a segmentation map (``spatial``) work in the same call as they do without inpainting.

Masks: L, RGB (luminance) or RGBA/LA (luminance × alpha) images the size of the input, or the input's
own alpha channel (``mask_from_alpha``: transparent = repaint). Soft masks are thresholded at 0.5 for
the U-Net (diffusers' convention) and kept soft for the composite. Images whose sides are not multiples of
the VAE factor are padded (edge pixels, marked known) and the result is cropped back.

A mask that selects nothing (no pixel at 0.5 or above: all black, or white only where it is transparent,
or ``mask_from_alpha`` on an opaque image) is refused with a one-line error: the output would be the input,
and a user who passed it meant something else. Input sides are checked against ``pipe.limits.max_side``
from the file's header, before any pixel is decoded.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from latentdiff.conditioning import Conditioning
from latentdiff.diffusion.blend import known_region_hook
from latentdiff.diffusion.sampling import sampling_timesteps
from latentdiff.diffusion.schedule import q_sample
from latentdiff.errors import UserError
from latentdiff.limits import MAX_MASK_BLUR, MAX_RESAMPLE
from latentdiff.pixels import to_unit_hwc

MODES = ("auto", "model", "blend")
DEFAULT_MASK_BLUR = 4  # px of feathering outside the mask (64×64 shapes images)
INPAINT_MODEL_DIR = Path(__file__).parent / "assets" / "inpaint_model"
MASK_MODES = ("1", "L", "P", "RGB", "LA", "PA", "RGBA")


# --- inputs ---------------------------------------------------------------------------------------

def _open(value: Any, flag: str, max_side: int | None = None) -> tuple[Image.Image, str]:
    """(image, name for messages) from a path, a PIL image or an (H, W[, C]) uint8 array; a file's size is
    checked against ``max_side`` from its header, before its pixels are decoded."""
    if isinstance(value, Image.Image):
        img, name = value, flag
    elif isinstance(value, np.ndarray):
        img, name = Image.fromarray(value), flag
    else:
        path = Path(value)
        if not path.is_file():
            raise UserError(f"{flag} {path}: file not found")
        name = f"{flag} {path}"
        try:
            with warnings.catch_warnings():  # the size is checked below, before any pixel is decoded
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    _check_side(img, name, max_side)
                    img.load()
                    return img.copy(), name
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UserError(f"{name}: not an image ({exc})") from None
    _check_side(img, name, max_side)
    return img, name


def _check_side(img: Image.Image, name: str, max_side: int | None) -> None:
    if max_side is not None and max(img.size) > max_side:
        raise UserError(f"{name}: the image is {img.size[0]}x{img.size[1]} pixels; above the limit of {max_side} px "
                        f"per side (--max-side)")


def mask_values(img: Image.Image, name: str = "--mask") -> np.ndarray:
    """A mask image as (H, W) float32 in [0, 1], 1 = repaint: greyscale as is, colour by luminance,
    and with an alpha channel luminance × alpha (transparent pixels are kept)."""
    if img.mode not in MASK_MODES:
        raise UserError(f"{name}: image mode '{img.mode}'; expected a greyscale (L), RGB or RGBA mask")
    if img.mode == "P":
        img = img.convert("RGBA")
    value = np.asarray(img.convert("L"), np.float32) / 255.0  # (H, W)
    if img.mode in ("LA", "PA", "RGBA"):
        value = value * np.asarray(img.getchannel("A"), np.float32) / 255.0
    return value


def check_selects(soft: np.ndarray, img: Image.Image, name: str) -> None:
    """Refuse a mask that selects no pixel (none at 0.5 or above, where the U-Net's mask is 1): the result
    would be the input unchanged. Says so when the mask is white only where it is transparent."""
    if (soft >= 0.5).any():
        return
    if "A" in img.getbands() or img.mode in ("PA", "P"):
        if (mask_values(img.convert("RGB"), name) >= 0.5).any():
            raise UserError(f"{name}: selects nothing to repaint: it is white only where it is transparent, and a "
                            f"mask's transparency counts as black (keep); make the mask opaque, or pass the image "
                            f"with --mask-from-alpha to repaint its transparent part")
    raise UserError(f"{name}: selects nothing to repaint (no pixel is 50 % white or more; white = repaint, "
                    f"black = keep)")


@dataclass(frozen=True)
class InpaintInputs:
    """An image and its mask, padded to multiples of the VAE factor; ``height``/``width`` give the
    original size to crop back to."""

    image: np.ndarray  # (H', W', 3) uint8
    mask: np.ndarray  # (H', W') float32 in [0, 1], soft; padding is 0 (known)
    height: int
    width: int
    image_sha256: str
    mask_sha256: str


def load_inputs(image: Any, mask: Any = None, factor: int = 8, *, mask_from_alpha: bool = False,
                image_flag: str = "--image", mask_flag: str = "--mask", max_side: int | None = None) -> InpaintInputs:
    """Read and check an image and its mask (paths, PIL images or arrays; sides at most ``max_side``); see
    the module docstring."""
    img, img_name = _open(image, image_flag, max_side)
    if mask_from_alpha:
        if mask is not None:
            raise UserError(f"give either {mask_flag} or --mask-from-alpha, not both")
        if "A" not in img.getbands() and not (img.mode == "P" and "transparency" in img.info):
            raise UserError(f"{img_name}: mode '{img.mode}' has no alpha channel; --mask-from-alpha needs an "
                            f"RGBA image (transparent = repaint)")
        soft = 1.0 - np.asarray(img.convert("RGBA").getchannel("A"), np.float32) / 255.0
        if not (soft >= 0.5).any():
            raise UserError(f"{img_name}: --mask-from-alpha selects nothing to repaint (no pixel is transparent "
                            f"enough: alpha below 50 %)")
    elif mask is None:
        raise UserError(f"no mask: pass {mask_flag} MASK (white = repaint) or --mask-from-alpha")
    else:
        m_img, m_name = _open(mask, mask_flag, max_side)
        if m_img.size != img.size:
            raise UserError(f"{m_name}: size {m_img.size[0]}x{m_img.size[1]} differs from {img_name}'s "
                            f"{img.size[0]}x{img.size[1]}; the mask must be the image's size")
        soft = mask_values(m_img, m_name)
        check_selects(soft, m_img, m_name)
    rgb = np.asarray(img.convert("RGB"), np.uint8)  # (H, W, 3)
    h, w = rgb.shape[:2]
    return InpaintInputs(pad_to_multiple(rgb, factor), pad_to_multiple(soft, factor, value=0.0), h, w,
                         _sha256(rgb), _sha256(soft))


def _sha256(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return hashlib.sha256(buf.getvalue()).hexdigest()


def pad_to_multiple(array: np.ndarray, factor: int, value: float | None = None) -> np.ndarray:
    """Pad (H, W[, C]) at the bottom/right to multiples of ``factor``: with edge pixels, or ``value``."""
    h, w = array.shape[:2]
    ph, pw = -h % factor, -w % factor
    if not ph and not pw:
        return array
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    if value is None:
        return np.pad(array, pad, mode="edge")
    return np.pad(array, pad, mode="constant", constant_values=value)


# --- masks and the composite ----------------------------------------------------------------------

def binarize(mask: Tensor) -> Tensor:
    """The mask the U-Net sees: 1 where the soft mask is ≥ 0.5 (diffusers' ``do_binarize``), else 0."""
    return (mask >= 0.5).to(mask.dtype)


def latent_mask(mask: Tensor, factor: int) -> Tensor:
    """(B, 1, H, W) binary mask → (B, 1, H/f, W/f): a latent cell is repainted if any of its f × f pixels
    is (max-pool), so the generated latents cover the whole mask. (diffusers' pipeline resizes with
    nearest-neighbour; the two agree on masks aligned to the f-pixel grid.)"""
    return F.max_pool2d(mask, kernel_size=factor)


def feather(mask: np.ndarray, width: int) -> np.ndarray:
    """Composite weights α (H, W) from a soft mask m (H, W) in [0, 1]: α = m inside the mask, falling
    smoothly to 0 at ``width`` px outside it, 0 beyond:

        α(p) = max_q m(q) · s(1 − |p − q| / (width + 1)),   s(u) = 3u² − 2u³  (smoothstep),

    over |p − q| ≤ width (Euclidean). So α ≥ m everywhere, α = m where nothing masked is within
    ``width`` px, and α = 0 (output = input, exactly) further than ``width`` px from any masked pixel."""
    m = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None]  # (1, 1, H, W)
    if width <= 0:
        return mask.astype(np.float32)
    padded = F.pad(m, (width, width, width, width))
    h, w = mask.shape
    alpha = m.clone()
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            d = (dy * dy + dx * dx) ** 0.5
            if d == 0 or d > width:
                continue
            u = 1.0 - d / (width + 1)
            shifted = padded[..., width + dy:width + dy + h, width + dx:width + dx + w]
            alpha = torch.maximum(alpha, shifted * (3 * u * u - 2 * u ** 3))
    return alpha[0, 0].numpy()


def composite(generated: np.ndarray, original: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """α · generated + (1 − α) · original, rounded: (H, W, 3) uint8; exact where α = 0."""
    a = alpha[..., None].astype(np.float32)
    out = a * generated.astype(np.float32) + (1.0 - a) * original.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --- conditions -----------------------------------------------------------------------------------

def vae_factor(vae) -> int:
    """The VAE's downscale factor f = 2^(number of blocks − 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_images(vae, images: Tensor) -> Tensor:
    """(B, 3, H, W) in [−1, 1] → latents (B, C, H/f, W/f): the VAE posterior mean × its scaling factor, fp32
    on the VAE's device. (Used by inference and by training, so both see the same conditions.)"""
    mean = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
    return mean.float() * float(vae.config.scaling_factor)


def inpainting_concat(vae, image: Tensor, mask: Tensor) -> Tensor:
    """The ``concat`` route of an inpainting U-Net, (B, 1 + C, h, w): the latent mask and the latents of the
    masked image, E(x ⊙ (1 − m)) (masked pixels are 0, mid-grey, as in diffusers). image: (B, 3, H, W) in
    [−1, 1]; mask: (B, 1, H, W) binary, 1 = repaint. Returned on the VAE's device."""
    masked = encode_images(vae, image * (1.0 - mask))  # (B, C, h, w)
    return torch.cat([latent_mask(mask, vae_factor(vae)).to(masked), masked], dim=1)


def whole_image_concat(pipe, batch: int, height: int, width: int) -> Tensor:
    """The ``concat`` of an inpainting U-Net asked for plain text-to-image: everything is repainted."""
    image = torch.zeros(1, 3, height, width)
    mask = torch.ones(1, 1, height, width)
    return inpainting_concat(pipe.vae, image, mask).expand(batch, -1, -1, -1)


def with_concat(pipe, cond: Conditioning, uncond: Conditioning | None, batch: InpaintBatch | None, height: int,
                width: int) -> tuple[Conditioning, Conditioning | None]:
    """``cond`` and ``uncond`` with an inpainting U-Net's extra inputs: ``batch``'s mask and masked latents,
    or (no ``batch``: text-to-image) :func:`whole_image_concat`. Both branches get the same ``concat``."""
    concat = batch.concat if batch is not None else whole_image_concat(pipe, cond.batch_size, height, width)
    return replace(cond, concat=concat), None if uncond is None else replace(uncond, concat=concat)


@dataclass(frozen=True)
class InpaintBatch:
    """What inpainting adds to a batch of text-to-image rows (see :meth:`Pipeline.sample_rows`).

    ``known``: (B, C, h, w) latents of the input; ``mask``: (B, 1, h, w) latent mask, 1 = repaint;
    ``concat``: (B, 1 + C, h, w) for an inpainting U-Net, else None; ``blend``: keep the known region
    on the forward process (:mod:`latentdiff.diffusion.blend`); ``strength`` ∈ (0, 1]: share of the
    steps run, starting from the input noised to that level (1: from pure noise)."""

    known: Tensor
    mask: Tensor
    concat: Tensor | None
    blend: bool
    strength: float = 1.0
    resample: int = 1

    def repeat(self, batch: int) -> "InpaintBatch":
        """The one input image's batch, repeated for ``batch`` rows."""
        rep = lambda v: None if v is None else v.expand(batch, -1, -1, -1)  # noqa: E731
        return InpaintBatch(rep(self.known), rep(self.mask), rep(self.concat), self.blend, self.strength,
                            self.resample)

    @staticmethod
    def cat(batches: list["InpaintBatch"]) -> "InpaintBatch":
        """Rows of several input images in one batch (they must share mode, strength and resample)."""
        first = batches[0]

        def cat(name):
            return None if getattr(first, name) is None else torch.cat([getattr(b, name) for b in batches])

        return InpaintBatch(cat("known"), cat("mask"), cat("concat"), first.blend, first.strength, first.resample)

    def start_step(self, steps: int) -> int:
        """Steps skipped for ``strength`` (:func:`start_step`)."""
        return start_step(self.strength, steps)

    def sampling(self, x_T: Tensor, schedule, sampler: str, steps: int, scheduler_config: dict) -> tuple[Tensor, dict]:
        """(the start state, the extra keyword arguments of :func:`~latentdiff.diffusion.sampling.sample`).
        x_T: (B, C, h, w), the seeded noise; it also noises the known latents, at the start and in blend."""
        known = self.known.to(x_T)
        start = self.start_step(steps)
        if start:
            t0 = sampling_timesteps(sampler, schedule, steps, scheduler_config)[start]
            x_T = q_sample(schedule, known, torch.full((x_T.shape[0],), t0, device=x_T.device), x_T)
        kwargs: dict = {"start": start, "resample": self.resample}
        if self.blend:
            kwargs["on_step"] = known_region_hook(schedule, known, self.mask.to(x_T), x_T)
        return x_T, kwargs


def start_step(strength: float, steps: int) -> int:
    """Steps skipped for ``strength`` (diffusers' rule: run int(steps · strength) of them)."""
    run = min(int(steps * strength), steps)
    if run < 1:
        raise UserError(f"strength {strength:g} with {steps} steps runs no step; raise --strength or --steps")
    return steps - run


def resolve_mode(pipe, mode: str) -> str:
    """``auto`` → ``model`` for an inpainting U-Net, else ``blend``; ``model`` needs an inpainting U-Net."""
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    has_inputs = pipe.is_inpainting
    if mode == "auto":
        return "model" if has_inputs else "blend"
    if mode == "model" and not has_inputs:
        raise UserError(f"--mode model needs an inpainting model (a U-Net with {2 * pipe.latent_channels + 1} "
                        f"input channels); {pipe.name} has {pipe.unet.config.in_channels}. Use --mode blend")
    return mode


def check_strength_resample(strength: float, resample: int) -> None:
    """``strength`` in (0, 1] and ``resample`` a whole number in 1..MAX_RESAMPLE, or a one-line error."""
    if not 0.0 < strength <= 1.0:
        raise UserError(f"--strength {strength:g}: expected a number in (0, 1]")
    if isinstance(resample, bool) or not isinstance(resample, int) or not 1 <= resample <= MAX_RESAMPLE:
        raise UserError(f"--resample {resample!r}: expected a whole number in 1..{MAX_RESAMPLE}")


def prepare_batch(pipe, inputs: InpaintInputs, mode: str, strength: float = 1.0, resample: int = 1) -> InpaintBatch:
    """The :class:`InpaintBatch` of one input image (batch 1) for ``pipe`` in ``mode`` (auto | model | blend)."""
    mode = resolve_mode(pipe, mode)
    check_strength_resample(strength, resample)
    image = to_unit_hwc(inputs.image[None])  # (1, 3, H, W)
    mask = binarize(torch.from_numpy(inputs.mask)[None, None])  # (1, 1, H, W)
    known = encode_images(pipe.vae, image)
    concat = inpainting_concat(pipe.vae, image, mask) if pipe.is_inpainting else None
    return InpaintBatch(known, latent_mask(mask, pipe.vae_scale_factor), concat, mode == "blend", strength, resample)



# --- the conditioner of a call -------------------------------------------------------------------

@dataclass(frozen=True)
class Inpainting:
    """The inpainting conditioner of a :meth:`Pipeline.generate <latentdiff.pipeline.Pipeline.generate>` call:
    one input image and mask with the call's inpainting options (built by :func:`inpainting`). ``generate``
    stays the one driver; it asks this value to :meth:`check` the resolved options before any work, to
    :meth:`prepare` the :class:`InpaintBatch` that :meth:`Pipeline.sample_rows` adds to each batch (the
    ``concat`` route, the start and the blend hook), to :meth:`finish` each decoded image (crop, composite)
    and for the record's ``extra["inpaint"]`` (:attr:`settings`). So inpainting combines with a layout or a
    segmentation map (``spatial``) like any other condition."""

    inputs: InpaintInputs
    mode: str  # model | blend (resolved)
    strength: float = 1.0
    mask_blur: int = DEFAULT_MASK_BLUR
    resample: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the images are drawn at: the input's, padded to the VAE factor."""
        return self.inputs.image.shape[:2]

    def check(self, opts: dict) -> None:
        """One-line errors for options that do not go with inpainting (``opts``: resolved, as from
        :meth:`Pipeline.resolve`), before any work."""
        if self.resample != 1 and (self.mode != "blend" or opts["sampler"] != "ddpm"):
            raise UserError(f"--resample {self.resample}: RePaint resampling is for --mode blend with --sampler ddpm")
        check_strength_resample(self.strength, self.resample)
        start_step(self.strength, opts["steps"])
        if (opts["height"], opts["width"]) != self.size:
            raise ValueError(f"inpainting draws at the input's size {self.size}, not {opts['height'], opts['width']}")

    def prepare(self, pipe) -> InpaintBatch:
        """The input's batch (batch 1; the VAE encodes the image once per call)."""
        return prepare_batch(pipe, self.inputs, self.mode, self.strength, self.resample)

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """A decoded image (H', W', 3) uint8 → cropped to the input's size and composited onto it with the
        feathered mask: exactly the input further than ``mask_blur`` px outside the mask."""
        h, w = self.inputs.height, self.inputs.width
        return composite(pixels[:h, :w], self.inputs.image[:h, :w], self.alpha)

    @cached_property
    def alpha(self) -> np.ndarray:
        """The composite weights (h, w) of the input's mask (:func:`feather`), computed once per call."""
        return feather(self.inputs.mask[:self.inputs.height, :self.inputs.width], self.mask_blur)

    @property
    def settings(self) -> dict:
        """What a record keeps of the call's inpainting (``extra["inpaint"]``)."""
        x = self.inputs
        return {"mode": self.mode, "strength": self.strength, "mask_blur": self.mask_blur, "resample": self.resample,
                "image_sha256": x.image_sha256, "mask_sha256": x.mask_sha256, "height": x.height, "width": x.width}


def inpainting(pipe, image: Any, mask: Any = None, *, mode: str = "auto", strength: float = 1.0,
               mask_blur: int = DEFAULT_MASK_BLUR, resample: int = 1, mask_from_alpha: bool = False) -> Inpainting:
    """Read and check an image and its mask for ``pipe`` (module docstring) into the :class:`Inpainting`
    conditioner of a call."""
    inputs = load_inputs(image, mask, pipe.vae_scale_factor, mask_from_alpha=mask_from_alpha,
                         max_side=pipe.limits.max_side)
    mode = resolve_mode(pipe, mode)
    if isinstance(mask_blur, bool) or not isinstance(mask_blur, int) or not 0 <= mask_blur <= MAX_MASK_BLUR:
        raise UserError(f"--mask-blur {mask_blur!r}: expected a whole number of pixels in 0..{MAX_MASK_BLUR}")
    return Inpainting(inputs, mode, strength, mask_blur, resample)


def inpaint(pipe, prompt: str | list[str], image: Any, mask: Any = None, *, mode: str = "auto",
            strength: float = 1.0, mask_blur: int = DEFAULT_MASK_BLUR, resample: int = 1,
            mask_from_alpha: bool = False, negative_prompt: str | list[str] | None = None, num_images: int = 1,
            steps: int | None = None, guidance: float | None = None, sampler: str | None = None, seed: int = 0,
            progress: bool = False, batch_size: int | None = None, spatial=None) -> list:
    """Inpaint ``image`` where ``mask`` is white (module docstring); returns PIL images of the input's size,
    each with its provenance record in ``image.info["latentdiff"]`` (the inpainting settings and the
    input and mask hashes under ``extra["inpaint"]``). Image k of the call uses seed + k. ``spatial``: a
    layout and/or segmentation map (:class:`latentdiff.layout.Spatial`) of the padded input's size, as for
    :meth:`Pipeline.generate`, whose options the others are. The drawing is :meth:`Pipeline.generate`'s, with
    the :func:`inpainting` conditioner."""
    cond = inpainting(pipe, image, mask, mode=mode, strength=strength, mask_blur=mask_blur, resample=resample,
                      mask_from_alpha=mask_from_alpha)
    height, width = cond.size
    return pipe.generate(prompt, negative_prompt, num_images, steps, guidance, sampler, seed, height, width,
                         progress, batch_size, spatial=spatial, inpaint=cond)
