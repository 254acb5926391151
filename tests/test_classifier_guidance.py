"""Classifier guidance: the ε-form wrapper is exact, works inside every sampler's inference mode, and on an
analytic Gaussian it samples the exact posterior p(x_0 | y)."""
import math

import pytest
import torch

from latentdiff.config import ScheduleConfig
from latentdiff.diffusion.guidance import classifier_free_guidance, classifier_gradient, classifier_guidance
from latentdiff.diffusion.sampling import sample
from latentdiff.diffusion.schedule import Schedule
from latentdiff.errors import UserError
from latentdiff.models.classifier import (
    ClassifierConfig,
    ClassifierGuide,
    NoiseAwareClassifier,
    build_classifier,
    load_classifier,
    save_classifier,
    soft_labels,
)

SCHEDULE = Schedule.from_config(ScheduleConfig())
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")


def tiny_classifier(seed=0, channels=4) -> NoiseAwareClassifier:
    torch.manual_seed(seed)
    return build_classifier(ClassifierConfig(block_out_channels=(8, 16), norm_num_groups=4), in_channels=channels,
                            sample_size=8, num_train_timesteps=1000, shapes=SHAPES, colours=COLOURS).eval()


def test_wrapper_is_the_formula_and_works_under_inference_mode():
    mu = torch.randn(3, 4, 2, 2)
    x = torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    eps = torch.randn(3, 4, 2, 2)
    base = lambda x_t, tt: eps  # noqa: E731
    log_prob = lambda x_t, tt: -0.5 * (x_t - mu).pow(2).flatten(1).sum(1)  # ∇ = μ − x  # noqa: E731
    with torch.inference_mode():  # as inside Pipeline.sample_rows
        out = classifier_guidance(base, log_prob, SCHEDULE, 2.5)(x, t)
        plain = classifier_guidance(base, log_prob, SCHEDULE, 0.0)(x, t)
    sigma = (1 - SCHEDULE.alphas_bar[t]).sqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, eps - 2.5 * sigma * (mu - x))
    assert torch.equal(plain, eps)


def test_gradient_of_a_real_classifier_inside_inference_mode_matches_finite_differences():
    net = tiny_classifier().double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t = torch.tensor([10, 700])
    fn = lambda x_t, tt: net.log_prob(x_t, tt, "shape", 1)  # noqa: E731
    with torch.inference_mode():
        g = classifier_gradient(fn, x, t)
    direction = torch.randn_like(x)
    h = 1e-5
    with torch.no_grad():
        fd = (fn(x + h * direction, t) - fn(x - h * direction, t)).sum() / (2 * h)
    assert torch.allclose((g * direction).sum(), fd, rtol=1e-4, atol=1e-8)
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0  # each row has its own gradient


def test_log_prob_is_normalised_and_soft_labels_are_shares():
    net = tiny_classifier()
    x, t = torch.randn(5, 4, 8, 8), torch.randint(0, 1000, (5,))
    with torch.no_grad():
        lp = torch.stack([net.log_prob(x, t, "shape", k) for k in range(3)], 1)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(5))
    y = soft_labels([["circle"], ["circle", "square"], ["triangle", "triangle", "circle"]], SHAPES)
    torch.testing.assert_close(y, torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [1 / 3, 0, 2 / 3]]))


def test_save_load_round_trip_and_errors(tmp_path):
    net = tiny_classifier(seed=3)
    save_classifier(net, tmp_path / "clf", {"model": "x"})
    back = load_classifier(tmp_path / "clf")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(net(x, t)["colour"], back(x, t)["colour"])
    assert back.classes("shape") == SHAPES
    with pytest.raises(UserError, match="no config.json"):
        load_classifier(tmp_path / "missing")
    with pytest.raises(UserError, match="knows circle, square, triangle, red"):
        ClassifierGuide(back, "hexagon", 1.0)
    guide = ClassifierGuide(back, "blue", 1.0)
    assert (guide.head, guide.index) == ("colour", 2)
    with pytest.raises(UserError, match="8-channel latents"):
        ClassifierGuide(tiny_classifier(channels=8), "red", 1.0).check(SCHEDULE, 4)


