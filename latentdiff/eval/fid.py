"""Fréchet distances between sets of images in a learned feature space.

The Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets (Dowson & Landau 1982;
FID: Heusel et al. 2017, eq. 6):

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½})

Tr((Σ₁Σ₂)^{½}) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
Σ₁^{½} Σ₂ Σ₁^{½} (``torch.linalg.eigh``, float64), so no general matrix square root is needed.

Feature extractors (each maps uint8 images (N, H, W, 3) to features (N, D)):

* :class:`ClipImageFeatures` — the image tower of the model's own CLIP (trained contrastively on the
  shapes world with the text encoder; ``MODEL/clip``): ``image_embeds``, the projection into the
  joint image–text space (D = projection_dim). Its Fréchet distance is "FD-CLIP", comparable only
  between evaluations that use the same CLIP weights.
* :class:`InceptionFeatures` — Inception-v3 pool3 features (D = 2048) from a local weights file
  (``--inception-weights``; nothing can be downloaded here). With the TF-ported FID weights of
  pytorch-fid (``pt_inception-2015-12-05-*.pth``, 1008 classes) the network is the FID Inception of
  Heusel et al. (average pools that exclude padding, a max pool in the last block) and the number is
  the standard FID; with torchvision's ImageNet weights (1000 classes) it is an Inception FD that is
  close to, but not the same as, standard FID. The report says which.
"""
from __future__ import annotations

import contextlib
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latentdiff.errors import UserError

# --- the distance -------------------------------------------------------------------------------------

def feature_stats(features: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    f = torch.as_tensor(features).double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix (eigenvalues clamped at 0)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂) (module docstring), computed in float64."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(v).double() for v in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1  # Σ₁^{½} Σ₂ Σ₁^{½}, symmetric PSD
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt
    return float(d2.clamp(min=0))


def fd_between(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Fréchet distance between two feature sets (N₁, D) and (N₂, D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def _as_nchw(images: np.ndarray | list) -> Tensor:
    """uint8 images (N, H, W, 3) (or a list of PIL images / arrays) → float (N, 3, H, W) in [0, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


# --- the CLIP image tower -----------------------------------------------------------------------------

class ClipImageFeatures:
    """``image_embeds`` of a CLIP image tower saved as a transformers ``CLIPModel`` folder."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", batch: int = 64,
                 label: str | None = None):
        """``label``: how the feature space's name shows the folder (default: as given)."""
        from transformers import CLIPVisionModelWithProjection

        from latentdiff.quiet import quiet_libraries

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: no CLIP image tower here (expected a CLIPModel folder with config.json, "
                            f"as training writes to MODEL/clip)")
        try:
            with quiet_libraries():
                self.model = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True,
                                                                           dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise UserError(f"{folder}: cannot load the CLIP image tower ({str(exc).splitlines()[0]})") from None
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.size, self.device, self.batch = int(self.model.config.image_size), device, batch
        self.name = f"CLIP image tower ({label or folder}), image_embeds, D={self.model.config.projection_dim}"

    @torch.no_grad()
    def __call__(self, images) -> Tensor:
        x = _as_nchw(images)
        out = []
        for chunk in x.split(self.batch):
            if chunk.shape[-1] != self.size or chunk.shape[-2] != self.size:
                chunk = torch.nn.functional.interpolate(chunk, size=(self.size, self.size), mode="bilinear",
                                                        align_corners=False, antialias=True)
            pixels = (chunk * 2 - 1).to(self.device)  # [-1, 1], as the CLIP stage trained it
            out.append(self.model(pixel_values=pixels).image_embeds.float().cpu())
        return torch.cat(out)  # (N, D)


# --- Inception-v3 -------------------------------------------------------------------------------------

_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2")
_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c")


def _avg_pool_excluding_pad(x, kernel_size, stride=None, padding=0, *args, **kwargs):
    return torch.nn.functional.avg_pool2d(x, kernel_size, stride, padding, count_include_pad=False)


def _max_pool(x, kernel_size, stride=None, padding=0, *args, **kwargs):
    return torch.nn.functional.max_pool2d(x, kernel_size, stride, padding)


# The TF Inception of FID pools differently from torchvision's in these blocks' pooling branch.
_FID_POOLS = {**{name: _avg_pool_excluding_pad for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b",
                                                            "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7b")},
              "Mixed_7c": _max_pool}


@contextlib.contextmanager
def _branch_pool(fn):
    """Within the block, torchvision's Inception blocks call ``fn`` where they call ``F.avg_pool2d`` (their
    pooling branch); the blocks' weights and every other operation are unchanged."""
    import torchvision.models.inception as tv

    if fn is None:
        yield
        return
    saved = tv.F
    tv.F = types.SimpleNamespace(**{k: getattr(saved, k) for k in dir(saved) if not k.startswith("__")})
    tv.F.avg_pool2d = fn
    try:
        yield
    finally:
        tv.F = saved


def load_inception_state(path: str | Path) -> dict[str, Tensor]:
    """An Inception-v3 state dict from a .safetensors file, or a .pth/.pt read with ``weights_only=True``
    (tensors only, no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--inception-weights {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the user's input problem)
        raise UserError(f"--inception-weights {path}: cannot read ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise UserError(f"--inception-weights {path}: not an Inception-v3 state dict (no fc.weight)")
    return state


class InceptionFeatures:
    """Inception-v3 pool3 features (N, 2048) from a local weights file (module docstring)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch: int = 32):
        from torchvision.models import inception_v3

        state = load_inception_state(path)
        classes = int(state["fc.weight"].shape[0])
        aux = any(k.startswith("AuxLogits.") for k in state)
        net = inception_v3(weights=None, aux_logits=aux, num_classes=classes, init_weights=False, transform_input=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise UserError(f"--inception-weights {path}: does not fit torchvision's Inception-v3 "
                            f"(missing {len(missing)} keys, e.g. {(missing or unexpected)[0]}; "
                            f"unexpected {len(unexpected)})")
        self.net = net.to(device).eval().requires_grad_(False)
        self.fid = classes == 1008  # the TF-ported FID weights
        self.device, self.batch = device, batch
        self.name = ("Inception-v3 pool3, FID weights (standard FID)" if self.fid else
                     f"Inception-v3 pool3, torchvision-style weights ({classes} classes; an Inception FD, "
                     f"not the standard FID)")

    def _input(self, x: Tensor) -> Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.fid:
            return x * 2 - 1  # pytorch-fid: [0, 1] → [−1, 1]
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
        return (x - mean) / std  # ImageNet normalisation of torchvision's weights

    @torch.no_grad()
    def __call__(self, images) -> Tensor:
        out = []
        for chunk in _as_nchw(images).split(self.batch):
            x = self._input(chunk).to(self.device)  # (B, 3, 299, 299)
            for name in _STEM:
                x = getattr(self.net, name)(x)
            for name in _MIXED:
                with _branch_pool(_FID_POOLS.get(name) if self.fid else None):
                    x = getattr(self.net, name)(x)
            out.append(x.mean(dim=(2, 3)).float().cpu())  # (B, 2048): global average pool = pool3
        return torch.cat(out)
