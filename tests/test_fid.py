"""Fréchet distances: the formula against closed forms and an independent computation, ~0 for a set with
itself and growing with a perturbation, in the CLIP image tower's space and Inception's."""
import numpy as np
import pytest
import torch

from latentdiff.errors import UserError
from latentdiff.eval.fid import (
    _FID_POOLS,
    ClipImageFeatures,
    InceptionFeatures,
    _branch_pool,
    fd_between,
    feature_stats,
    frechet_distance,
)


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    expected = (mu1 - mu2).pow(2).sum() + (v1.sqrt() - v2.sqrt()).pow(2).sum()  # 5 + 1 + 1 + 0
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(float(expected), abs=1e-9)


def test_matches_an_independent_eigenvalue_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64), b @ b.T
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    # Tr((Σ₁Σ₂)^½) = Σ √λ_i(Σ₁Σ₂): Σ₁Σ₂ is similar to a PSD matrix, so its eigenvalues are real and ≥ 0.
    tr = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    expected = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(expected), rel=1e-8)


def test_sample_estimate_converges_to_the_population_distance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 4, generator=g)
    y = torch.randn(20000, 4, generator=g) * 2 + torch.tensor([1.0, 0, 0, 0])  # FD = 1 + 4·(2 − 1)² = 5
    assert fd_between(x, y) == pytest.approx(5.0, rel=0.03)


def _images(n, seed):
    from latentdiff.data.shapes import render, sample_scene

    rng = np.random.default_rng(seed)
    return np.stack([render(sample_scene(rng))[0] for _ in range(n)])  # (n, 64, 64, 3) uint8


def _perturbed(images, amount, seed=0):
    noise = np.random.default_rng(seed).normal(0, 255 * amount, images.shape)
    return np.clip(images.astype(float) + noise, 0, 255).astype(np.uint8)


def _check_self_zero_and_growth(features, n=48):
    real = _images(n, 0)
    f = features(real)
    scale = float(feature_stats(f)[1].trace())  # total variance of the set: the distances' natural unit
    assert fd_between(f, f) < 1e-6 * scale
    dists = [fd_between(f, features(_perturbed(real, amount))) for amount in (0.05, 0.2, 0.5)]
    assert dists[0] > 1e-4 * scale and dists[0] < dists[1] < dists[2], dists


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from latentdiff.models.factory import ImageTowerConfig, TextConfig, build_clip

    torch.manual_seed(0)
    clip = build_clip(TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, projection_dim=32),
                      ImageTowerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=16,
                                       image_size=32))
    folder = tmp_path_factory.mktemp("clip") / "clip"
    clip.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_clip_tower_features_self_distance_and_perturbation(clip_dir):
    features = ClipImageFeatures(clip_dir)
    assert features(_images(3, 5)).shape == (3, 32)  # 64×64 images resized to the tower's 32
    _check_self_zero_and_growth(features)


def test_clip_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no CLIP image tower here"):
        ClipImageFeatures(tmp_path)


def test_fid_pools_replace_only_the_pooling_branch():
    """Mixed_5b-style blocks average-pool without counting padding; Mixed_7c max-pools; the rest is
    torchvision's block as it is."""
    from torchvision.models.inception import InceptionA, InceptionE

    torch.manual_seed(0)
    block = InceptionA(8, pool_features=4).eval()
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad(), _branch_pool(_FID_POOLS["Mixed_5b"]):
        out = block(x)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    with torch.no_grad():
        assert torch.allclose(out[:, -4:], block.branch_pool(pooled))
        assert torch.allclose(out[:, :-4], block(x)[:, :-4])  # other branches unchanged
        assert not torch.allclose(out[:, -4:], block(x)[:, -4:])  # and outside the context, torchvision's pool
    block_e = InceptionE(8).eval()
    with torch.no_grad(), _branch_pool(_FID_POOLS["Mixed_7c"]):
        out = block_e(x)
    with torch.no_grad():
        assert torch.allclose(out[:, -192:], block_e.branch_pool(torch.nn.functional.max_pool2d(x, 3, 1, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("classes", [1008, 1000])
def test_inception_weights_file_self_distance_and_perturbation(tmp_path, classes):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, num_classes=classes, init_weights=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "inception.safetensors"))
    features = InceptionFeatures(tmp_path / "inception.safetensors")
    assert features.fid == (classes == 1008)
    assert features(_images(2, 3)).shape == (2, 2048)
    _check_self_zero_and_growth(features, n=8)


def test_inception_weights_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        InceptionFeatures(tmp_path / "nope.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not an Inception-v3 state dict"):
        InceptionFeatures(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="does not fit torchvision's Inception-v3"):
        InceptionFeatures(tmp_path / "partial.pth")
