"""Properties of the diffusion core: forward process, conversions, posterior, samplers, guidance, bound."""
import math

import pytest
import torch

from latentdiff.config import ScheduleConfig
from latentdiff.diffusion import schedule as S
from latentdiff.diffusion.elbo import bits_per_dim
from latentdiff.diffusion.guidance import classifier_free_guidance
from latentdiff.diffusion.loss import diffusion_loss, min_snr_weight
from latentdiff.diffusion.sampling import ddpm_sample, randn, sample

LINEAR = S.Schedule.from_config(ScheduleConfig())


def gaussian_eps_denoiser(schedule, mu, s2):
    """The exact (Bayes-optimal) ε̂ for data x_0 ~ N(mu, s2 I):
    E[ε | x_t] = √(1−ᾱ) (x_t − √ᾱ mu) / (ᾱ s2 + 1 − ᾱ)."""

    def denoise(x_t, t):
        ab = S.gather_at(schedule.alphas_bar, t, x_t).double()
        x = x_t.double()
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s2 + 1 - ab)
        return eps.to(x_t.dtype)

    return denoise


def test_schedule_values():
    assert LINEAR.num_timesteps == 1000
    assert LINEAR.betas[0].item() == pytest.approx(1e-4)
    assert LINEAR.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(LINEAR.alphas_bar, torch.cumprod(1 - LINEAR.betas.double(), 0).float())
    for kind in ("scaled_linear", "cosine"):
        sch = S.Schedule.from_config(ScheduleConfig(kind=kind, beta_start=0.00085, beta_end=0.012))
        ab = sch.alphas_bar
        assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < 0.01 and ab[0] > 0.99


def test_q_sample_has_closed_form_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7)
    for ti in (0, 100, 500, 999):
        t = torch.full((n,), ti)
        xt = S.q_sample(LINEAR, x0, t, torch.randn(n, 1, generator=g))
        ab = LINEAR.alphas_bar[ti].item()
        # standard errors: σ/√n for the mean, ~σ²√(2/n) for the variance; allow 5 of them
        sd = math.sqrt(1 - ab)
        assert abs(xt.mean().item() - math.sqrt(ab) * 0.7) < 5 * sd / math.sqrt(n)
        assert abs(xt.var().item() - (1 - ab)) < 5 * (1 - ab) * math.sqrt(2 / n)


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 4, 5, 5, generator=g), torch.randn(8, 4, 5, 5, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    xt = S.q_sample(LINEAR, x0, t, eps)
    assert torch.allclose(S.eps_to_x0(LINEAR, xt, t, eps), x0, atol=2e-3)  # 1/√ᾱ amplifies at t≈T
    assert torch.allclose(S.x0_to_eps(LINEAR, xt, t, x0), eps, atol=1e-3)
    v = S.v_target(LINEAR, x0, t, eps)
    assert torch.allclose(S.v_to_x0(LINEAR, xt, t, v), x0, atol=1e-5)
    assert torch.allclose(S.v_to_eps(LINEAR, xt, t, v), eps, atol=1e-5)
    for kind, pred in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        assert torch.allclose(S.prediction_to_eps(LINEAR, xt, t, pred, kind), eps, atol=1e-3)


def test_posterior_mean_forms_agree():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 4, 4, generator=g)
    t = torch.randint(1, 1000, (16,), generator=g)
    xt = S.q_sample(LINEAR, x0, t, eps)
    a = S.posterior_mean_from_x0(LINEAR, xt, t, x0)
    b = S.posterior_mean_from_eps(LINEAR, xt, t, eps)
    assert torch.allclose(a, b, atol=1e-4)
    # β̃_t ≤ β_t and β̃_1 = 0
    assert LINEAR.posterior_variance[0] == 0
    assert (LINEAR.posterior_variance <= LINEAR.betas + 1e-12).all()


