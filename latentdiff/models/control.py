"""ControlNets for the segmentation map and for the layout.

A segmentation-map ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"): a trainable copy of the U-Net's encoder and middle block, initialised from the U-Net (diffusers'
``ControlNetModel.from_unet``), whose outputs pass through zero-initialised convolutions and are added to
the frozen U-Net's skip connections: at the start of training the U-Net's output is unchanged.

Its input c_f is the one-hot class map at pixel resolution, (B, K, H, W) with K = 5 classes of the shapes
contract (0 background, 1 circle, 2 square, 3 triangle, 4 star); the all-zero map is the null condition
used by conditioning dropout and classifier-free guidance. The conditioning encoder downsamples by the
VAE's factor f (log2 f stride-2 convolutions), so the map lands on the latent grid.

The layout ControlNet is the same network fed a picture of the layout instead (:func:`rasterise_layout`):
D + 1 channels, where every pixel inside box i holds e_i, the unit-RMS pooled text embedding of phrase i
(GLIGEN's phrase feature, :func:`latentdiff.models.gligen.phrase_embeddings`), the mean where boxes
overlap, and the last channel is 1 inside any box. The all-zero picture is the null layout. Unlike
GLIGEN's tokens, which must learn through attention which pixels lie in which box, the picture is already
aligned with the image, so the network learns placement in a few hundred steps (docs/layout.md). Its
folder holds ``condition.json`` (``{"condition": "layout", ...}``) beside diffusers' files.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from latentdiff.errors import UserError

NUM_CLASSES = 5  # background, circle, square, triangle, star (docs/shapes.md)
CLASS_NAMES = ("background", "circle", "square", "triangle", "star")


def controlnet_from_unet(unet, vae_scale_factor: int, channels_in: int = NUM_CLASSES):
    """A ``ControlNetModel`` copied from ``unet`` taking a (B, channels_in, H, W) input picture (the one-hot
    map, or a rasterised layout with D + 1 channels)."""
    import math

    from diffusers import ControlNetModel

    levels = int(math.log2(vae_scale_factor))
    if 2 ** levels != vae_scale_factor:
        raise UserError(f"the VAE's downscale factor {vae_scale_factor} is not a power of two")
    channels = tuple(16 * 2 ** i for i in range(levels + 1))  # f = 4: (16, 32, 64); f = 8: (16, 32, 64, 128)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels,
                                    conditioning_channels=channels_in)
    from latentdiff.interop import quiet_libraries

    with quiet_libraries():
        return net.to(device=unet.device, dtype=unet.dtype)


def one_hot(segmap: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Class indices (B, H, W) integer → one-hot (B, K, H, W) float32."""
    return torch.nn.functional.one_hot(segmap.long(), num_classes).permute(0, 3, 1, 2).float()


def load_controlnet(folder: str | Path, dtype=None):
    """A saved ControlNet folder (diffusers ``save_pretrained``), checked; returns the model in eval mode,
    in ``dtype`` when given (else the stored one)."""
    from diffusers import ControlNetModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a ControlNet folder (no config.json)")
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("_class_name") != "ControlNetModel":
        raise UserError(f"{folder}/config.json: _class_name is {cfg.get('_class_name')!r}, expected ControlNetModel")
    try:
        net = ControlNetModel.from_pretrained(str(folder), **({} if dtype is None else {"torch_dtype": dtype}))
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{folder}: cannot load the ControlNet ({str(exc).splitlines()[0]})") from None
    return net.eval().requires_grad_(False)


def check_fits(controlnet, unet, folder: Path) -> None:
    """The ControlNet must have the U-Net's encoder widths and cross-attention size."""
    for key in ("block_out_channels", "cross_attention_dim"):
        a, b = controlnet.config.get(key), unet.config.get(key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise UserError(f"{folder}: ControlNet {key} {a} does not fit the model's U-Net ({b})")


# --- the layout ControlNet ----------------------------------------------------------------------------------

LAYOUT_MARKER = "condition.json"


def unit_rms(embeddings: Tensor) -> Tensor:
    """Each phrase embedding (…, D) scaled to root-mean-square 1, so the picture's channels are O(1)."""
    return embeddings / embeddings.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-6)


def rasterise_layout(boxes: Tensor, embeddings: Tensor, mask: Tensor, height: int, width: int) -> Tensor:
    """The layout ControlNet's input: boxes (B, N, 4) xyxy in [0, 1], phrase embeddings (B, N, D) (already
    :func:`unit_rms`), used slots (B, N) → (B, D + 1, height, width). A pixel belongs to a box when its
    centre lies inside it (x0 ≤ x < x1); it holds the mean embedding of its boxes, and 1 in the last channel."""
    cy = (torch.arange(height, dtype=torch.float32, device=boxes.device) + 0.5) / height  # pixel centres
    cx = (torch.arange(width, dtype=torch.float32, device=boxes.device) + 0.5) / width
    in_y = (cy >= boxes[..., 1:2]) & (cy < boxes[..., 3:4])  # (B, N, H)
    in_x = (cx >= boxes[..., 0:1]) & (cx < boxes[..., 2:3])  # (B, N, W)
    m = (in_y[..., :, None] & in_x[..., None, :]).float() * mask[..., None, None].float()  # (B, N, H, W)
    count = m.sum(1, keepdim=True)  # (B, 1, H, W)
    feat = torch.einsum("bnhw,bnd->bdhw", m, embeddings.float()) / count.clamp(min=1)
    return torch.cat([feat, count.clamp(max=1)], dim=1)


def save_layout_controlnet(net, folder: Path, max_boxes: int, info: dict | None = None) -> Path:
    """Write a layout ControlNet (diffusers folder plus ``condition.json``)."""
    net.save_pretrained(str(folder), safe_serialization=True)
    (Path(folder) / LAYOUT_MARKER).write_text(json.dumps({"condition": "layout", "max_boxes": max_boxes,
                                                          **(info or {})}, indent=1))
    return Path(folder)


def layout_controlnet_config(folder: str | Path) -> dict | None:
    """The ``condition.json`` of a layout ControlNet folder, or None when ``folder`` is not one."""
    marker = Path(folder) / LAYOUT_MARKER
    if not marker.is_file():
        return None
    try:
        cfg = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise UserError(f"{marker}: not a readable JSON file") from None
    return cfg if isinstance(cfg, dict) and cfg.get("condition") == "layout" else None
