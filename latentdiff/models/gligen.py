"""GLIGEN layout conditioning (Li et al. 2023, "GLIGEN: Open-Set Grounded Text-to-Image Generation").

Grounding tokens h_i = MLP([e_i, Fourier(b_i)]) (diffusers' ``GLIGENTextBoundingboxProjection``, the U-Net's
``position_net``: e_i the pooled text embedding of phrase i, b_i its box in [0, 1]) enter every transformer
block through a gated self-attention layer (diffusers' ``GatedSelfAttentionDense``, ``fuser``):

    v ← v + tanh(γ) · TS(SelfAttn([v, h]))      (GLIGEN eq. 8; γ starts at 0)

so a freshly converted U-Net computes exactly what the base U-Net computes. As in GLIGEN, the base weights
stay frozen and only the gated layers and the position net are trained; they are saved alone
(``MODEL/gligen/``: ``gligen.safetensors`` + ``config.json``), so they attach to any U-Net of the same
architecture, the default model's or a fine-tuned one.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from latentdiff.errors import UserError
from latentdiff.models.text import tokenize

WEIGHTS = "gligen.safetensors"
CONFIG = "config.json"
MAX_BOXES = 10  # grounding slots per image


def is_gligen_param(name: str) -> bool:
    """Whether a U-Net parameter belongs to the layers GLIGEN adds (trained; the rest stays frozen)."""
    return ".fuser." in name or name.startswith("position_net.")


def gated_unet(unet, gate_init: float = 0.0):
    """A copy of ``unet`` with GLIGEN's gated self-attention and position net (``attention_type="gated"``),
    the base weights loaded and frozen, the new layers trainable. Every gate α (a layer adds tanh(α) × its
    output) starts at ``gate_init``; at GLIGEN's 0 the output is ``unet``'s until trained."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet.config.cross_attention_dim, int):
        raise UserError("layout conditioning needs a U-Net with one cross_attention_dim")
    gated = UNet2DConditionModel.from_config(unet.config, attention_type="gated")
    missing, unexpected = gated.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not is_gligen_param(k) for k in missing):
        raise UserError(f"cannot add gated attention to this U-Net (unexpected keys {unexpected[:3]})")
    from latentdiff.quiet import quiet_libraries

    with quiet_libraries():
        gated.to(device=unet.device, dtype=unet.dtype)
    for name, p in gated.named_parameters():
        p.requires_grad_(is_gligen_param(name))
    from diffusers.models.attention import GatedSelfAttentionDense

    with torch.no_grad():
        for layer in gated.modules():
            if isinstance(layer, GatedSelfAttentionDense):
                layer.alpha_attn.fill_(gate_init)
                layer.alpha_dense.fill_(gate_init)
    return gated


@torch.no_grad()
def phrase_embeddings(text_encoder, tokenizer, phrases: list[str]) -> Tensor:
    """e_i: the text encoder's pooled output (the final-norm hidden state at the end-of-text token) of each
    phrase, (P, D) float32 — GLIGEN's phrase feature."""
    if not phrases:
        return torch.zeros(0, text_encoder.config.hidden_size)
    out = text_encoder(tokenize(tokenizer, text_encoder, phrases).input_ids.to(text_encoder.device))
    return out.pooler_output.float()  # (P, D)


def save_gligen(unet, folder: Path, info: dict | None = None) -> Path:
    """Write the gated layers and position net of ``unet`` to ``folder`` (safetensors + config.json)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items() if is_gligen_param(k)}
    save_file(state, str(folder / WEIGHTS))
    cfg = {"max_boxes": MAX_BOXES, "cross_attention_dim": unet.config.cross_attention_dim,
           "block_out_channels": list(unet.config.block_out_channels), **(info or {})}
    (folder / CONFIG).write_text(json.dumps(cfg, indent=1))
    return folder


def load_gligen(unet, folder: str | Path):
    """``unet`` turned gated (:func:`gated_unet`) with the layers saved in ``folder``; returns (unet, config).
    A folder that does not fit the U-Net is a one-line :class:`UserError` naming it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise UserError(f"{folder}: not a layout (GLIGEN) checkpoint: expected {WEIGHTS} and {CONFIG}")
    cfg = json.loads((folder / CONFIG).read_text())
    gated = gated_unet(unet)
    state = load_file(str(folder / WEIGHTS))
    own = {k: v for k, v in gated.state_dict().items() if is_gligen_param(k)}
    bad = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise UserError(f"{folder / WEIGHTS}: does not fit this model's U-Net (first mismatch: {bad[0]})")
    gated.load_state_dict(state, strict=False)
    gated.eval().requires_grad_(False)
    return gated, cfg


def grounding_tensors(entries: list[list[tuple[Tensor, tuple[float, float, float, float]]]], dim: int,
                      slots: int = MAX_BOXES) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-image lists of (phrase embedding (D,), normalised box) to ``slots``: boxes (B, N, 4),
    embeddings (B, N, D), mask (B, N)."""
    b = len(entries)
    boxes, emb, mask = torch.zeros(b, slots, 4), torch.zeros(b, slots, dim), torch.zeros(b, slots)
    for i, items in enumerate(entries):
        for j, (e, box) in enumerate(items[:slots]):
            boxes[i, j], emb[i, j], mask[i, j] = torch.tensor(box, dtype=torch.float32), e, 1.0
    return boxes, emb, mask
