"""Guidance as wrappers that turn a conditional model into a denoiser ``(x_t, t) -> ε̂``."""
from __future__ import annotations

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
    ``cond`` are each batched like x_t). At w = 1 only the conditional pass is run.
    """
    scale = float(scale)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        if scale == 1.0:
            return model(x_t, t, cond)
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), cat_conditions([uncond, cond]))  # (2B, C, H, W)
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    return denoise
