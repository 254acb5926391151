"""Samplers over a denoiser ``denoiser(x_t, t) -> ε̂``.

* :func:`ddpm_sample` — ancestral sampling exactly as [DDPM] Algorithm 2, written out here, over all T
  steps or over a respaced subsequence of them (Nichol & Dhariwal 2021, §4).
* :func:`scheduler_sample` — DDIM, DPM-Solver++ and Euler through diffusers' schedulers
  (:func:`make_scheduler`), driving the same denoiser.
* :func:`sample` — picks one of the above by name.

Every sampler takes two optional extras, used by inpainting (:mod:`latentdiff.diffusion.blend`):

* ``start`` — skip the first ``start`` steps; x_T is then the variance-preserving x_t at the first
  timestep that is run (SDEdit-style partial denoising, "strength" = 1 − start/steps).
* ``on_step(x, t) -> x`` — called after every step with the new state as a variance-preserving x_t and
  its timestep t (``None`` once the state is x_0); what it returns is the state the sampler goes on from.

Noise is drawn on the CPU from one generator per image (:func:`randn`), so a seed gives the same
start on any device and an image does not change with the batch it is drawn in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentdiff.config import SAMPLERS
from latentdiff.diffusion.schedule import Schedule, posterior_mean_from_eps

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B,C,H,W), t (B,) int64) -> ε̂ (B,C,H,W)
StepHook = Callable[[Tensor, "int | None"], Tensor]  # (x_t (B,C,H,W), t or None for x_0) -> x_t
Generators = torch.Generator | Sequence[torch.Generator] | None


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with that image's seed: a seed means the same noise on any device,
    and an image's noise does not depend on the others drawn with it."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


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
                variance: str = "beta_tilde", generator: Generators = None, progress: bool = False,
                start: int = 0, on_step: StepHook | None = None, resample: int = 1) -> Tensor:
    """Ancestral sampling, [DDPM] Algorithm 2:

        x_T ~ N(0, I)
        for t = T, …, 1:
            z ~ N(0, I) if t > 1 else z = 0
            x_{t−1} = (1/√α_t) (x_t − (1 − α_t)/√(1 − ᾱ_t) · ε_θ(x_t, t)) + σ_t z
        return x_0

    ``variance`` picks σ_t² = β_t ("beta") or σ_t² = β̃_t ("beta_tilde"), the two choices of [DDPM] §3.2.
    With ``steps < T`` the same algorithm runs on the respaced schedule (:func:`respaced_schedule`) and the
    denoiser is queried at the original timesteps. ``x_T``: (B, C, H, W) initial noise (with ``start`` > 0:
    x_t at the first timestep run). ``on_step``: see the module docstring.

    ``resample`` = U > 1 is RePaint's resampling (Lugmayr et al. 2022, Algorithm 1): each step is taken U
    times; between takes the new state is pushed back one step by the forward transition
    x_t = √α_t x_{t−1} + √β_t z, z ~ N(0, I), so ``on_step``'s changes are harmonised with the rest.
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    T = schedule.num_timesteps
    taus = list(range(T)) if steps is None or steps == T else spaced_timesteps(T, steps)
    sched = schedule if len(taus) == T else respaced_schedule(schedule, taus)
    var = sched.betas if variance == "beta" else sched.posterior_variance
    if not 0 <= start < len(taus):
        raise ValueError(f"start {start} must be in 0..{len(taus) - 1}")
    x = x_T
    b = x.shape[0]
    for k in tqdm(range(len(taus) - 1 - start, -1, -1), disable=not progress, desc="ddpm", leave=False):
        k_vec = torch.full((b,), k, dtype=torch.long)
        for u in range(resample):
            eps = denoiser(x, torch.full((b,), taus[k], dtype=torch.long, device=x.device))
            x_prev = posterior_mean_from_eps(sched, x, k_vec, eps)  # (1/√α)(x − β/√(1−ᾱ) ε)
            if k > 0:
                x_prev = x_prev + var[k].to(x).sqrt() * randn(x.shape, generator, x.device, x.dtype)
            if on_step is not None:
                x_prev = on_step(x_prev, taus[k - 1] if k > 0 else None)
            if u + 1 == resample or k == 0:
                break
            z = randn(x.shape, generator, x.device, x.dtype)  # RePaint: x_t ~ N(√α_t x_{t−1}, β_t I)
            x = sched.alphas[k].to(x).sqrt() * x_prev + sched.betas[k].to(x).sqrt() * z
        x = x_prev
    return x


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class that sampler ``name`` (ddim | dpm++ | euler | ddpm) runs."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    classes = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
               "ddpm": DDPMScheduler}
    if name not in classes:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return classes[name]


