"""How visible the seam of an inpainted region is: gradient energy along the mask border.

A pasted-in region leaves a seam where it meets the kept pixels: a jump in brightness or colour that
shows as extra image gradient along the mask border. :func:`seam_energy` measures the RMS gradient

    G(x; B) = √( mean_{p ∈ B} ‖∇x(p)‖² ),   ∇x(p) = (x(p + e_x) − x(p), x(p + e_y) − x(p)),  over RGB,

in grey levels per pixel over the border band B of the mask (:func:`border_band`: the outermost masked
pixels and ``width`` + 1 px outside them, where the feathered composite blends). :func:`seam_score`
compares the output's G with the same band of a real image — the input itself, or another real image
that should be there (for the shapes world, the rendered target scene): the excess G(out) − G(real) is
the seam. A perfect, seamless result has excess ≈ 0; a hard paste of a flat colour onto a flat background
has excess ≈ |Δ colour| · √(fraction of the band on the jump).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` px with a 3 × 3 square (chessboard distance), edges not wrapped."""
    out = mask.copy()
    for _ in range(steps):
        p = np.pad(out, 1)
        out = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:] | \
            p[:-2, :-2] | p[:-2, 2:] | p[2:, :-2] | p[2:, 2:]
    return out


def border_band(mask: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: masked pixels with an unmasked neighbour, and unmasked pixels within ``width`` + 1 px
    (chessboard) of the mask. ``mask``: (H, W), nonzero / ≥ 0.5 = masked."""
    m = np.asarray(mask) >= (0.5 if np.asarray(mask).dtype.kind == "f" else 128)
    inner = m & ~_erode(m)
    outer = _dilate(m, width + 1) & ~m
    return inner | outer


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask, 1)


def gradient_energy(image: np.ndarray, band: np.ndarray) -> float:
    """G of the module docstring: RMS forward-difference gradient (grey levels / px, RGB summed) over
    ``band``. image: (H, W, 3) uint8 (or float in grey levels)."""
    x = np.asarray(image, np.float64)
    dx = np.zeros_like(x)
    dy = np.zeros_like(x)
    dx[:, :-1] = x[:, 1:] - x[:, :-1]
    dy[:-1] = x[1:] - x[:-1]
    energy = (dx ** 2 + dy ** 2).sum(-1)  # (H, W)
    return float(np.sqrt(energy[band].mean())) if band.any() else 0.0


@dataclass(frozen=True)
class SeamScore:
    """``output`` and ``reference``: G over the border band; ``excess`` = output − reference."""

    output: float
    reference: float

    @property
    def excess(self) -> float:
        return self.output - self.reference


def seam_score(output: np.ndarray, reference: np.ndarray, mask: np.ndarray, width: int) -> SeamScore:
    """The seam of ``output`` (H, W, 3) along ``mask``'s border (feather ``width`` px), against a real
    image ``reference`` (H, W, 3) on the same band."""
    band = border_band(mask, width)
    return SeamScore(gradient_energy(output, band), gradient_energy(reference, band))
