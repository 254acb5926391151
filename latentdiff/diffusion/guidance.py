"""Guidance as wrappers that turn a conditional model into a denoiser ``(x_t, t) -> ε̂``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from latentdiff.diffusion.sampling import Denoiser

# model(x_t (B,C,H,W), t (B,), cond) -> ε̂ (B,C,H,W); cond is a tensor, a dict of tensors, or an object
# whose class has ``cat(list_of_conds)`` (for example latentdiff's Conditioning), batched along dim 0.
CondModel = Callable[[Tensor, Tensor, Any], Tensor]


def cat_conditions(conds: list[Any]) -> Any:
    """Concatenate conditions along the batch dimension, whatever their container."""
    first = conds[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(conds, dim=0)
    if isinstance(first, dict):
        return {k: cat_conditions([c[k] for c in conds]) for k in first}
    if hasattr(type(first), "cat"):
        return type(first).cat(conds)
    raise TypeError(f"cannot batch conditions of type {type(first).__name__}")


def classifier_free_guidance(model: CondModel, cond: Any, uncond: Any, scale: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022):

        ε̂(x_t, c) = ε(x_t, ∅) + w · (ε(x_t, c) − ε(x_t, ∅)).

    This is the paper's eq. 6, ε̃ = (1 + ω) ε(x_t, c) − ω ε(x_t), written with w = 1 + ω:
    (1 + ω) ε_c − ω ε_∅ = ε_∅ + (1 + ω)(ε_c − ε_∅). So w = 1 is no guidance (the conditional model)
    and w = 0 is the unconditional model. Every channel of ε̂ is guided.

    The conditional and unconditional passes run as one batched forward of size 2B (``uncond`` and
    ``cond`` are each batched like x_t; they are concatenated once, not at every step). At w = 1 only the
    conditional pass is run.
    """
    scale = float(scale)
    both_conds = cat_conditions([uncond, cond]) if scale != 1.0 else None

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        if scale == 1.0:
            return model(x_t, t, cond)
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both_conds)  # (2B, C, H, W)
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    return denoise


# log_prob(x_t (B,C,H,W), t (B,)) -> log p_φ(y | x_t, t) (B,), differentiable in x_t.
LogProb = Callable[[Tensor, Tensor], Tensor]


def classifier_gradient(log_prob: LogProb, x_t: Tensor, t: Tensor) -> Tensor:
    """∇_{x_t} log p_φ(y | x_t, t), (B, C, H, W).

    Samplers run under ``torch.inference_mode``/``no_grad``; the gradient is taken on a detached copy of
    x_t with inference mode switched off and autograd on, so the wrapper works inside any sampler. The
    batch sum is differentiated: each row's log-probability depends only on its own x_t.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(x, t.detach().clone()).sum(), x)
    return grad


def classifier_guidance(denoiser: Denoiser, log_prob: LogProb, schedule, scale: float) -> Denoiser:
    """Classifier guidance in its ε form (Dhariwal & Nichol 2021, eq. 14 and Algorithm 2):

        ε̄(x_t, t) = ε_θ(x_t, t) − s √(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t, t).

    Since ε_θ ≈ −√(1 − ᾱ_t) ∇ log p(x_t), this is the ε of the tilted score ∇ log p(x_t) + s ∇ log p(y | x_t),
    i.e. of p(x_t) p(y | x_t)^s: s = 1 samples p(x | y), s > 1 sharpens it. ``t`` are the integer
    timesteps every sampler passes, so ᾱ_t is read from ``schedule`` at t. s = 0 returns ε_θ unchanged
    (no classifier call). Works on top of any denoiser, including a classifier-free-guided one.
    """
    scale = float(scale)
    alphas_bar = schedule.alphas_bar

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        eps = denoiser(x_t, t)  # (B, C, H, W)
        if scale == 0.0:
            return eps
        sigma = (1.0 - alphas_bar.to(x_t.device)[t.long()]).sqrt().reshape(-1, *([1] * (x_t.ndim - 1)))  # (B,1,1,1)
        grad = classifier_gradient(log_prob, x_t, t)
        return eps - scale * sigma.to(eps.dtype) * grad.to(eps.dtype)

    return denoise


@dataclass(frozen=True)
class Regional:
    """A condition that differs across the image: ``parts`` are conditions (each batched like x_t) and
    ``weights`` (P, 1 or B, 1, h, w) their per-latent-pixel weights, summing to 1 at every pixel. Its ε is
    the weighted sum of the parts' ε, Σ_p weights_p · ε(x_t, part_p) (regional prompting: for example a
    phrase's text inside its box and the whole prompt elsewhere). A :func:`nested_guidance` chain may hold it
    in place of a plain condition."""

    parts: list[Any]
    weights: Tensor

    def __post_init__(self):
        if len(self.parts) != self.weights.shape[0]:
            raise ValueError(f"Regional: {len(self.parts)} parts and {self.weights.shape[0]} weight maps")


def nested_guidance(model: CondModel, chain: list[Any], scales: list[float]) -> Denoiser:
    """Multi-condition classifier-free guidance in the nested form of InstructPix2Pix (Brooks et al. 2023,
    eq. 3), for conditions c_1, …, c_k added one at a time:

        C_0 = ∅,  C_i = C_{i−1} + c_i,   Δ_i = ε(x_t, C_i) − ε(x_t, C_{i−1}),
        ε̂ = ε(x_t, C_0) + Σ_i s_i Δ_i  =  ε(x_t, C_k) + Σ_i (s_i − 1) Δ_i.

    ``chain`` holds the k + 1 conditions C_0 … C_k (each batched like x_t, every one carrying the same
    routes, with absent conditions at their null values) and ``scales`` the k scales s_i. The second form
    shows what a scale means: s_i = 1 removes c_i's guidance term and leaves the others unchanged (c_i is
    then an ordinary condition, present in every branch after it); with k = 1 this is
    :func:`classifier_free_guidance` with w = s_1. A C_j may be :class:`Regional`, whose ε is its parts' ε
    mixed by their weight maps. Only the branches a non-unit scale needs are run, as one batched forward.
    """
    if len(chain) != len(scales) + 1:
        raise ValueError(f"nested_guidance: {len(chain)} conditions need {len(chain) - 1} scales, got {len(scales)}")
    scales = [float(s) for s in scales]
    k = len(scales)
    needed = sorted({k} | {j for i, s in enumerate(scales, 1) if s != 1.0 for j in (i - 1, i)})
    parts, spans = [], {}  # spans: C_j -> (first part, its Regional weights or None)
    for j in needed:
        regional = isinstance(chain[j], Regional)
        spans[j] = (len(parts), chain[j].weights if regional else None)
        parts += chain[j].parts if regional else [chain[j]]
    conds = cat_conditions(parts)  # once, not at every step

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        n = len(parts)
        out = model(torch.cat([x_t] * n), torch.cat([t] * n), conds).chunk(n)  # n × (B, C, H, W)
        eps = {}
        for j, (first, weights) in spans.items():
            if weights is None:
                eps[j] = out[first]
            else:
                w = weights.to(out[first])
                eps[j] = sum(w[p] * out[first + p] for p in range(w.shape[0]))
        result = eps[k]
        for i, s in enumerate(scales, 1):
            if s != 1.0:
                result = result + (s - 1.0) * (eps[i] - eps[i - 1])
        return result

    return denoise
