"""Conditions as typed data, and the one place they are routed into a U-Net.

A :class:`Conditioning` carries every route a latent U-Net can take, batched along dim 0 like x_t:

* ``context`` — cross-attention tokens, (B, L, D): the text encoder's last hidden state (Stable
  Diffusion's ``encoder_hidden_states``).
* ``concat`` — extra input channels concatenated to x_t, (B, C', H, W): for example an inpainting mask and
  the masked image latents, or a segmentation map. ``None`` when the model takes only x_t.

* ``grounding`` — layout tokens for GLIGEN's gated self-attention (:class:`Grounding`: boxes, phrase
  embeddings and a mask of which of the N slots are used). ``None`` when the U-Net has no gated layers.
* ``control`` — a ControlNet's input image, (B, C_c, H, W) at pixel resolution: for segmentation the
  one-hot class map (all zeros is the null map). ``None`` when no ControlNet is attached.
* ``layout_control`` — the layout ControlNet's input, (B, D + 1, H, W): the layout as a picture
  (:func:`latentdiff.models.control.rasterise_layout`; all zeros is the null layout). ``None`` when the
  layout goes through GLIGEN's ``grounding`` instead, or there is none.

New routes are new typed fields, never a string switch. Each route has a null value ∅ (:meth:`Conditioning.null`);
:func:`drop_conditions`, the condition dropout of every training stage, empties routes to it per sample.
:func:`unet_model` turns a U-Net into the ``model(x_t, t, cond) -> ε̂`` that
:func:`latentdiff.diffusion.guidance.classifier_free_guidance` wraps into a denoiser; the guidance module
batches conditions with ``type(cond).cat``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

from latentdiff.diffusion.schedule import Schedule, prediction_to_eps
from latentdiff.limits import Limits
from latentdiff.models.control import control_picture
from latentdiff.models.text import encode_prompt


def _cat(values: list):
    first = values[0]
    return type(first).cat(values) if hasattr(type(first), "cat") else torch.cat(values, dim=0)


def _map(value, fn):
    return value.map(fn) if hasattr(value, "map") else fn(value)


@dataclass(frozen=True)
class Grounding:
    """GLIGEN grounding tokens (Li et al. 2023): N slots per image, each a box and a phrase embedding.

    The U-Net's position net turns each used slot into a token h_i = MLP([e_i, Fourier(b_i)]); unused slots
    (``mask`` 0) get its learnt null features, so an all-zero mask is the null condition ∅ of the route.
    """

    boxes: Tensor  # (B, N, 4) xyxy in [0, 1]
    embeddings: Tensor  # (B, N, D) pooled text-encoder embedding of each phrase
    mask: Tensor  # (B, N) 1 for a used slot, 0 for padding

    @classmethod
    def cat(cls, parts: list["Grounding"]) -> "Grounding":
        return cls(*(torch.cat([getattr(p, f.name) for p in parts], dim=0) for f in fields(cls)))

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Grounding":
        return Grounding(*(fn(getattr(self, f.name)) for f in fields(self)))

    def null(self) -> "Grounding":
        """The same slots with every one unused (the route's null condition)."""
        return replace(self, mask=torch.zeros_like(self.mask))


@dataclass(frozen=True)
class Conditioning:
    """The conditions of a batch of images; every field is batched along dim 0 (or ``None``)."""

    context: Tensor  # (B, L, D) cross-attention tokens
    concat: Tensor | None = None  # (B, C', H, W) extra input channels, or None
    grounding: Grounding | None = None  # GLIGEN layout tokens, or None
    control: Tensor | None = None  # (B, C_c, H, W) ControlNet input (one-hot segmentation map), or None
    layout_control: Tensor | None = None  # (B, D + 1, H, W) layout ControlNet input (rasterised boxes), or None

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]

    @classmethod
    def cat(cls, conds: list["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch dimension (used to run the conditional and unconditional passes
        of classifier-free guidance as one forward). A route must be present in all parts or in none."""
        out = {}
        for f in fields(cls):
            values = [getattr(c, f.name) for c in conds]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                raise ValueError(f"Conditioning.cat: route '{f.name}' is set in some parts and not in others")
            out[f.name] = _cat(values) if all(present) else None
        return cls(**out)

    def index(self, idx: Tensor | list[int]) -> "Conditioning":
        """Rows ``idx`` of every route (repeats allowed): expand per-prompt conditions to per-image ones."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.map(lambda v: v[idx.to(v.device)])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Conditioning":
        return self.map(lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Conditioning":
        """Apply ``fn`` to every route that is set."""
        return replace(self, **{f.name: _map(getattr(self, f.name), fn) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def null(self, context: Tensor) -> "Conditioning":
        """The null condition ∅ of every route that is set: ``context`` for the text (the empty prompt's
        encoding, or its token ids), no used grounding slot, all-zero control pictures. ``concat`` is kept:
        an inpainting U-Net's mask and masked image are inputs, not a condition guidance or dropout removes."""
        zeros = lambda v: None if v is None else torch.zeros_like(v)  # noqa: E731
        return replace(self, context=context, grounding=None if self.grounding is None else self.grounding.null(),
                       control=zeros(self.control), layout_control=zeros(self.layout_control))


def _select(drop: Tensor, null, value):
    """Rows of ``value`` where ``drop`` (B,) is False, of ``null`` (a row or a batch) where it is True."""
    if isinstance(value, Grounding):
        return Grounding(*(_select(drop, getattr(null, f.name), getattr(value, f.name)) for f in fields(value)))
    d = drop.to(value.device).view(-1, *[1] * (value.ndim - 1))  # (B, 1, ...)
    return torch.where(d, null.to(value.device), value)


def drop_conditions(cond: Conditioning, null: Conditioning, p: dict[str, float],
                    generator: torch.Generator) -> tuple[Conditioning, dict[str, Tensor]]:
    """Condition dropout, the training half of classifier-free guidance (Ho & Salimans 2022, "Classifier-Free
    Diffusion Guidance", Algorithm 1: c ← ∅ with probability p_uncond): each sample's route ``name`` is
    replaced by its null value (``null``'s, usually :meth:`Conditioning.null`) with probability ``p[name]``,
    independently per sample and route, so one network learns ε(x_t, c) and ε(x_t, ∅) for every branch the
    sampler's guidance asks for. Routes not in ``p`` are kept.

    The one dropout of every training stage. The draws are one ``torch.rand(B)`` per route, in the order of
    ``p``, by ``generator`` on its device (u < p drops), drawn even when p is 0 — so a seeded run's random
    stream does not depend on the rates. Pure: returns the new conditions and each route's drop mask (B,) bool.
    """
    b, routes = cond.batch_size, {}
    masks = {name: torch.rand(b, generator=generator, device=generator.device) < prob for name, prob in p.items()}
    for name, drop in masks.items():
        routes[name] = _select(drop, getattr(null, name), getattr(cond, name))
    return replace(cond, **routes), masks


def text_conditioning(tokenizer, text_encoder, prompts: list[str], limits: Limits | None = None) -> Conditioning:
    """The text conditioner: one :class:`Conditioning` row per prompt, its ``context`` the prompt's encoding
    (:func:`latentdiff.models.text.encode_prompt`); each distinct text is encoded once."""
    unique = list(dict.fromkeys(prompts))
    ctx = encode_prompt(tokenizer, text_encoder, unique, limits)  # (U, 77, D)
    return Conditioning(context=ctx).index([unique.index(p) for p in prompts])


def unet_model(unet, schedule: Schedule, prediction: str | None = None, dtype: torch.dtype | None = None,
               controlnet=None, layout_controlnet=None) -> Callable[[Tensor, Tensor, Conditioning], Tensor]:
    """``model(x_t (B,C,H,W), t (B,), cond) -> ε̂ (B,C,H,W)`` for a diffusers ``UNet2DConditionModel``.

    Routes: ``cond.concat`` is concatenated to x_t along channels, ``cond.context`` goes to
    cross-attention, ``cond.grounding`` to the gated self-attention of a U-Net built with
    ``attention_type="gated"`` (diffusers' ``cross_attention_kwargs={"gligen": ...}``), and ``cond.control``
    through ``controlnet`` (a diffusers ``ControlNetModel``) whose residuals are added to the U-Net's skip
    connections and middle block, and ``cond.layout_control`` likewise through ``layout_controlnet`` (the
    residuals of both add up, as in diffusers' ``MultiControlNetModel``). The network runs in its own dtype
    (``dtype``, looked up when not given); inputs are
    cast at this boundary and the output comes back as float32. A v- or x_0-predicting network is
    converted to ε̂ with the schedule (``latentdiff.diffusion.schedule.prediction_to_eps``), so samplers
    always see an ε-denoiser.
    """
    prediction = prediction or schedule.prediction
    net_dtype = dtype or unet.dtype

    def model(x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        out = network_output(unet, controlnet, x_t, t, cond, net_dtype, layout_controlnet).float()  # (B, C, H, W)
        return prediction_to_eps(schedule, x_t, t, out, prediction) if prediction != "epsilon" else out

    return model


def network_output(unet, controlnet, x_t: Tensor, t: Tensor, cond: Conditioning, dtype: torch.dtype,
                   layout_controlnet=None) -> Tensor:
    """The U-Net's raw output (in its prediction type and dtype) with every route of ``cond`` applied."""
    x_in = x_t if cond.concat is None else torch.cat([x_t, cond.concat.to(x_t)], dim=1)  # (B, C+C', H, W)
    ctx = cond.context.to(dtype)
    kwargs = unet_kwargs(cond, dtype)
    down, mid = None, None
    for picture, net, what in ((cond.control, controlnet, "a control condition"),
                               (cond.layout_control, layout_controlnet, "a layout picture")):
        if picture is None:
            continue
        if net is None:
            raise ValueError(f"{what} was given but no ControlNet for it is attached")
        picture = control_picture(net, picture.to(dtype), ctx)  # + a region binder's channels
        d, m = net(x_t.to(dtype), t, encoder_hidden_states=ctx, controlnet_cond=picture, return_dict=False)
        down, mid = (d, m) if down is None else ([a + b for a, b in zip(down, d)], mid + m)
    if down is not None:
        kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
    return unet(x_in.to(dtype), t, encoder_hidden_states=ctx, return_dict=False, **kwargs)[0]


class ConditionedUNet(torch.nn.Module):
    """A U-Net with optional ControlNets (segmentation, layout) as one module (what a training loop optimises
    and DDP wraps): ``forward(x_t, t, cond)`` is the raw network output with every route of ``cond``."""

    def __init__(self, unet, controlnet=None, layout_controlnet=None):
        super().__init__()
        self.unet, self.controlnet, self.layout_controlnet = unet, controlnet, layout_controlnet

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return network_output(self.unet, self.controlnet, x_t, t, cond, x_t.dtype, self.layout_controlnet)


def unet_kwargs(cond: Conditioning, dtype: torch.dtype) -> dict:
    """The U-Net keyword arguments of the grounding route (GLIGEN), empty when it is not set."""
    g = cond.grounding
    if g is None:
        return {}
    gligen = {"boxes": g.boxes.to(dtype), "positive_embeddings": g.embeddings.to(dtype), "masks": g.mask.to(dtype)}
    return {"cross_attention_kwargs": {"gligen": gligen}}
