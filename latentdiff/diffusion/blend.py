"""Training-free inpainting with any ε-model: keep the known region on the forward process.

Blended latent diffusion (Avrahami, Fried & Lischinski 2023, "Blended Latent Diffusion", Algorithm 1;
the same replacement is RePaint's eq. 8–9, Lugmayr et al. 2022): after every sampler step, the region
that is known is overwritten with the known latents noised to the step's timestep,

    x_t ← m ⊙ x_t + (1 − m) ⊙ (√ᾱ_t x_0^known + √(1 − ᾱ_t) ε),   m = 1 where the image is repainted,

and at the end (x_0) with x_0^known itself. It is a sampler hook (``on_step`` of
:func:`latentdiff.diffusion.sampling.sample`), so it runs with every sampler and any denoiser (guided or
not); RePaint's resampling (``resample`` of the ddpm sampler) harmonises the two regions further.
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentdiff.diffusion.sampling import StepHook
from latentdiff.diffusion.schedule import Schedule, q_sample


def known_region_hook(schedule: Schedule, x0_known: Tensor, mask: Tensor, noise: Tensor) -> StepHook:
    """The step hook of the module docstring.

    x0_known: (B, C, h, w) latents of the known image; mask: (B, 1, h, w) (or broadcastable) in [0, 1],
    1 = generate, 0 = keep; noise: (B, C, h, w), the fixed ε that noises the known latents at every step
    (the sampler's own x_T is a good choice: at t = T the known region then starts where x_T is).
    """

    def blend(x_t: Tensor, t: int | None) -> Tensor:
        if t is None:
            known = x0_known
        else:
            t_b = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
            known = q_sample(schedule, x0_known, t_b, noise)  # (B, C, h, w)
        m = mask.to(x_t)
        return m * x_t + (1.0 - m) * known.to(x_t)

    return blend

