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
import math
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
    from latentdiff.quiet import quiet_libraries

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
    from latentdiff.quiet import quiet_libraries

    try:
        with quiet_libraries():  # a region binder's weights are not diffusers' (loaded next)
            net = ControlNetModel.from_pretrained(str(folder), **({} if dtype is None else {"torch_dtype": dtype}))
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{folder}: cannot load the ControlNet ({str(exc).splitlines()[0]})") from None
    _load_binder(net, folder)
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


def _save_controlnet(net, folder: Path) -> None:
    """diffusers' files, without the local path a network loaded from a folder records (``_name_or_path``)."""
    net.save_pretrained(str(folder), safe_serialization=True)
    config = Path(folder) / "config.json"
    data = json.loads(config.read_text())
    if data.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_layout_controlnet(net, folder: Path, max_boxes: int, info: dict | None = None) -> Path:
    """Write a layout ControlNet (diffusers folder plus ``condition.json``)."""
    _save_controlnet(net, folder)
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


# --- the segmentation map's region binder -------------------------------------------------------------------

BINDER_MARKER = "binder.json"
BINDER_PREFIX = "region_binder."


class RegionBinder(torch.nn.Module):
    """Which words of the caption describe the object at each pixel of a class map.

    The map says where a circle is, the caption says "a red circle at the top left, a blue circle at the
    bottom": binding colours to regions is left to the ControlNet's cross-attention otherwise, which learns
    it slowly (docs/layout.md). Here every object pixel asks the caption's token states directly: its query
    is made from its class (one-hot) and its position (Fourier features of its centre), the keys and values
    from the text encoder's hidden states; the answer, (heads × head_dim) channels, is appended to the
    one-hot map as the ControlNet's input, zero on background pixels and for the null (all-zero) map. It
    starts with no effect: the ControlNet's input convolution gets zero weights for these channels.
    """

    def __init__(self, text_dim: int, num_classes: int = NUM_CLASSES, heads: int = 4, head_dim: int = 32,
                 freqs: int = 4):
        super().__init__()
        self.settings = dict(text_dim=text_dim, num_classes=num_classes, heads=heads, head_dim=head_dim,
                             freqs=freqs)
        self.heads, self.head_dim, self.freqs = heads, head_dim, freqs
        width = heads * head_dim
        self.query = torch.nn.Sequential(torch.nn.Linear(num_classes + 4 * freqs, width), torch.nn.SiLU(),
                                         torch.nn.Linear(width, width))
        self.key, self.value = torch.nn.Linear(text_dim, width), torch.nn.Linear(text_dim, width)

    @property
    def out_channels(self) -> int:
        return self.heads * self.head_dim

    def positions(self, height: int, width: int, like: Tensor) -> Tensor:
        """(4F, H, W): sin and cos of 2^k π x and 2^k π y at the pixel centres, k < F."""
        ys = (torch.arange(height, device=like.device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=like.device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x, y
        angles = grid[None] * (math.pi * 2.0 ** torch.arange(self.freqs, device=like.device))[:, None, None, None]
        return torch.cat([angles.sin(), angles.cos()]).flatten(0, 1).to(like.dtype)  # (4F, H, W)

    def forward(self, onehot: Tensor, context: Tensor) -> Tensor:
        """One-hot map (B, K, H, W) and the caption's hidden states (B, L, D) → (B, heads × head_dim, H, W)."""
        b, _, h, w = onehot.shape
        pos = self.positions(h, w, onehot).expand(b, -1, -1, -1)
        q = self.query(torch.cat([onehot, pos], 1).flatten(2).transpose(1, 2))  # (B, HW, width)
        k, v = self.key(context), self.value(context)  # (B, L, width)
        split = lambda x: x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # noqa: E731  (B, h, ·, d)
        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))  # (B, h, HW, d)
        out = out.transpose(1, 2).flatten(2).transpose(1, 2).unflatten(2, (h, w))  # (B, width, H, W)
        return out * onehot[:, 1:].sum(1, keepdim=True)  # objects only


def with_binder(net, text_dim: int, **settings):
    """A copy of segmentation ControlNet ``net`` (one-hot input) that also reads a :class:`RegionBinder`'s
    channels: the input convolution is widened with zero weights, so the output is unchanged at first."""
    from diffusers import ControlNetModel

    binder = RegionBinder(text_dim, net.config.conditioning_channels, **settings)
    config = {k: v for k, v in net.config.items() if not k.startswith("_")}
    config["conditioning_channels"] = net.config.conditioning_channels + binder.out_channels
    wide = ControlNetModel.from_config(config)
    state = net.state_dict()
    key = "controlnet_cond_embedding.conv_in.weight"
    old = state[key]  # (C_out, K, 3, 3)
    state[key] = torch.cat([old, old.new_zeros(old.shape[0], binder.out_channels, *old.shape[2:])], 1)
    wide.load_state_dict(state)
    wide.region_binder = binder
    from latentdiff.quiet import quiet_libraries

    with quiet_libraries():
        return wide.to(device=next(net.parameters()).device, dtype=next(net.parameters()).dtype)


def input_channels(net) -> int:
    """The channels of the picture a ControlNet is given (its binder's channels are made inside)."""
    binder = getattr(net, "region_binder", None)
    return net.config.conditioning_channels - (binder.out_channels if binder is not None else 0)


def load_fitting_controlnet(folder: str | Path, unet, channels: int, dtype, wrong_channels):
    """A saved ControlNet (:func:`load_controlnet`) that fits ``unet`` (:func:`check_fits`) and takes
    ``channels`` input channels, on the U-Net's device; when it takes n others, ``wrong_channels(n)`` is
    the error raised (the caller words it: a flag, a recipe field)."""
    net = load_controlnet(folder, dtype=dtype)
    check_fits(net, unet, Path(folder))
    if input_channels(net) != channels:
        raise wrong_channels(input_channels(net))
    return net.to(unet.device)


def control_picture(net, picture: Tensor, context: Tensor) -> Tensor:
    """What ``net`` reads: the picture, plus its region binder's channels when it has one."""
    binder = getattr(net, "region_binder", None)
    return picture if binder is None else torch.cat([picture, binder(picture, context)], 1)


def save_segmap_controlnet(net, folder: Path) -> Path:
    """Write a segmentation ControlNet: diffusers' files (a binder's weights inside, under ``region_binder.``)
    plus ``binder.json`` when it has one."""
    _save_controlnet(net, folder)
    binder = getattr(net, "region_binder", None)
    if binder is not None:
        (Path(folder) / BINDER_MARKER).write_text(json.dumps(binder.settings, indent=1))
    return Path(folder)


def _load_binder(net, folder: Path) -> None:
    """Attach the region binder a ControlNet folder holds (``binder.json`` + its weights), if any."""
    from safetensors import safe_open

    marker = folder / BINDER_MARKER
    if not marker.is_file():
        return
    try:
        settings = json.loads(marker.read_text())
        binder = RegionBinder(**settings)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{marker}: not a region binder description ({exc})") from None
    files = sorted(folder.glob("*.safetensors"))
    state = {}
    for f in files:
        with safe_open(str(f), "pt") as s:
            state.update({k[len(BINDER_PREFIX):]: s.get_tensor(k) for k in s.keys() if k.startswith(BINDER_PREFIX)})
    try:
        binder.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{folder}: the region binder's weights do not match {marker} "
                        f"({str(exc).splitlines()[0]})") from None
    p = next(net.parameters())
    net.region_binder = binder.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
