"""Build the model components from typed configs: diffusers' ``AutoencoderKL`` and
``UNet2DConditionModel``, transformers' ``CLIPTextModel`` (and a small ``CLIPModel`` whose image tower is
kept for evaluation and guidance). The configs are frozen dataclasses mirrored by the YAML recipes.
"""
from __future__ import annotations

from dataclasses import dataclass

from latentdiff.models.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, VOCAB_SIZE


@dataclass(frozen=True)
class VAEConfig:
    """``AutoencoderKL``: each extra block halves the resolution, so f = 2^(len(channels) − 1)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    sample_size: int = 64

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class TextConfig:
    """A small CLIP text transformer with CLIP's real vocabulary (49,408 tokens). ``max_length`` is the
    number of positions (CLIP's 77; captions of the shapes world fit in 32, which costs 2.4× less)."""

    hidden_size: int = 128
    max_length: int = MAX_LENGTH
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    projection_dim: int = 128


@dataclass(frozen=True)
class ImageTowerConfig:
    """The CLIP image tower (a small ViT) trained contrastively with the text encoder."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    patch_size: int = 8
    image_size: int = 64


@dataclass(frozen=True)
class UNetConfig:
    """``UNet2DConditionModel`` on latents; ``attention`` marks which resolution levels cross-attend."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 16
    cross_attention_dim: int = 128


def build_vae(cfg: VAEConfig, scaling_factor: float = 1.0, init_logvar: float | None = -8.0):
    """``AutoencoderKL``; with ``init_logvar`` the posterior starts nearly deterministic.

    At the default initialisation log σ² ≈ 0, so the decoder first sees latents buried in unit noise and
    learns to output only coarse brightness (seen here: grey reconstructions after 600 steps). Starting
    the log-variance bias at −8 (σ ≈ 0.02) lets colour and edges through from the first step; the KL term
    is free to raise it later.
    """
    import torch
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, sample_size=cfg.sample_size, scaling_factor=scaling_factor,
    )
    if init_logvar is not None:
        with torch.no_grad():
            vae.quant_conv.bias[cfg.latent_channels:].fill_(init_logvar)  # moments = [mean, logvar]
    return vae


def _text_config(cfg: TextConfig):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, max_position_embeddings=cfg.max_length,
        projection_dim=cfg.projection_dim, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
        hidden_act="quick_gelu",
    )


def build_text_encoder(cfg: TextConfig):
    """``CLIPTextModel`` (what Stable Diffusion pipelines load as ``text_encoder``)."""
    from transformers import CLIPTextModel

    return CLIPTextModel(_text_config(cfg))


def build_clip(text: TextConfig, image: ImageTowerConfig):
    """A ``CLIPModel`` (text + image towers) for contrastive pretraining; its ``text_model`` weights are
    what :func:`build_text_encoder` loads."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(
        hidden_size=image.hidden_size, intermediate_size=image.intermediate_size, num_hidden_layers=image.num_layers,
        num_attention_heads=image.num_heads, image_size=image.image_size, patch_size=image.patch_size,
        projection_dim=text.projection_dim, hidden_act="quick_gelu",
    )
    config = CLIPConfig(text_config=_text_config(text).to_dict(), vision_config=vision.to_dict(),
                        projection_dim=text.projection_dim)
    return CLIPModel(config)


def build_unet(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        layers_per_block=cfg.layers_per_block, block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )
