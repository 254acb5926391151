"""Pixel conversions shared by inference, training and the tools: uint8 pictures ↔ model tensors in [−1, 1],
and a PNG grid of pictures. (``Pipeline.decode_latents`` keeps its own rounding, diffusers' image
processor's, so its output matches diffusers bit for bit.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 → float in [−1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def to_unit_hwc(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8, channels last as pictures are stored → (B, 3, H, W) float in [−1, 1]."""
    return to_unit(torch.as_tensor(np.array(images_uint8, np.uint8)).permute(0, 3, 1, 2))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [−1, 1] → (B, H, W, 3) uint8 (values outside [−1, 1] are clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, rows: int, path: Path, scale: int = 2) -> None:
    """images (N, H, W, 3) uint8 → one PNG grid with ``rows`` rows, each picture scaled up ``scale``×."""
    n, h, w, _ = images.shape
    cols = int(np.ceil(n / rows))
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)