def test_loss_is_zero_for_the_oracle_and_weights_are_min_snr():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 2, 3, 3, generator=g)
    noise = torch.randn(6, 2, 3, 3, generator=g)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    oracle = lambda xt, tt: noise  # noqa: E731
    assert diffusion_loss(oracle, LINEAR, x0, t=t, noise=noise).item() == 0.0
    zero = lambda xt, tt: torch.zeros_like(xt)  # noqa: E731
    assert diffusion_loss(zero, LINEAR, x0, t=t, noise=noise).item() == pytest.approx(noise.pow(2).mean().item())
    w = min_snr_weight(LINEAR, t, 5.0, "epsilon")
    snr = LINEAR.snr(t)
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[0] < 1 and w[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_ancestral_recovers_gaussian(variance):
    mu, s2, n = 0.5, 0.25, 4000
    g = torch.Generator().manual_seed(4)
    den = gaussian_eps_denoiser(LINEAR, mu, s2)
    x = ddpm_sample(den, LINEAR, randn((n, 1), g), variance=variance, generator=g)
    # sampling error: mean σ/√n ≈ 0.008, variance s2·√(2/n) ≈ 0.0056; plus a small bias of the
    # fixed-variance reverse process (it is O(β) for Gaussian data).
    assert abs(x.mean().item() - mu) < 0.03
    assert abs(x.var().item() - s2) < 0.025


def _normal_quantiles(n):
    """x_T with an exactly standard-normal empirical distribution, so only discretisation error remains."""
    return torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n) + 0.5) / n).reshape(n, 1, 1, 1)


# Deterministic samplers shrink the variance of Gaussian data at every finite step (by Cauchy–Schwarz,
# one DDIM step maps Var V_t to (√(ᾱ'ᾱ) s² + √((1−ᾱ')(1−ᾱ)))² / V_t ≤ V_t'), an error of first order in
# the step size for DDIM/Euler and second order for DPM-Solver++(2M); these bounds are measured, not fitted:
# ddim/euler at 100 steps give 0.947·s², dpm++ at 20 steps 0.935·s².
@pytest.mark.parametrize("sampler,steps,rel_tol", [("ddim", 100, 0.07), ("euler", 100, 0.07), ("dpm++", 20, 0.08)])
def test_fast_samplers_recover_gaussian(sampler, steps, rel_tol):
    mu, s2, n = -0.4, 0.3, 4000
    den = gaussian_eps_denoiser(LINEAR, mu, s2)
    x = sample(den, LINEAR, _normal_quantiles(n), sampler=sampler, steps=steps)
    assert abs(x.mean().item() - mu) < 0.01
    assert abs(x.var().item() / s2 - 1) < rel_tol


def test_ddim_error_shrinks_with_more_steps():
    mu, s2 = 0.3, 0.3
    den = gaussian_eps_denoiser(LINEAR, mu, s2)
    errs = [abs(sample(den, LINEAR, _normal_quantiles(2000), sampler="ddim", steps=k).var().item() / s2 - 1)
            for k in (10, 25, 100)]
    assert errs[0] > errs[1] > errs[2]


def test_respaced_ddpm_recovers_gaussian():
    mu, s2, n = -0.4, 0.3, 4000
    g = torch.Generator().manual_seed(5)
    den = gaussian_eps_denoiser(LINEAR, mu, s2)
    x = sample(den, LINEAR, randn((n, 1, 1, 1), g), sampler="ddpm", steps=250, generator=g)
    assert abs(x.mean().item() - mu) < 0.03
    assert abs(x.var().item() / s2 - 1) < 0.1


def test_randn_per_image_generators_do_not_depend_on_batch():
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    batch = randn((3, 4, 2, 2), gens())
    alone = randn((1, 4, 2, 2), [gens()[2]])
    assert torch.equal(batch[2:3], alone)


def _toy_cond_model(x, t, cond):  # cond: (B, C) added per channel; a different effect per channel
    return 0.5 * x + cond[:, :, None, None] * torch.arange(1, x.shape[1] + 1)[None, :, None, None]


