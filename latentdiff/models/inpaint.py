"""An inpainting U-Net from a text-to-image one (diffusers' layout, as Stable Diffusion's inpainting model).

The U-Net's input gains 1 + C channels — the mask at latent size and the latents of the masked image —
after the C channels of x_t. Every weight is copied; the new input channels of ``conv_in`` start at zero,
so before fine-tuning the model computes exactly what the text-to-image model did, whatever the mask.
"""
from __future__ import annotations

import torch


def inpainting_unet(unet):
    """A new ``UNet2DConditionModel`` with ``in_channels = 2·C + 1`` (C = the latent channels) and
    ``unet``'s weights; ``conv_in``'s weights for the extra channels are zero."""
    from diffusers import UNet2DConditionModel

    from latentdiff.quiet import quiet_libraries

    c = unet.config.out_channels
    if unet.config.in_channels != c:
        raise ValueError(f"expected a text-to-image U-Net ({c} input channels), got {unet.config.in_channels}")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    with quiet_libraries():  # diffusers warns on every .to(dtype) of a U-Net
        new = UNet2DConditionModel.from_config({**config, "in_channels": 2 * c + 1}).to(unet.device, unet.dtype)
    state = dict(unet.state_dict())
    w = state.pop("conv_in.weight")  # (out, C, k, k)
    extra = torch.zeros(w.shape[0], c + 1, *w.shape[2:], dtype=w.dtype, device=w.device)
    state["conv_in.weight"] = torch.cat([w, extra], dim=1)  # (out, 2C + 1, k, k): [x_t, mask, masked latents]
    new.load_state_dict(state)
    return new
