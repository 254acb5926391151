"""The denoising chain as a Markov decision process, with exact per-step log-probabilities.

DDPO (Black et al. 2023, "Training Diffusion Models with Reinforcement Learning", §4, "denoising as a
multi-step MDP") reads sampling as an MDP over K steps τ_{K−1} > … > τ_0 of a respaced schedule:

    state   s_k = (x_{τ_k}, τ_k, c)
    action  a_k = x_{τ_{k−1}} ~ π_θ(· | s_k) = p_θ(x_{τ_{k−1}} | x_{τ_k}, c) = N(μ_θ(x_{τ_k}, τ_k, c), σ_k² I)
    reward  r(x_0, c), at the end only.

Every step is an isotropic Gaussian, so log π_θ(a_k | s_k) is exact (:func:`gaussian_log_prob`). Two
stochastic steps over a denoiser ``(x_t, t) -> ε̂`` (guided or not: :mod:`latentdiff.diffusion.guidance`):

* ``"ddpm"``: [DDPM] Algorithm 2 on the respaced schedule, μ = (1/√α_k)(x_k − β_k/√(1 − ᾱ_k) · ε̂) ([DDPM]
  eq. 11) and σ_k² = β̃_k ([DDPM] eq. 7), as :func:`latentdiff.diffusion.sampling.ddpm_sample` steps.
* ``"ddim"``: DDIM (Song et al. 2021, eq. 12) x_{k−1} = √ᾱ_{k−1} x̂_0 + √(1 − ᾱ_{k−1} − σ_k²) · ε̂ + σ_k z with
  σ_k = η √((1 − ᾱ_{k−1})/(1 − ᾱ_k)) √(1 − ᾱ_k/ᾱ_{k−1}) (eq. 16). At η = 1 this is the "ddpm" step (σ² = β̃
  and the same mean), the sampler DDPO trains with; η → 0 is deterministic DDIM, which has no density.

The last step, to x_0, has ᾱ_{−1} = 1 and so σ = 0: it is deterministic, a part of the environment and not
an action. A chain of K steps therefore has K − 1 actions, k = K − 1, …, 1.

Noise is drawn as in :mod:`latentdiff.diffusion.sampling` (:func:`~latentdiff.diffusion.sampling.randn`:
on the CPU, one generator per image), so a trajectory depends only on its seed and the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentdiff.diffusion.elbo import gaussian_nll, normal_kl
from latentdiff.diffusion.sampling import Denoiser, Generators, randn, respaced_schedule, spaced_timesteps
from latentdiff.diffusion.schedule import Schedule, eps_to_x0, gather_at, posterior_mean_from_eps, posterior_variance

POLICY_SAMPLERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class Chain:
    """The sampling chain of a policy: ``timesteps`` τ_0 < … < τ_{K−1} of the model's schedule (trailing
    spacing, as every sampler here), ``schedule`` the schedule respaced to them (index k ↔ τ_k), the step
    kind and DDIM's η."""

    timesteps: tuple[int, ...]
    schedule: Schedule
    sampler: str = "ddim"
    eta: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def actions(self) -> int:
        """Stochastic steps (k = K − 1 … 1); the last one, k = 0, is deterministic."""
        return len(self.timesteps) - 1


def make_chain(schedule: Schedule, steps: int, sampler: str = "ddim", eta: float = 1.0) -> Chain:
    """The chain of ``steps`` ≥ 2 steps (one of them deterministic) over ``schedule``."""
    if sampler not in POLICY_SAMPLERS:
        raise ValueError(f"policy sampler must be one of {', '.join(POLICY_SAMPLERS)}, got {sampler!r}")
    if steps < 2:
        raise ValueError(f"a policy chain needs at least 2 steps (the last is deterministic), got {steps}")
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta must be in (0, 1] (eta = 0 is deterministic DDIM, which has no density), got {eta}")
    taus = spaced_timesteps(schedule.num_timesteps, steps)
    return Chain(tuple(taus), respaced_schedule(schedule, taus), sampler, float(eta))