def test_cfg_scale_one_is_conditional_and_zero_unconditional():
    g = torch.Generator().manual_seed(6)
    x, t = torch.randn(2, 4, 3, 3, generator=g), torch.tensor([5, 500])
    cond, uncond = torch.randn(2, 4, generator=g), torch.zeros(2, 4)
    e_c, e_u = _toy_cond_model(x, t, cond), _toy_cond_model(x, t, uncond)
    assert torch.equal(classifier_free_guidance(_toy_cond_model, cond, uncond, 1.0)(x, t), e_c)
    assert torch.allclose(classifier_free_guidance(_toy_cond_model, cond, uncond, 0.0)(x, t), e_u, atol=1e-6)
    w = 3.5
    guided = classifier_free_guidance(_toy_cond_model, cond, uncond, w)(x, t)
    assert torch.allclose(guided, e_u + w * (e_c - e_u), atol=1e-5)
    # the seed's (1+ω)ε(x,c) − ωε(x) with w = 1+ω
    omega = w - 1
    assert torch.allclose(guided, (1 + omega) * e_c - omega * e_u, atol=1e-5)


def test_cfg_changes_every_channel():
    g = torch.Generator().manual_seed(7)
    x, t = torch.randn(2, 4, 3, 3, generator=g), torch.tensor([5, 500])
    cond, uncond = torch.ones(2, 4), torch.zeros(2, 4)
    base = classifier_free_guidance(_toy_cond_model, cond, uncond, 1.0)(x, t)
    guided = classifier_free_guidance(_toy_cond_model, cond, uncond, 4.0)(x, t)
    changed = (guided - base).abs().amax(dim=(0, 2, 3))  # per channel
    assert (changed > 1e-3).all(), changed


def test_cfg_batches_conditions_of_dict_type():
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return x * cond["scale"][:, None, None, None]

    x, t = torch.ones(3, 2, 2, 2), torch.zeros(3, dtype=torch.long)
    den = classifier_free_guidance(model, {"scale": torch.full((3,), 2.0)}, {"scale": torch.zeros(3)}, 2.0)
    assert torch.allclose(den(x, t), torch.full_like(x, 4.0))
    assert calls == [6]  # one batched forward


def analytic_gaussian_bound_bits(schedule, mu, s2):
    """E_{x_0 ~ N(mu, s2)} of the bound L (elbo module docstring) for the exact-mean Gaussian model with
    σ_t² = β̃_t, in closed form. With x̂_0 = E[x_0 | x_t], μ̃ − μ_θ = c_t (x_0 − x̂_0), c_t = √ᾱ_{t−1} β_t/(1−ᾱ_t),
    and E(x_0 − x̂_0)² = Var[x_0 | x_t] = s2 (1−ᾱ_t)/(ᾱ_t s2 + 1 − ᾱ_t)."""
    ab, ab_prev = schedule.alphas_bar.double(), schedule.alphas_bar_prev.double()
    beta, post = schedule.betas.double(), schedule.posterior_variance.double()
    cond_var = s2 * (1 - ab) / (ab * s2 + 1 - ab)
    c = ab_prev.sqrt() * beta / (1 - ab)
    kl = 0.5 * (c[1:] ** 2 * cond_var[1:] / post[1:])  # log(σ²/β̃) + β̃/σ² − 1 = 0 for σ² = β̃
    decoder = 0.5 * (math.log(2 * math.pi) + torch.log(beta[0]) + cond_var[0] / beta[0])
    abT = ab[-1]
    prior = 0.5 * (-torch.log(1 - abT) + (1 - abT) + abT * (mu**2 + s2) - 1)
    return float((kl.sum() + decoder + prior) / math.log(2))


