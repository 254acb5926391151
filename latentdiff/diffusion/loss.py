"""The training objective of DDPM ([DDPM] Algorithm 1), with optional v-prediction and min-SNR weights."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from latentdiff.diffusion.schedule import Schedule, q_sample, v_target

# model(x_t, t) -> prediction of type schedule.prediction; extra conditioning is closed over by the caller.
ModelFn = Callable[[Tensor, Tensor], Tensor]


def sample_timesteps(batch: int, num_timesteps: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
    """t ~ Uniform({1, …, T}) ([DDPM] Algorithm 1, line 3), returned 0-based: (B,) int64."""
    return torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)


def min_snr_weight(schedule: Schedule, t: Tensor, gamma: float, prediction: str, floor: float = 0.0) -> Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, eq. 8 and App.): the weight on the x_0 error is
    min(SNR, γ) (+ ``floor``), so for ε-prediction the weight on the ε error is (min(SNR, γ) + floor)/SNR,
    for v-prediction (min(SNR, γ) + floor)/(SNR + 1), for x_0-prediction min(SNR, γ) + floor. Shape (B,).

    Why a floor: ‖x̂_0 − x_0‖² = ‖ε̂ − ε‖²/SNR = ‖v̂ − v‖²/(SNR + 1), so plain min-SNR gives the high-noise
    steps (SNR → 0), where only the prompt can say where an object goes, almost no weight on x_0; a floor
    of 1 keeps it near 1 there (BENCHMARKS.md, "Position")."""
    snr = schedule.snr(t)
    x0_weight = snr.clamp(max=gamma) + floor
    if prediction == "epsilon":
        return x0_weight / snr
    if prediction == "v_prediction":
        return x0_weight / (snr + 1.0)
    return x0_weight


def diffusion_loss(model: ModelFn, schedule: Schedule, x0: Tensor, *, t: Tensor | None = None,
                   noise: Tensor | None = None, min_snr_gamma: float | None = None, x0_weight_floor: float = 0.0,
                   generator: torch.Generator | None = None, reduce: bool = True) -> Tensor:
    """The simplified objective L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²
    ([DDPM] eq. 14, Algorithm 1), a mean over all elements.

    With ``schedule.prediction == "v_prediction"`` the target is v = √ᾱ_t ε − √(1 − ᾱ_t) x_0; with
    ``"sample"`` it is x_0. ``min_snr_gamma`` re-weights each sample's loss by :func:`min_snr_weight`
    (with ``x0_weight_floor`` as its floor).
    x0: (B, C, H, W) in the model's data space (latents); returns a scalar float32 tensor, or with
    ``reduce=False`` each sample's weighted loss, (B,) (what a preference loss compares between images).
    """
    b = x0.shape[0]
    if t is None:
        t = sample_timesteps(b, schedule.num_timesteps, generator, x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)  # (B, C, H, W)
    if schedule.prediction == "epsilon":
        target = noise
    elif schedule.prediction == "v_prediction":
        target = v_target(schedule, x0, t, noise)
    else:
        target = x0
    pred = model(x_t, t)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(schedule, t, min_snr_gamma, schedule.prediction,
                                                   x0_weight_floor).to(per_sample)
    return per_sample.mean() if reduce else per_sample