def step_distribution(chain: Chain, x_t: Tensor, k: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (B, C, H, W) and standard deviation (B, 1, 1, 1) of π(x_{k−1} | x_k) (module docstring) for
    chain indices ``k`` (B,) and the denoiser's ε̂ at x_k. All in float32."""
    s = chain.schedule
    if chain.sampler == "ddpm":  # [DDPM] eq. 11 with σ² = β̃ (eq. 7)
        return posterior_mean_from_eps(s, x_t, k, eps), posterior_variance(s, k, x_t).sqrt()
    ab, ab_prev = gather_at(s.alphas_bar, k, x_t), gather_at(s.alphas_bar_prev, k, x_t)  # (B, 1, 1, 1)
    var = chain.eta ** 2 * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)  # DDIM eq. 16, σ_k²
    x0 = eps_to_x0(s, x_t, k, eps)
    mean = ab_prev.sqrt() * x0 + (1.0 - ab_prev - var).clamp(min=0.0).sqrt() * eps  # DDIM eq. 12
    return mean, var.sqrt()


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std² I) of each row of a batch (B, ...) → (B,), in nats, float32."""
    nll = gaussian_nll(x.float(), mean.float(), (std.float() ** 2).expand_as(mean))
    return -nll.flatten(1).sum(1)


def gaussian_kl(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean_p, std²I) ‖ N(mean_q, std²I)) of each row (B, ...) → (B,): Σ (μ_p − μ_q)² / (2σ²)."""
    var = (std.float() ** 2).expand_as(mean_p)
    return normal_kl(mean_p.float(), var, mean_q.float(), var).flatten(1).sum(1)


def _at_step(chain: Chain, k: Tensor, device) -> Tensor:
    """The model timesteps τ_k (B,) of chain indices ``k`` (B,)."""
    return torch.as_tensor(chain.timesteps, dtype=torch.long, device=device)[k.to(device)]


def action_distribution(denoiser: Denoiser, chain: Chain, x_t: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, std) of π_θ(· | x_k) for states x_t (B, C, H, W) at chain indices k (B,); differentiable
    through the denoiser (call it under ``torch.no_grad`` to sample)."""
    eps = denoiser(x_t, _at_step(chain, k, x_t.device)).float()  # (B, C, H, W)
    return step_distribution(chain, x_t.float(), k, eps)


def action_log_prob(denoiser: Denoiser, chain: Chain, x_t: Tensor, k: Tensor, x_prev: Tensor) -> Tensor:
    """log π_θ(x_prev | x_t) (B,) for states x_t, chain indices k ≥ 1 and actions x_prev, each batched."""
    mean, std = action_distribution(denoiser, chain, x_t, k)
    return gaussian_log_prob(x_prev, mean, std)


@torch.no_grad()
def sample_trajectories(denoiser: Denoiser, chain: Chain, x_T: Tensor,
                        generator: Generators = None) -> tuple[Tensor, Tensor]:
    """Run the chain from x_T (B, C, H, W). Returns the states (B, K + 1, C, H, W) — x_{τ_{K−1}}, …, x_{τ_0},
    then x_0 — and the log-probabilities (B, K − 1) of the K − 1 actions under the policy that drew them.
    State j is the input of step j (chain index k = K − 1 − j); action j is state j + 1."""
    x = x_T.float()
    b, K = x.shape[0], chain.steps
    states, log_probs = [x], []
    for j in range(K):
        k = torch.full((b,), K - 1 - j, dtype=torch.long)
        mean, std = action_distribution(denoiser, chain, x, k)
        if j == K - 1:  # k = 0: σ = 0, deterministic
            x = mean
        else:
            x = mean + std * randn(x.shape, generator, x.device, torch.float32)
            log_probs.append(gaussian_log_prob(x, mean, std))
        states.append(x)
    return torch.stack(states, 1), torch.stack(log_probs, 1)


def trajectory_steps(states: Tensor, chain: Chain, columns: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Actions of trajectories ``states`` (B, K + 1, C, H, W) as one flat batch: (x_t (N, C, H, W), chain index
    k (N,), x_prev (N, C, H, W)). ``columns`` (B, M) picks M of the K − 1 actions j = 0 … K − 2 of each
    trajectory (default: all of them); row i·M + m is action ``columns[i, m]`` of trajectory i."""
    b = states.shape[0]
    if columns is None:
        columns = torch.arange(chain.actions).expand(b, chain.actions)
    rows = torch.arange(b)[:, None]  # (B, 1)
    x_t, x_prev = states[rows, columns].flatten(0, 1), states[rows, columns + 1].flatten(0, 1)
    k = (chain.steps - 1 - columns).flatten()  # action j is chain index K − 1 − j
    return x_t, k, x_prev
