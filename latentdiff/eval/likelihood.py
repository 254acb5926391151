"""The variational bound of a text-to-image pipeline on latents, in bits per latent dimension.

For latents x_0 (N, C, h, w) and their captions c, the bound on −log p_θ(x_0 | c) of [DDPM] eq. 5 with
the pipeline's U-Net as ε_θ(x_t, t, c) (no guidance: w = 1), computed by
:func:`latentdiff.diffusion.elbo.bits_per_dim`. The decoder term L_0 is a continuous Gaussian density
on latents, so the number is a bound on a *density* of latents — comparable between models that share a
VAE (the same latent space), not with pixel-space bits/dim of other papers.
"""
from __future__ import annotations

from typing import Callable

import torch

from latentdiff.diffusion.elbo import bits_per_dim
from latentdiff.diffusion.guidance import classifier_free_guidance


@torch.inference_mode()
def bound_bits_per_dim(pipe, x0: torch.Tensor, texts: list[str], *, num_t: int | None = 20, seed: int = 0,
                       batch: int = 16, on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """The bound per latent, (N,) bits/dim. ``num_t``: K strata of the unbiased estimate (None: all T
    terms). Batch b draws its t and noise from a generator seeded with ``seed + b``, so two calls with the
    same seed (for example with and without captions) use the same t and noise."""
    from latentdiff.conditioning import unet_model

    model = unet_model(pipe.unet, pipe.schedule, dtype=pipe.dtype)
    out = []
    for b, start in enumerate(range(0, x0.shape[0], batch)):
        x = x0[start:start + batch].to(pipe.device, torch.float32)  # (B, C, h, w)
        denoiser = classifier_free_guidance(model, pipe.conditioning(texts[start:start + batch]), None, 1.0)
        gen = torch.Generator().manual_seed(seed + b)
        out.append(bits_per_dim(denoiser, pipe.schedule, x, num_t=num_t, generator=gen).cpu())
        if on_batch is not None:
            on_batch(x.shape[0])
    return torch.cat(out)
