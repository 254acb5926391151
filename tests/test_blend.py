"""Sampler hooks for inpainting: blended diffusion keeps the known region exact, RePaint's resampling
moves the unknown part towards the true conditional, and partial denoising (``start``) starts every
sampler at the right noise level. Exact Gaussian denoisers, no networks: fractions of a second each."""
import pytest
import torch

from latentdiff.config import ScheduleConfig
from latentdiff.diffusion import schedule as S
from latentdiff.diffusion.blend import known_region_hook
from latentdiff.diffusion.sampling import randn, sample, sampling_timesteps

LINEAR = S.Schedule.from_config(ScheduleConfig())
SAMPLERS = [("ddpm", 50), ("ddim", 50), ("dpm++", 25), ("euler", 50)]
RHO, A_STAR = 0.9, 1.5  # data (a, b) ~ N(0, [[1, ρ], [ρ, 1]]); a is known: b | a ~ N(ρ a, 1 − ρ²)


def bivariate_denoiser(rho: float):
    """The exact ε̂ for x_0 ~ N(0, Σ), Σ = [[1, ρ], [ρ, 1]] on x of shape (B, 2, 1, 1):
    E[ε | x_t] = √(1−ᾱ) (ᾱ Σ + (1−ᾱ) I)⁻¹ x_t."""
    sigma = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)

    def denoise(x_t, t):
        ab = LINEAR.alphas_bar.double()[t].reshape(-1, 1, 1)
        a = ab * sigma + (1 - ab) * torch.eye(2, dtype=torch.float64)
        eps = (1 - ab).sqrt() * torch.linalg.solve(a, x_t.double().reshape(-1, 2, 1))
        return eps.reshape(x_t.shape).to(x_t.dtype)

    return denoise


def _blend(sampler, steps, n=4000, resample=1, mask=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_T = randn((n, 2, 1, 1), g)
    known = torch.zeros(n, 2, 1, 1)
    known[:, 0] = A_STAR
    if mask is None:
        mask = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)  # generate b, keep a
    hook = known_region_hook(LINEAR, known, mask, x_T)
    return sample(bivariate_denoiser(RHO), LINEAR, x_T, sampler=sampler, steps=steps, generator=g,
                  on_step=hook, resample=resample)


@pytest.mark.parametrize("sampler,steps", SAMPLERS)
def test_known_region_ends_exactly_at_the_known_latents(sampler, steps):
    out = _blend(sampler, steps, n=200)
    assert torch.equal(out[:, 0], torch.full_like(out[:, 0], A_STAR))
    assert out[:, 1].std() > 0.1  # the unknown part is sampled, not copied


def test_repaint_resampling_moves_the_unknown_part_towards_the_true_conditional():
    # Plain replacement is biased (the unknown part barely sees the known one: mean ≈ 0.89 for 1.35);
    # RePaint's U resamplings per step harmonise them (measured: 0.46 → 0.10 → 0.06 mean error).
    errors = []
    for u in (1, 5, 10):
        b = _blend("ddpm", 50, resample=u)[:, 1].flatten()
        errors.append(abs(b.mean().item() - RHO * A_STAR))
    assert errors[0] > 0.3 and errors[1] < errors[0] / 3 and errors[2] < errors[1]


@pytest.mark.parametrize("sampler,steps", SAMPLERS)
def test_a_hook_that_keeps_nothing_changes_nothing(sampler, steps):
    g = torch.Generator().manual_seed(1)
    x_T = randn((64, 2, 1, 1), g)
    plain = sample(bivariate_denoiser(RHO), LINEAR, x_T, sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(2))
    calls = []
    hooked = sample(bivariate_denoiser(RHO), LINEAR, x_T, sampler=sampler, steps=steps,
                    generator=torch.Generator().manual_seed(2),
                    on_step=lambda x, t: calls.append(t) or x)
    assert torch.allclose(plain, hooked, atol=1e-6, rtol=0)
    visited = sampling_timesteps(sampler, LINEAR, steps)
    assert calls == visited[1:] + [None]  # each step reports the timestep its new state is at


def gaussian_eps(mu, s2):
    def denoise(x_t, t):
        ab = S.gather_at(LINEAR.alphas_bar, t, x_t).double()
        return ((1 - ab).sqrt() * (x_t.double() - ab.sqrt() * mu) / (ab * s2 + 1 - ab)).to(x_t.dtype)
    return denoise


def _gaussian_run(sampler, steps, start, mu=0.3, s2=0.2, n=16000):
    """Sample N(mu, s2) data with the exact ε̂, from pure noise (start 0) or from x_t ~ q(x_t | x_0) at the
    ``start``-th visited timestep; returns (samples, timesteps the denoiser saw)."""
    g = torch.Generator().manual_seed(3)
    x0 = mu + s2 ** 0.5 * randn((n, 1, 1, 1), g)
    t0 = sampling_timesteps(sampler, LINEAR, steps)[start]
    x_t = S.q_sample(LINEAR, x0, torch.full((n,), t0), randn((n, 1, 1, 1), g)) if start else randn(x0.shape, g)
    seen, den = [], gaussian_eps(mu, s2)
    out = sample(lambda x, t: seen.append(int(t[0])) or den(x, t), LINEAR, x_t, sampler=sampler, steps=steps,
                 generator=g, start=start)
    return out, seen


@pytest.mark.parametrize("sampler,steps", [("ddpm", 250), ("ddim", 100), ("dpm++", 25), ("euler", 100)])
def test_samplers_started_midway_behave_like_a_full_run(sampler, steps):
    # Started at step k from the true marginal q(x_t), a sampler must end where a full run from noise ends
    # (both carry the same discretisation error: e.g. DDIM/Euler at 100 steps give 0.93·s², ancestral at
    # 250 steps 0.97·s²). A state put at the wrong noise level (Euler's σ-scaling forgotten: ×3.5 at
    # t = 499) would be far off.
    mu, s2, start = 0.3, 0.2, steps // 2
    full, _ = _gaussian_run(sampler, steps, 0, mu, s2)
    mid, seen = _gaussian_run(sampler, steps, start, mu, s2)
    assert seen[0] == sampling_timesteps(sampler, LINEAR, steps)[start] and len(seen) == steps - start
    assert abs(mid.mean().item() - mu) < 0.03
    assert abs(mid.var().item() - full.var().item()) < 0.05 * s2  # the two runs' sampling error: ≈ 0.016·s2
    assert abs(mid.var().item() / s2 - 1) < 0.1


def test_resampling_needs_the_ddpm_sampler_and_start_must_leave_a_step():
    den = gaussian_eps(0.0, 1.0)
    with pytest.raises(ValueError, match="ddpm"):
        sample(den, LINEAR, torch.zeros(1, 1, 1, 1), sampler="ddim", steps=5, resample=2)
    with pytest.raises(ValueError, match="start"):
        sample(den, LINEAR, torch.zeros(1, 1, 1, 1), sampler="ddpm", steps=5, start=5)