def test_bits_per_dim_of_exact_gaussian_model_matches_analytic_value():
    mu, s2 = 0.2, 0.25
    g = torch.Generator().manual_seed(8)
    x0 = mu + math.sqrt(s2) * torch.randn(2000, 1, generator=g)
    den = gaussian_eps_denoiser(LINEAR, mu, s2)
    analytic = analytic_gaussian_bound_bits(LINEAR, mu, s2)
    bpd = bits_per_dim(den, LINEAR, x0, generator=g)
    assert bpd.mean().item() == pytest.approx(analytic, abs=4 * bpd.std().item() / math.sqrt(len(bpd)) + 1e-3)
    # a bound: never below the data's true negative log-likelihood, ½ log2(2πe s2) bits per dimension
    assert analytic > 0.5 * math.log2(2 * math.pi * math.e * s2)
    for k in (5, 20):  # the stratified estimate is unbiased
        est = bits_per_dim(den, LINEAR, x0, num_t=k, generator=g)
        assert est.mean().item() == pytest.approx(analytic, abs=4 * est.std().item() / math.sqrt(len(est)))


def test_stratified_bound_estimate_varies_far_less_than_uniform_draws():
    """Per sample, the K-step estimate (exact L_0, geometric strata) varies far less than the plain
    estimate (T/K) Σ L_{t_k−1} with t_k uniform on {1..T}. (Its unbiasedness: the analytic test above.)"""
    from latentdiff.diffusion.elbo import prior_term, vlb_term

    mu, s2 = 0.2, 0.25
    den = gaussian_eps_denoiser(LINEAR, mu, s2)
    x0 = mu + math.sqrt(s2) * torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([bits_per_dim(den, LINEAR, x0, num_t=10, generator=g) for _ in range(300)])  # (300, 4)
    T, dims = LINEAR.num_timesteps, x0[0].numel()
    plain = []
    for _ in range(300):  # the old estimator, same K
        acc = sum(vlb_term(den, LINEAR, x0, torch.randint(0, T, (4,), generator=g), generator=g) for _ in range(10))
        plain.append((prior_term(LINEAR, x0) + acc * T / 10) / (dims * math.log(2)))
    plain = torch.stack(plain)
    assert torch.all(draws.std(0) < 0.2 * plain.std(0))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_x0_weight_floor_puts_min_snr_plus_floor_on_the_x0_error(prediction):
    """Whatever the model predicts, the weighted loss is the x_0 error weighted by min(SNR, γ) + floor."""
    from dataclasses import replace

    from latentdiff.diffusion.schedule import eps_to_x0, prediction_to_eps

    sched = replace(LINEAR, prediction=prediction)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(5, 2, 3, 3, generator=g)
    noise = torch.randn(5, 2, 3, 3, generator=g)
    t = torch.tensor([5, 200, 500, 900, 999])
    wrong = lambda xt, tt: torch.sin(xt) * 0.3  # noqa: E731  (any prediction that is not the target)
    x_t = S.q_sample(sched, x0, t, noise)
    x0_hat = eps_to_x0(sched, x_t, t, prediction_to_eps(sched, x_t, t, wrong(x_t, t), prediction))
    x0_err = (x0_hat - x0).pow(2).flatten(1).mean(1)
    snr = sched.snr(t)
    for floor in (0.0, 1.0):
        got = diffusion_loss(wrong, sched, x0, t=t, noise=noise, min_snr_gamma=5.0, x0_weight_floor=floor)
        want = ((snr.clamp(max=5.0) + floor) * x0_err).mean()
        assert got.item() == pytest.approx(want.item(), rel=1e-4)
        each = diffusion_loss(wrong, sched, x0, t=t, noise=noise, min_snr_gamma=5.0, x0_weight_floor=floor,
                              reduce=False)  # per sample, (B,): what bench/diffusion_dpo.py compares
        assert each.shape == (5,)
        assert torch.allclose(each, (snr.clamp(max=5.0) + floor) * x0_err, rtol=1e-4)
    high = min_snr_weight(sched, t[-1:], 5.0, prediction, floor=1.0) * (
        {"epsilon": snr[-1:], "v_prediction": snr[-1:] + 1, "sample": torch.ones(1)}[prediction])
    assert high.item() == pytest.approx(1.0, abs=1e-3)  # at t = T the x_0 error keeps weight ≈ 1
