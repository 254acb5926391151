"""The variational bound on −log p(x_0) in bits per dimension ([DDPM] eq. 5):

    L = L_T + Σ_{t>1} L_{t−1} + L_0
    L_T     = KL(q(x_T | x_0) ‖ N(0, I))
    L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),   p_θ = N(μ_θ(x_t, t), σ_t² I)
    L_0     = −log p_θ(x_0 | x_1)

μ_θ is the ε-form posterior mean ([DDPM] eq. 11) of the denoiser's ε̂; σ_t² is β_t or β̃_t. The decoder
L_0 is a Gaussian density N(x_0; μ_θ(x_1, 1), β_1) for continuous data (latents), or the discretized
Gaussian of [DDPM] eq. 13 for 8-bit data scaled to [−1, 1]. (β̃_1 = 0, so the decoder uses β_1.)

:func:`bits_per_dim` sums all T terms, or — with ``num_t`` — uses the unbiased estimate
Σ_{t=1}^{T} L_{t−1} ≈ (T / K) Σ_{k=1}^{K} L_{t_k − 1} with t_k drawn uniformly from {1, …, T}.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from latentdiff.diffusion.sampling import Denoiser
from latentdiff.diffusion.schedule import (
    Schedule,
    _at,
    posterior_mean_from_eps,
    posterior_mean_from_x0,
    q_mean_variance,
    q_sample,
)


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(m1, v1) ‖ N(m2, v2)) elementwise, in nats: ½(log v2/v1 + (v1 + (m1 − m2)²)/v2 − 1)."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def gaussian_nll(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """−log N(x; mean, var) elementwise, in nats (a continuous density)."""
    return 0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, var: Tensor, bins: int = 256) -> Tensor:
    """−log of the discretized Gaussian decoder of [DDPM] eq. 13, elementwise in nats.

    x: data in [−1, 1] on a grid of ``bins`` levels; each level gets the Gaussian mass of its bin
    [x − 1/(bins−1), x + 1/(bins−1)], with the outermost bins extended to ±∞.
    """
    half = 1.0 / (bins - 1)
    std = var.sqrt()
    upper = torch.where(x > 1 - 1e-3, torch.ones_like(x), _std_normal_cdf((x - mean + half) / std))
    lower = torch.where(x < -1 + 1e-3, torch.zeros_like(x), _std_normal_cdf((x - mean - half) / std))
    return -torch.log((upper - lower).clamp(min=1e-12))


def prior_term(schedule: Schedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) summed over dimensions, nats, shape (B,)."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=torch.long)
    mean, var = q_mean_variance(schedule, x0, t)
    kl = normal_kl(mean, var.expand_as(mean), torch.zeros_like(mean), torch.ones_like(mean))
    return kl.flatten(1).sum(1)


@torch.no_grad()
def vlb_term(denoiser: Denoiser, schedule: Schedule, x0: Tensor, t: Tensor, *, variance: str = "beta_tilde",
             decoder: str = "gaussian", generator: torch.Generator | None = None) -> Tensor:
    """One term of the bound at 0-based timesteps t (B,): L_{t−1} for t ≥ 1, L_0 for t = 0. Nats, (B,).

    x_t is drawn from q(x_t | x_0) with fresh noise; x0: (B, C, H, W).
    """
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(schedule, x0, t, noise)
    eps = denoiser(x_t, t)
    mean_p = posterior_mean_from_eps(schedule, x_t, t, eps)
    var_table = schedule.betas if variance == "beta" else schedule.posterior_variance
    var_p = _at(var_table, t, x0).expand_as(x0)
    is_first = (t == 0).reshape(-1, *([1] * (x0.ndim - 1)))
    # KL for t >= 1; β̃ at t = 0 is 0, so use a placeholder there (masked out below).
    safe_var_p = torch.where(is_first, torch.ones_like(var_p), var_p)
    mean_q = posterior_mean_from_x0(schedule, x_t, t, x0)
    var_q = torch.where(is_first, torch.ones_like(var_p), _at(schedule.posterior_variance, t, x0).expand_as(x0))
    kl = normal_kl(mean_q, var_q, mean_p, safe_var_p)
    dec_var = _at(schedule.betas, t, x0).expand_as(x0)  # σ_1² = β_1 for the decoder
    if decoder == "discretized":
        nll = discretized_gaussian_nll(x0, mean_p, dec_var)
    else:
        nll = gaussian_nll(x0, mean_p, dec_var)
    return torch.where(is_first, nll, kl).flatten(1).sum(1)


@torch.no_grad()
def bits_per_dim(denoiser: Denoiser, schedule: Schedule, x0: Tensor, *, num_t: int | None = None,
                 variance: str = "beta_tilde", decoder: str = "gaussian",
                 generator: torch.Generator | None = None) -> Tensor:
    """The bound L of [DDPM] eq. 5 per sample, in bits per dimension: (B,).

    ``num_t=None`` sums every term t = 1 … T; an integer K uses the unbiased K-sample estimate of the
    sum over t (module docstring). L_T is always exact.
    """
    b, dims = x0.shape[0], x0[0].numel()
    T = schedule.num_timesteps
    total = prior_term(schedule, x0)
    if num_t is None:
        for i in range(T):
            total = total + vlb_term(denoiser, schedule, x0, torch.full((b,), i, dtype=torch.long, device=x0.device),
                                     variance=variance, decoder=decoder, generator=generator)
    else:
        acc = torch.zeros(b, device=x0.device)
        for _ in range(num_t):
            t = torch.randint(0, T, (b,), generator=generator).to(x0.device)
            acc = acc + vlb_term(denoiser, schedule, x0, t, variance=variance, decoder=decoder, generator=generator)
        total = total + acc * (T / num_t)
    return total / (dims * math.log(2.0))
