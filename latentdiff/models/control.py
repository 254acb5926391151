"""A segmentation-map ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"): a trainable copy of the U-Net's encoder and middle block, initialised from the U-Net (diffusers'
``ControlNetModel.from_unet``), whose outputs pass through zero-initialised convolutions and are added to
the frozen U-Net's skip connections: at the start of training the U-Net's output is unchanged.

Its input c_f is the one-hot class map at pixel resolution, (B, K, H, W) with K = 5 classes of the shapes
contract (0 background, 1 circle, 2 square, 3 triangle, 4 star); the all-zero map is the null condition
used by conditioning dropout and classifier-free guidance. The conditioning encoder downsamples by the
VAE's factor f (log2 f stride-2 convolutions), so the map lands on the latent grid.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from latentdiff.errors import UserError

NUM_CLASSES = 5  # background, circle, square, triangle, star (docs/shapes.md)
CLASS_NAMES = ("background", "circle", "square", "triangle", "star")


def controlnet_from_unet(unet, vae_scale_factor: int, num_classes: int = NUM_CLASSES):
    """A ``ControlNetModel`` copied from ``unet`` taking a (B, num_classes, H, W) one-hot map."""
    import math

    from diffusers import ControlNetModel

    levels = int(math.log2(vae_scale_factor))
    if 2 ** levels != vae_scale_factor:
        raise UserError(f"the VAE's downscale factor {vae_scale_factor} is not a power of two")
    channels = tuple(16 * 2 ** i for i in range(levels + 1))  # f = 4: (16, 32, 64); f = 8: (16, 32, 64, 128)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels,
                                    conditioning_channels=num_classes)
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
