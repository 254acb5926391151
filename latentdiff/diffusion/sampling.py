"""Samplers over a denoiser ``denoiser(x_t, t) -> ε̂``.

* :func:`ddpm_sample` — ancestral sampling exactly as [DDPM] Algorithm 2, written out here, over all T
  steps or over a respaced subsequence of them (Nichol & Dhariwal 2021, §4).
* :func:`scheduler_sample` — DDIM, DPM-Solver++ and Euler through diffusers' schedulers
  (:func:`make_scheduler`), driving the same denoiser.
* :func:`sample` — picks one of the above by name.

Noise is drawn on the CPU from one generator per image (:func:`randn`), so a seed gives the same
start on any device and an image does not change with the batch it is drawn in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentdiff.diffusion.schedule import Schedule, posterior_mean_from_eps

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B,C,H,W), t (B,) int64) -> ε̂ (B,C,H,W)
Generators = torch.Generator | Sequence[torch.Generator] | None

SAMPLERS = ("ddpm", "ddim", "dpm++", "euler")


def randn(shape: Sequence[int], generator: Generators = None, device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape`` (B, ...), drawn on the CPU and moved to ``device``.

    With a list of generators, image i is drawn from ``generator[i]`` alone.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        parts = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator]
        out = torch.cat(parts)
    else:
        out = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return out.to(device=device, dtype=dtype)


def respaced_schedule(schedule: Schedule, timesteps: Sequence[int]) -> Schedule:
    """The schedule restricted to an increasing subsequence τ of timesteps: ᾱ'_k = ᾱ_{τ_k},
    β'_k = 1 − ᾱ'_k / ᾱ'_{k−1} (Nichol & Dhariwal 2021, §4 "Improving sampling speed")."""
    ab = schedule.alphas_bar.double()[torch.as_tensor(list(timesteps))]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return Schedule.from_betas(1.0 - ab / prev, schedule.kind, schedule.prediction)


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced 0-based timesteps ending at T − 1 ("trailing" spacing, Lin et al. 2024)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    step = num_timesteps / steps
    return sorted({int(round(num_timesteps - 1 - k * step)) for k in range(steps)})


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, schedule: Schedule, x_T: Tensor, *, steps: int | None = None,
                variance: str = "beta_tilde", generator: Generators = None, progress: bool = False) -> Tensor:
    """Ancestral sampling, [DDPM] Algorithm 2:

        x_T ~ N(0, I)
        for t = T, …, 1:
            z ~ N(0, I) if t > 1 else z = 0
            x_{t−1} = (1/√α_t) (x_t − (1 − α_t)/√(1 − ᾱ_t) · ε_θ(x_t, t)) + σ_t z
        return x_0

    ``variance`` picks σ_t² = β_t ("beta") or σ_t² = β̃_t ("beta_tilde"), the two choices of [DDPM] §3.2.
    With ``steps < T`` the same algorithm runs on the respaced schedule (:func:`respaced_schedule`) and the
    denoiser is queried at the original timesteps. ``x_T``: (B, C, H, W) initial noise.
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    T = schedule.num_timesteps
    taus = list(range(T)) if steps is None or steps == T else spaced_timesteps(T, steps)
    sched = schedule if len(taus) == T else respaced_schedule(schedule, taus)
    var = sched.betas if variance == "beta" else sched.posterior_variance
    x = x_T
    b = x.shape[0]
    for k in tqdm(range(len(taus) - 1, -1, -1), disable=not progress, desc="ddpm", leave=False):
        k_vec = torch.full((b,), k, dtype=torch.long)
        eps = denoiser(x, torch.full((b,), taus[k], dtype=torch.long, device=x.device))
        x = posterior_mean_from_eps(sched, x, k_vec, eps)  # (1/√α)(x − β/√(1−ᾱ) ε)
        if k > 0:
            z = randn(x.shape, generator, x.device, x.dtype)
            x = x + var[k].to(x).sqrt() * z
    return x


def make_scheduler(name: str, schedule: Schedule, **overrides):
    """A diffusers scheduler for sampler ``name`` (ddim | dpm++ | euler | ddpm) on our schedule.

    The denoiser always returns ε̂, so the scheduler is built with ``prediction_type="epsilon"``;
    ``overrides`` pass any further scheduler options (for instance a loaded model's scheduler config).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    kwargs = dict(num_train_timesteps=schedule.num_timesteps, trained_betas=schedule.betas.numpy().tolist(),
                  prediction_type="epsilon", timestep_spacing="trailing")
    if name == "ddim":
        cls, kwargs = DDIMScheduler, {**kwargs, "clip_sample": False, "set_alpha_to_one": True}
    elif name == "dpm++":
        cls, kwargs = DPMSolverMultistepScheduler, {**kwargs, "algorithm_type": "dpmsolver++", "solver_order": 2}
    elif name == "euler":
        cls = EulerDiscreteScheduler
    elif name == "ddpm":
        cls, kwargs = DDPMScheduler, {**kwargs, "clip_sample": False}
    else:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    kwargs.update(overrides)
    return cls(**kwargs)


@torch.no_grad()
def scheduler_sample(denoiser: Denoiser, scheduler, x_T: Tensor, steps: int, *,
                     generator: Generators = None, progress: bool = False) -> Tensor:
    """Run a diffusers scheduler's sampling loop over our denoiser.

    x_T ~ N(0, I) is scaled by ``init_noise_sigma`` (σ_max for Euler); ``scale_model_input`` maps the
    scheduler's state back to the variance-preserving x_t the denoiser expects.
    """
    scheduler.set_timesteps(steps, device="cpu")
    x = x_T * scheduler.init_noise_sigma
    b = x.shape[0]
    gen = generator[0] if isinstance(generator, (list, tuple)) else generator
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling", leave=False):
        x_in = scheduler.scale_model_input(x, t)
        eps = denoiser(x_in, torch.full((b,), int(t), dtype=torch.long, device=x.device))
        x = scheduler.step(eps, t, x, generator=gen, return_dict=False)[0]
    return x


def sample(denoiser: Denoiser, schedule: Schedule, x_T: Tensor, *, sampler: str = "ddim", steps: int = 50,
           generator: Generators = None, progress: bool = False, scheduler_config: dict | None = None) -> Tensor:
    """Draw x_0 from x_T with sampler ``sampler``: "ddpm" is :func:`ddpm_sample` (Algorithm 2, σ² = β̃),
    the others run through diffusers (:func:`make_scheduler`)."""
    if sampler == "ddpm":
        return ddpm_sample(denoiser, schedule, x_T, steps=steps, generator=generator, progress=progress)
    scheduler = make_scheduler(sampler, schedule, **(scheduler_config or {}))
    return scheduler_sample(denoiser, scheduler, x_T, steps, generator=generator, progress=progress)