@pytest.mark.parametrize("sampler,steps", [("ddim", 100), ("ddpm", 200), ("dpm++", 50), ("euler", 100)])
def test_guidance_samples_the_analytic_posterior(sampler, steps):
    """x_0 ~ N(0, 1) per dimension, p(y | x_0) = N(μ; x_0, τ²). Then q(x_0 | x_t) = N(a x_t, 1 − a²) with
    a = √ᾱ_t, so the exact noisy classifier is log p(y | x_t) = −(μ − a x_t)² / (2(τ² + 1 − a²)) + const,
    the exact ε is √(1 − ᾱ_t) x_t, and scale 1 must sample p(x_0 | y) = N(μ/(1 + τ²), τ²/(1 + τ²))."""
    mu, tau2 = 2.0, 0.5
    ab = SCHEDULE.alphas_bar.double()

    def eps(x_t, t):
        return ((1 - ab[t]).sqrt().reshape(-1, 1, 1, 1) * x_t.double()).float()

    def log_prob(x_t, t):
        a = ab[t].sqrt().reshape(-1, 1, 1, 1)
        return (-(mu - a * x_t.double()) ** 2 / (2 * (tau2 + 1 - a**2))).flatten(1).sum(1)

    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(4000, 1, 1, 1, generator=gen)
    with torch.inference_mode():
        x0 = sample(classifier_guidance(eps, log_prob, SCHEDULE, 1.0), SCHEDULE, x_T, sampler=sampler, steps=steps,
                    generator=gen)
    mean, var = mu / (1 + tau2), tau2 / (1 + tau2)
    assert abs(x0.mean().item() - mean) < 0.04, x0.mean()
    assert abs(x0.var().item() - var) < 0.04, x0.var()
    unguided = sample(eps, SCHEDULE, x_T, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert abs(unguided.mean().item()) < 0.06 and abs(unguided.var().item() - 1) < 0.08


def test_composes_with_classifier_free_guidance():
    """Wrapping a CFG denoiser: the guided ε differs from CFG's by exactly the classifier term."""
    torch.manual_seed(0)
    w_c, w_u = torch.randn(4), torch.randn(4)
    model = lambda x, t, c: x * c.reshape(-1, 1, 1, 1)  # noqa: E731  (cond is a per-row scalar)
    cfg = classifier_free_guidance(model, w_c[:2], w_u[:2], 3.0)
    log_prob = lambda x, t: x.flatten(1).sum(1)  # ∇ = 1  # noqa: E731
    x, t = torch.randn(2, 4, 2, 2), torch.tensor([100, 900])
    with torch.inference_mode():
        out = classifier_guidance(cfg, log_prob, SCHEDULE, 0.5)(x, t)
        ref = cfg(x, t)
    sigma = (1 - SCHEDULE.alphas_bar[t]).sqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, ref - 0.5 * sigma * torch.ones_like(x))
    assert math.isfinite(out.sum().item())


def test_guided_pipeline_samples_are_more_likely_under_the_classifier():
    """Through the whole pipeline (the U-Net, the sampler's inference mode, decoding skipped): guiding towards
    a class raises the classifier's probability of that class at the end, and more than guiding elsewhere."""
    from conftest import build_tiny_pipeline

    pipe, net = build_tiny_pipeline(), tiny_classifier()
    t0 = torch.zeros(16, dtype=torch.long)

    def final_log_prob(guided_to, scale, of="circle"):
        lat = pipe.generate_latents("", num_images=16, guidance=1.0, steps=8, sampler="ddim",
                                    guide=ClassifierGuide(net, guided_to, scale))
        with torch.no_grad():
            return net.log_prob(lat, t0, "shape", SHAPES.index(of)).mean().item()

    unguided = final_log_prob("circle", 0.0)
    towards = final_log_prob("circle", 500.0)
    away = final_log_prob("triangle", 500.0)
    assert towards > unguided + 0.05 and towards > away + 0.05, (unguided, towards, away)
