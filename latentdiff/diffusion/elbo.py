"""The variational bound on −log p(x_0) in bits per dimension ([DDPM] eq. 5):

    L = L_T + Σ_{t>1} L_{t−1} + L_0
    L_T     = KL(q(x_T | x_0) ‖ N(0, I))
    L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),   p_θ = N(μ_θ(x_t, t), σ_t² I)
    L_0     = −log p_θ(x_0 | x_1)

μ_θ is the ε-form posterior mean ([DDPM] eq. 11) of the denoiser's ε̂; σ_t² is β_t or β̃_t. The decoder
L_0 is a Gaussian density N(x_0; μ_θ(x_1, 1), β_1) for continuous data (latents), or the discretized
Gaussian of [DDPM] eq. 13 for 8-bit data scaled to [−1, 1]. (β̃_1 = 0, so the decoder uses β_1.)

:func:`bits_per_dim` sums all T terms, or — with ``num_t`` = K — computes L_T and L_0 exactly and
estimates the middle sum Σ_{t=2}^{T} L_{t−1} without bias by stratified sampling: {2, …, T} is cut into
(at most) K consecutive strata S_k with geometrically spaced edges (1, 2, 4, … T for K = 10: short strata
where the terms are large, at small t) and Σ ≈ Σ_k |S_k| L_{t_k − 1} with t_k drawn uniformly from S_k.
The plain estimate (T / K) Σ_k L_{t_k − 1} with t_k uniform on {1, …, T} is unbiased too but heavy-tailed:
the few large small-t terms (and L_0, a density on continuous latents) are drawn rarely and weighted T/K.
On the analytic Gaussian of the tests the standard deviation drops 15–30× at K = 10.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from latentdiff.diffusion.sampling import Denoiser
from latentdiff.diffusion.schedule import (
    Schedule,
    gather_at,
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
    var_p = gather_at(var_table, t, x0).expand_as(x0)
    is_first = (t == 0).reshape(-1, *([1] * (x0.ndim - 1)))
    # KL for t >= 1; β̃ at t = 0 is 0, so use a placeholder there (masked out below).
    safe_var_p = torch.where(is_first, torch.ones_like(var_p), var_p)
    mean_q = posterior_mean_from_x0(schedule, x_t, t, x0)
    var_q = torch.where(is_first, torch.ones_like(var_p), gather_at(schedule.posterior_variance, t, x0).expand_as(x0))
    kl = normal_kl(mean_q, var_q, mean_p, safe_var_p)
    dec_var = gather_at(schedule.betas, t, x0).expand_as(x0)  # σ_1² = β_1 for the decoder
    if decoder == "discretized":
        nll = discretized_gaussian_nll(x0, mean_p, dec_var)
    else:
        nll = gaussian_nll(x0, mean_p, dec_var)
    return torch.where(is_first, nll, kl).flatten(1).sum(1)


def stratum_edges(num_t: int, T: int) -> list[int]:
    """Edges 1 = e_0 < e_1 < … = T of the (at most ``num_t``) geometric strata [e_k, e_{k+1}) of the
    term indices 1 … T−1; the estimate costs ``len(edges)`` network evaluations (the strata and L_0)."""
    return sorted(set(torch.logspace(0, math.log10(T), num_t + 1, dtype=torch.float64).round().long().tolist()))


@torch.no_grad()
def bits_per_dim(denoiser: Denoiser, schedule: Schedule, x0: Tensor, *, num_t: int | None = None,
                 variance: str = "beta_tilde", decoder: str = "gaussian",
                 generator: torch.Generator | None = None) -> Tensor:
    """The bound L of [DDPM] eq. 5 per sample, in bits per dimension: (B,).

    ``num_t=None`` sums every term t = 1 … T; an integer K computes L_T and L_0 exactly and estimates the
    rest without bias from at most K stratified timesteps (module docstring): ≤ K + 1 network evaluations
    per sample.
    """
    b, dims = x0.shape[0], x0[0].numel()
    T = schedule.num_timesteps
    total = prior_term(schedule, x0)
    if num_t is None:
        for i in range(T):
            total = total + vlb_term(denoiser, schedule, x0, torch.full((b,), i, dtype=torch.long, device=x0.device),
                                     variance=variance, decoder=decoder, generator=generator)
    else:  # L_0 exactly; indices 1 … T−1 (the terms L_1 … L_{T−1}) in geometric strata, one draw each
        if num_t < 1:
            raise ValueError(f"num_t {num_t}: expected at least 1 (or None for every term)")
        first = torch.zeros(b, dtype=torch.long, device=x0.device)
        total = total + vlb_term(denoiser, schedule, x0, first, variance=variance, decoder=decoder, generator=generator)
        edges = stratum_edges(num_t, T)
        for lo, hi in zip(edges[:-1], edges[1:]):
            t = torch.randint(lo, hi, (b,), generator=generator).to(x0.device)
            term = vlb_term(denoiser, schedule, x0, t, variance=variance, decoder=decoder, generator=generator)
            total = total + term * (hi - lo)
    return total / (dims * math.log(2.0))