def make_scheduler(name: str, schedule: Schedule, **overrides):
    """A diffusers scheduler for sampler ``name`` (ddim | dpm++ | euler | ddpm) on our schedule.

    The denoiser always returns ε̂, so the scheduler is built with ``prediction_type="epsilon"``;
    ``overrides`` pass any further scheduler options (for instance a loaded model's scheduler config).
    """
    kwargs = dict(num_train_timesteps=schedule.num_timesteps, trained_betas=schedule.betas.numpy().tolist(),
                  prediction_type="epsilon", timestep_spacing="trailing")
    options = {"ddim": {"clip_sample": False, "set_alpha_to_one": True},
               "dpm++": {"algorithm_type": "dpmsolver++", "solver_order": 2}, "ddpm": {"clip_sample": False}}
    cls = scheduler_class(name)
    return cls(**{**kwargs, **options.get(name, {}), **overrides})


def vp_scale(scheduler, t: int | None) -> float:
    """c with (variance-preserving x_t) = c · (the scheduler's state at timestep t): 1/√(σ_t² + 1) for
    σ-parametrised schedulers such as Euler, 1 for DDIM/DPM-Solver, 1 at the end (t None, the state is
    x_0). Read from the scheduler's own ``scale_model_input``."""
    if t is None:
        return 1.0
    return float(scheduler.scale_model_input(torch.ones(1), t)[0])


@torch.no_grad()
def scheduler_sample(denoiser: Denoiser, scheduler, x_T: Tensor, steps: int, *,
                     generator: Generators = None, progress: bool = False, start: int = 0,
                     on_step: StepHook | None = None) -> Tensor:
    """Run a diffusers scheduler's sampling loop over our denoiser.

    x_T ~ N(0, I) is scaled by ``init_noise_sigma`` (σ_max for Euler); ``scale_model_input`` maps the
    scheduler's state back to the variance-preserving x_t the denoiser expects. With ``start`` > 0 the
    first ``start`` timesteps are skipped and x_T is the variance-preserving x_t at the first one run;
    ``on_step`` sees and returns variance-preserving states (module docstring).
    """
    scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps[start * scheduler.order:]
    if start:
        if len(timesteps) == 0:
            raise ValueError(f"start {start} leaves no step of {steps}")
        if hasattr(scheduler, "set_begin_index"):  # multistep and σ-schedulers keep a step index
            scheduler.set_begin_index(start * scheduler.order)
        x = x_T / vp_scale(scheduler, timesteps[0])
    else:
        x = x_T * scheduler.init_noise_sigma
    b = x.shape[0]
    gen = generator[0] if isinstance(generator, (list, tuple)) else generator
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="sampling", leave=False)):
        x_in = scheduler.scale_model_input(x, t)
        eps = denoiser(x_in, torch.full((b,), int(t), dtype=torch.long, device=x.device))
        x = scheduler.step(eps, t, x, generator=gen, return_dict=False)[0]
        if on_step is not None:
            t_next = int(timesteps[i + 1]) if i + 1 < len(timesteps) else None
            c = vp_scale(scheduler, t_next)
            x = on_step(x * c, t_next) / c
    return x


def sampling_timesteps(sampler: str, schedule: Schedule, steps: int, scheduler_config: dict | None = None) -> list[int]:
    """The timesteps sampler ``sampler`` visits with ``steps`` steps, in the order it visits them."""
    if sampler == "ddpm":
        T = schedule.num_timesteps
        return list(range(T - 1, -1, -1)) if steps == T else spaced_timesteps(T, steps)[::-1]
    scheduler = make_scheduler(sampler, schedule, **(scheduler_config or {}))
    scheduler.set_timesteps(steps, device="cpu")
    return [int(t) for t in scheduler.timesteps[::scheduler.order]]


def sample(denoiser: Denoiser, schedule: Schedule, x_T: Tensor, *, sampler: str = "ddim", steps: int = 50,
           generator: Generators = None, progress: bool = False, scheduler_config: dict | None = None,
           start: int = 0, on_step: StepHook | None = None, resample: int = 1) -> Tensor:
    """Draw x_0 from x_T with sampler ``sampler``: "ddpm" is :func:`ddpm_sample` (Algorithm 2, σ² = β̃),
    the others run through diffusers (:func:`make_scheduler`). ``start``/``on_step``: module docstring;
    ``resample`` (RePaint) only with "ddpm", whose steps can be retaken."""
    if sampler == "ddpm":
        return ddpm_sample(denoiser, schedule, x_T, steps=steps, generator=generator, progress=progress,
                           start=start, on_step=on_step, resample=resample)
    if resample != 1:
        raise ValueError(f"resampling (RePaint) needs the ddpm sampler, not {sampler!r}")
    scheduler = make_scheduler(sampler, schedule, **(scheduler_config or {}))
    return scheduler_sample(denoiser, scheduler, x_T, steps, generator=generator, progress=progress,
                            start=start, on_step=on_step)
