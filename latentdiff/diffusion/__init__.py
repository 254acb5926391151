"""The diffusion core: schedules, losses, samplers and guidance as pure functions over tensors.

A sampler sees only a *denoiser*: ``denoiser(x_t, t) -> ε̂`` with x_t of shape (B, C, H, W) and t (B,)
integer timesteps. Guidance and conditioning wrap a model into such a denoiser.
"""
from latentdiff.diffusion.schedule import Schedule, q_sample  # noqa: F401
