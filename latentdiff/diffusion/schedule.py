"""The forward (noising) process of DDPM as pure functions over tensors.

Notation follows Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (2020), hereafter [DDPM]:
β_t the variance schedule, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s.

Indexing: the paper counts t = 1 … T; tensors here are indexed 0 … T−1, so index ``i`` is the paper's
step ``t = i + 1`` (the convention of diffusers' schedulers, whose timesteps we share). All schedule
maths is done in float64 and stored as float32; call sites move values to the data's device and dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from latentdiff.config import ScheduleConfig


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_1 … β_T linearly spaced ([DDPM] §4: β_1 = 10⁻⁴ … β_T = 0.02, T = 1000)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """β_t = (linspace(√β_start, √β_end))², the schedule of Stable Diffusion (Rombach et al. 2022)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2),
    β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_bar = f / f[0]
    return (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class Schedule:
    """Precomputed schedule tensors, each of shape (T,), float32 on the CPU.

    ``alphas_bar_prev[i]`` is ᾱ_{t−1} with ᾱ_0 = 1; ``posterior_variance`` is
    β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t ([DDPM] eq. 7).
    """

    betas: Tensor
    alphas: Tensor
    alphas_bar: Tensor
    alphas_bar_prev: Tensor
    posterior_variance: Tensor
    kind: str = "custom"
    prediction: str = "epsilon"

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with its tensors on ``device`` (a training loop on the GPU gathers ᾱ_t there,
        with no host copy at each step)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **{name: t.to(device) for name, t in tensors.items()})

    @classmethod
    def from_betas(cls, betas: Tensor, kind: str = "custom", prediction: str = "epsilon") -> "Schedule":
        betas = betas.to(torch.float64)
        alphas = 1.0 - betas
        alphas_bar = torch.cumprod(alphas, dim=0)
        alphas_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_bar[:-1]])
        post_var = betas * (1.0 - alphas_bar_prev) / (1.0 - alphas_bar)
        f32 = lambda x: x.to(torch.float32)  # noqa: E731
        return cls(f32(betas), f32(alphas), f32(alphas_bar), f32(alphas_bar_prev), f32(post_var), kind, prediction)

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> "Schedule":
        if cfg.kind == "linear":
            betas = linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        elif cfg.kind == "scaled_linear":
            betas = scaled_linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
        else:
            betas = cosine_betas(cfg.num_timesteps)
        return cls.from_betas(betas, cfg.kind, cfg.prediction)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t), gathered at integer timesteps t (B,)."""
        ab = self.alphas_bar.to(t.device)[t]
        return ab / (1.0 - ab)


def gather_at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ``values[t]`` for a batch of timesteps t (B,) and broadcast to ``like`` (B, ...)."""
    out = values.to(device=like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) in one step: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε ([DDPM] eq. 4).

    x0, noise: (B, ...); t: (B,) integer timesteps (0-based).
    """
    ab = gather_at(schedule.alphas_bar, t, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def q_mean_variance(schedule: Schedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean √ᾱ_t x_0 and variance (1 − ᾱ_t) of q(x_t | x_0) ([DDPM] eq. 4), variance broadcastable."""
    ab = gather_at(schedule.alphas_bar, t, x0)
    return ab.sqrt() * x0, 1.0 - ab


# --- prediction targets and conversions among ε, x_0 and v -------------------------------------------
# With a_t = √ᾱ_t, s_t = √(1 − ᾱ_t):  x_t = a x_0 + s ε,  v = a ε − s x_0  (Salimans & Ho 2022, §4),
# so x_0 = a x_t − s v and ε = s x_t + a v.


def eps_to_x0(schedule: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t ([DDPM] eq. 4 solved for x_0; eq. 15)."""
    ab = gather_at(schedule.alphas_bar, t, x_t)
    return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()


def x0_to_eps(schedule: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t) ([DDPM] eq. 4 solved for ε)."""
    ab = gather_at(schedule.alphas_bar, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()


def v_target(schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, "Progressive Distillation", §4 and App. D)."""
    ab = gather_at(schedule.alphas_bar, t, x0)
    return ab.sqrt() * eps - (1.0 - ab).sqrt() * x0


def v_to_x0(schedule: Schedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
    ab = gather_at(schedule.alphas_bar, t, x_t)
    return ab.sqrt() * x_t - (1.0 - ab).sqrt() * v


def v_to_eps(schedule: Schedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """ε = √(1 − ᾱ_t) x_t + √ᾱ_t v."""
    ab = gather_at(schedule.alphas_bar, t, x_t)
    return (1.0 - ab).sqrt() * x_t + ab.sqrt() * v


def prediction_to_eps(schedule: Schedule, x_t: Tensor, t: Tensor, pred: Tensor, prediction: str) -> Tensor:
    """Convert a network output of type ``prediction`` (epsilon | v_prediction | sample) to ε."""
    if prediction == "epsilon":
        return pred
    if prediction == "v_prediction":
        return v_to_eps(schedule, x_t, t, pred)
    if prediction == "sample":
        return x0_to_eps(schedule, x_t, t, pred)
    raise ValueError(f"unknown prediction type {prediction!r}")


# --- the posterior q(x_{t-1} | x_t, x_0) -----------------------------------------------------------


def posterior_mean_from_x0(schedule: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """μ̃_t(x_t, x_0) = √ᾱ_{t−1} β_t/(1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t ([DDPM] eq. 7)."""
    ab = gather_at(schedule.alphas_bar, t, x_t)
    ab_prev = gather_at(schedule.alphas_bar_prev, t, x_t)
    beta = gather_at(schedule.betas, t, x_t)
    alpha = gather_at(schedule.alphas, t, x_t)
    return (ab_prev.sqrt() * beta / (1.0 - ab)) * x0 + (alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab)) * x_t


def posterior_mean_from_eps(schedule: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """μ = (1/√α_t) (x_t − β_t/√(1 − ᾱ_t) · ε) ([DDPM] eq. 11): eq. 7 with x_0 from eq. 4."""
    ab = gather_at(schedule.alphas_bar, t, x_t)
    beta = gather_at(schedule.betas, t, x_t)
    alpha = gather_at(schedule.alphas, t, x_t)
    return (x_t - beta / (1.0 - ab).sqrt() * eps) / alpha.sqrt()


def posterior_variance(schedule: Schedule, t: Tensor, like: Tensor) -> Tensor:
    """β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t ([DDPM] eq. 7), broadcastable to ``like``."""
    return gather_at(schedule.posterior_variance, t, like)
