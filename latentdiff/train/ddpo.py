"""Policy-gradient objectives for the denoising MDP (:mod:`latentdiff.diffusion.policy`), as losses whose
gradient is the estimator.

With trajectories τ_i drawn from π_old, actions a_{i,t} = x_{t−1} at states s_{i,t} = (x_t, t, c_i) and
advantages A_i (:func:`per_prompt_advantages`), Black et al. 2023 ("Training Diffusion Models with
Reinforcement Learning", §4, DDPO) give two estimators of ∇J(θ), J = E[r(x_0, c)]:

    DDPO_SF  ∇J ≈ 1/N Σ_i Σ_t ∇_θ log π_θ(a_{i,t} | s_{i,t}) · A_i                   (REINFORCE; π_θ = π_old)
    DDPO_IS  ∇J ≈ 1/N Σ_i Σ_t π_θ(a|s)/π_old(a|s) · ∇_θ log π_θ(a_{i,t} | s_{i,t}) · A_i

and DDPO_IS is used with PPO's clipped surrogate (Schulman et al. 2017, eq. 7), which keeps the update in
a trust region where the importance weights are accurate. DPOK (Fan et al. 2023, "DPOK: Reinforcement
Learning for Fine-tuning Text-to-Image Diffusion Models", §4) adds β · KL(p_θ ‖ p_pre) to the objective,
bounded above by the sum of the per-step KLs along the chain, which is what :func:`kl_penalty` averages.

All losses average over trajectories and steps (DDPO accumulates its gradient over the timesteps of a
batch the same way), so the learning rate does not depend on the number of steps.
"""
from __future__ import annotations

import torch
from torch import Tensor

ADVANTAGE_CLIP = 5.0  # DDPO's adv_clip_max: normalised advantages are clipped to ±5
IS_CLIP = 1e-4  # DDPO's clip_range for the importance ratio of one step (a high-dimensional Gaussian)


def per_prompt_advantages(rewards: Tensor, groups: Tensor, clip: float = ADVANTAGE_CLIP) -> Tensor:
    """A_i = (r_i − mean_g) / (std_g + 1e−6) over the rewards of the same prompt g = ``groups[i]`` (DDPO's
    per-prompt stat tracking: each prompt is its own baseline), clipped to ±``clip``. A prompt drawn once
    is normalised with the statistics of the whole batch instead. rewards, groups: (N,) → (N,) float32."""
    r = rewards.double()
    out = torch.empty_like(r)
    for g in groups.unique():
        mask = groups == g
        ref = r[mask] if int(mask.sum()) > 1 else r
        out[mask] = (r[mask] - ref.mean()) / (ref.std(unbiased=False) + 1e-6)
    return out.clamp(-clip, clip).float()


def sf_loss(log_prob: Tensor, advantages: Tensor) -> Tensor:
    """DDPO_SF (module docstring): −mean_{i,t} A_i · log π_θ(a_{i,t} | s_{i,t}). log_prob (B, T), advantages (B,)."""
    return -(advantages[:, None] * log_prob).mean()


def is_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip: float = IS_CLIP) -> Tensor:
    """DDPO_IS with PPO's clipped surrogate: mean_{i,t} max(−A_i ρ_{i,t}, −A_i clip(ρ_{i,t}, 1 − ε, 1 + ε)),
    ρ = π_θ(a|s) / π_old(a|s) = exp(log π_θ − log π_old). At ρ = 1 its gradient is DDPO_SF's.
    log_prob, old_log_prob (B, T); advantages (B,)."""
    ratio = torch.exp(log_prob - old_log_prob)
    a = advantages[:, None]
    return torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()


def clip_fraction(log_prob: Tensor, old_log_prob: Tensor, clip: float = IS_CLIP) -> float:
    """Share of steps whose importance ratio lies outside [1 − ε, 1 + ε] (a health figure of DDPO_IS)."""
    return float(((log_prob - old_log_prob).exp().sub(1.0).abs() > clip).float().mean())


def kl_penalty(kl: Tensor) -> Tensor:
    """DPOK's regulariser: the mean over trajectories and steps of KL(p_θ(x_{t−1}|x_t) ‖ p_pre(x_{t−1}|x_t)),
    kl (B, T) from :func:`latentdiff.diffusion.policy.gaussian_kl`."""
    return kl.mean()
