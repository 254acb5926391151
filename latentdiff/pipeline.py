"""Text-to-image generation: prompt → conditions → guided denoiser → sampler → VAE decode.

>>> from latentdiff import Pipeline
>>> pipe = Pipeline.load(None)                 # the default model; or a folder / .safetensors path / Hub id
>>> images = pipe.generate("a red circle", seed=0, num_images=4)

A :class:`Pipeline` is a loaded :class:`~latentdiff.checkpoint.Model` (networks, schedule, attached
checkpoints and LoRA files, device and speed options: loading, saving and attaching live in
:mod:`latentdiff.checkpoint`) plus generation, which is all this module does: the U-Net and a
:class:`~latentdiff.conditioning.Conditioning` become a conditional model, guidance wraps it into a denoiser
and :func:`latentdiff.diffusion.sampling.sample` runs it; image k of a call starts from noise seeded with
``seed + k``. Prompt encoding is :mod:`latentdiff.models.text`'s; a call's options, images and batches,
checked against ``pipe.limits`` before any work, :mod:`latentdiff.request`'s; records and replay
:mod:`latentdiff.provenance`'s.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latentdiff import inpaint as inpainting
from latentdiff.checkpoint import Model
from latentdiff.conditioning import Conditioning, text_conditioning, unet_model
from latentdiff.diffusion import sampling  # called as sampling.sample, so that tests can stand in for it
from latentdiff.diffusion.guidance import classifier_free_guidance
from latentdiff.layout import spatial_denoiser, text_guidance
from latentdiff.models.text import encode_prompt
from latentdiff.provenance import PNG_KEY, record, replay
from latentdiff.request import Row, batches, check_batch, plan, resolve


class Pipeline(Model):
    """A text-to-image latent diffusion model ready to sample: a :class:`~latentdiff.checkpoint.Model` (its
    attributes, :meth:`load`, :meth:`save`, :meth:`attach_layout`, :meth:`load_loras`, :meth:`optimize`, …)
    with generation."""

    def resolve(self, steps=None, guidance=None, sampler=None, height=None, width=None) -> dict[str, Any]:
        """Unset options filled from the model's defaults, and checked (:func:`latentdiff.request.resolve`)."""
        return resolve(self, steps, guidance, sampler, height, width)

    def encode_prompt(self, prompts: list[str]) -> Tensor:
        """The text encoder's last hidden state per prompt, (B, 77, D): :func:`latentdiff.models.text.encode_prompt`."""
        return encode_prompt(self.tokenizer, self.text_encoder, prompts, self.limits)

    def conditioning(self, prompts: list[str]) -> Conditioning:
        """One :class:`Conditioning` row per prompt (:func:`latentdiff.conditioning.text_conditioning`)."""
        return text_conditioning(self.tokenizer, self.text_encoder, prompts, self.limits)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(B, C, H/f, W/f): the shape of x_T for images of height × width."""
        return (batch, self.unet.config.in_channels - self.concat_channels(),
                height // self.vae_scale_factor, width // self.vae_scale_factor)

    def initial_latents(self, seeds: Sequence[int], height: int, width: int,
                        generators: list[torch.Generator] | None = None) -> Tensor:
        """x_T for each seed: (B, C, H/f, W/f) float32 on ``self.device``, drawn on the CPU by one generator
        per image (``generators``, or fresh ones seeded with ``seeds``)."""
        gens = generators or sampling.seeded_generators(seeds)
        return sampling.randn(self.latent_shape(len(seeds), height, width), gens, device=self.device)

    @torch.inference_mode()
    def sample_rows(self, rows: Sequence[Row], *, steps: int, guidance: float, sampler: str, height: int,
                    width: int, progress: bool = False, latents: Tensor | None = None,
                    device: torch.device | None = None, dtype: torch.dtype | None = None,
                    inpaint=None, guide=None, spatial=None) -> Tensor:
        """Draw one batch: conditions → guided denoiser → sampler. Returns latents x_0 (B, C, h, w) fp32.
        ``latents`` replaces the seeded x_T; ``device``/``dtype`` (the U-Net's) are looked up when not given.
        ``inpaint`` (a :class:`latentdiff.inpaint.InpaintBatch`, one row per row) adds the inpainting
        conditions (the ``concat`` route of both guidance branches), start and step hook; an inpainting U-Net
        without it repaints the whole image (text-to-image).
        ``guide`` (for example a :class:`~latentdiff.models.classifier.ClassifierGuide`) wraps the denoiser
        once more: ``guide.wrap(denoiser, schedule)``. ``spatial`` (a :class:`latentdiff.layout.Spatial`)
        adds layout and segmentation routes, guided with the nested multi-condition formula."""
        check_batch(self, len(rows), steps, height, width)  # before any tensor is allocated
        device, dtype = device or self.device, dtype or self.dtype
        gens = sampling.seeded_generators([r.seed for r in rows])  # the same generators draw x_T and any later noise
        x_T = sampling.randn(self.latent_shape(len(rows), height, width), gens, device=device)
        if latents is not None:
            x_T = latents.to(device=device, dtype=torch.float32)
        cond = self.conditioning([r.prompt for r in rows])
        uncond = self.conditioning([r.negative_prompt for r in rows]) if guidance != 1.0 else None
        if self.concat_channels():  # an inpainting U-Net: its mask and masked latents, or the whole image's
            cond, uncond = inpainting.with_concat(self, cond, uncond, inpaint, height, width)
        extra = {}
        if inpaint is not None:
            x_T, extra = inpaint.sampling(x_T, self.schedule, sampler, steps, self.sampler_overrides(sampler))
        unet = self.unet if self._unet_call is None else self._unet_call
        model = unet_model(unet, self.schedule, dtype=dtype, controlnet=self.controlnet,
                           layout_controlnet=self.layout_controlnet)
        if spatial is not None and (spatial.layout is not None or spatial.segmap is not None):
            denoiser = spatial_denoiser(self, model, spatial, cond, uncond, guidance, (height, width))
        else:
            denoiser = classifier_free_guidance(model, cond, uncond, guidance)
        if guide is not None:
            guide.check(self.schedule, x_T.shape[1])
            denoiser = guide.wrap(denoiser, self.schedule)
        return sampling.sample(denoiser, self.schedule, x_T, sampler=sampler, steps=steps, generator=gens,
                               progress=progress, scheduler_config=self.sampler_overrides(sampler), **extra)

    @torch.inference_mode()
    def decode_latents(self, latents: Tensor) -> np.ndarray:
        """VAE-decode latents (B, C, h, w) to uint8 images (B, H, W, 3): x = D(z / scaling_factor), then
        [−1, 1] → [0, 255] rounded, exactly as diffusers' image processor."""
        x = self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor, return_dict=False)[0]
        x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) in [0, 1]
        return (x * 255).round().astype(np.uint8)

    def generate_latents(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                         num_images: int = 1, steps: int | None = None, guidance: float | None = None,
                         sampler: str | None = None, seed: int = 0, height: int | None = None,
                         width: int | None = None, progress: bool = False,
                         batch_size: int | None = None, guide=None) -> Tensor:
        """Latents x_0 of every image of the call (N, C, h, w), drawn in batches of ``batch_size``."""
        opts = self.resolve(steps, guidance, sampler, height, width)
        rows = plan(self.limits, prompt, negative_prompt, num_images, seed)
        return torch.cat([self.sample_rows(batch, progress=progress, guide=guide, **opts)
                          for batch in batches(self, rows, opts, batch_size)])

    def generate(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_images: int = 1, steps: int | None = None, guidance: float | None = None,
                 sampler: str | None = None, seed: int = 0, height: int | None = None, width: int | None = None,
                 progress: bool = False, batch_size: int | None = None, guide=None, spatial=None,
                 inpaint=None) -> list:
        """Generate images (PIL). Unset options come from the model's defaults (``self.defaults``: dpm++,
        25 steps, guidance 4.0 unless the model's latentdiff.json says otherwise) and its native size.

        Image k of the call uses seed + k; each image's provenance record (a JSON string, see
        :mod:`latentdiff.provenance`) is in ``image.info["latentdiff"]``. ``guide``: classifier guidance
        (:class:`~latentdiff.models.classifier.ClassifierGuide`), described in the record's ``extra``.
        ``spatial``: layout and/or segmentation map (:class:`latentdiff.layout.Spatial`), needing
        :meth:`attach_layout` / :meth:`attach_segmap`. ``inpaint``: the inpainting conditioner
        (:class:`latentdiff.inpaint.Inpainting`; :meth:`inpaint` builds it), which sets the size, adds its
        conditions to every batch and composites each image onto the input.
        """
        opts = self.resolve(steps, text_guidance(self, guidance, spatial), sampler, height, width)
        if inpaint is not None:
            inpaint.check(opts)
        rows = plan(self.limits, prompt, negative_prompt, num_images, seed)
        where = dict(device=self.device, dtype=self.dtype)  # diffusers' .dtype walks every module: ask once
        work = batches(self, rows, opts, batch_size)  # the batch size is checked before any work
        one = None if inpaint is None else inpaint.prepare(self)  # the input's conditions, computed once
        images = []
        for batch in work:
            pixels = self.decode_latents(self.sample_rows(
                batch, progress=progress, guide=guide, spatial=spatial,
                inpaint=None if one is None else one.repeat(len(batch)), **opts, **where))
            for i, px in enumerate(pixels):
                img = Image.fromarray(px if inpaint is None else inpaint.finish(px))
                rec = record(self, batch, i, **opts, **where, guide=guide, spatial=spatial)
                if inpaint is not None:
                    rec = replace(rec, extra={**rec.extra, "inpaint": inpaint.settings})
                img.info[PNG_KEY] = rec.to_json()
                images.append(img)
        return images

    def inpaint(self, prompt: str | list[str], image, mask=None, **kwargs) -> list:
        """Repaint ``image`` where ``mask`` is white: see :func:`latentdiff.inpaint.inpaint` (modes model |
        blend | auto, strength, mask_blur, resample, mask_from_alpha, a layout or map as ``spatial``, and the
        options of :meth:`generate`)."""
        return inpainting.inpaint(self, prompt, image, mask, **kwargs)

    def replay(self, rec, guide=None, segmap=None) -> Any:
        """Regenerate the image a provenance record describes (:func:`latentdiff.provenance.replay`)."""
        return replay(self, rec, guide, segmap)
