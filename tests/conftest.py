"""Shared fixtures: a tiny random text-to-image model (and an inpainting one) saved once per test session.

``tiny_model_dir`` is a diffusers ``StableDiffusionPipeline`` folder (SD 1.x layout: model_index.json,
unet/, vae/, text_encoder/, tokenizer/, scheduler/) with random weights: 32×32 images, VAE factor 4
(latents 4×8×8), a 2-layer CLIP text encoder of width 32 with CLIP's real vocabulary. Building it takes
about a second; loading it a fraction of that.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Must be set before torch starts its OpenMP pool: on a shared 2-core machine, spin-waiting threads
# slow tiny-model forwards by 10-50x whenever another process is busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY_VAE = dict(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                sample_size=32)
TINY_TEXT = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, projection_dim=32)
TINY_UNET = dict(block_out_channels=(16, 32), attention=(False, True), layers_per_block=1, attention_head_dim=8,
                 norm_num_groups=8, sample_size=8, cross_attention_dim=32)


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str, register: bool = False):
    """A script of the repository (``bench/...py``, ``scripts/...py``) imported as a module by its path;
    ``register`` also puts it in ``sys.modules`` under its name (a dataclass in it looks its module up)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def build_tiny_pipeline(seed: int = 0, prediction: str = "epsilon", tokenizer=None):
    """A latentdiff ``Pipeline`` of tiny random models (in memory, CPU, float32); ``tokenizer`` replaces CLIP's."""
    import torch

    from latentdiff.config import ScheduleConfig
    from latentdiff.diffusion.schedule import Schedule
    from latentdiff.models.factory import TextConfig, UNetConfig, VAEConfig, build_text_encoder, build_unet, build_vae
    from latentdiff.models.tokenizer import load_clip_tokenizer
    from latentdiff.pipeline import Pipeline

    torch.manual_seed(seed)
    vae = build_vae(VAEConfig(**TINY_VAE), scaling_factor=0.5)
    text = build_text_encoder(TextConfig(**TINY_TEXT))
    unet = build_unet(UNetConfig(**TINY_UNET))
    for m in (vae, text, unet):
        m.eval().requires_grad_(False)
    schedule = Schedule.from_config(ScheduleConfig(kind="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                   prediction=prediction))
    return Pipeline.from_components(unet, vae, text, tokenizer or load_clip_tokenizer(None), schedule)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random diffusers-format model folder, built once per session (treat as read-only)."""
    folder = tmp_path_factory.mktemp("models") / "tiny_model"
    build_tiny_pipeline().save(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_inpaint_dir(tmp_path_factory):
    """A tiny inpainting model folder (read-only). The new input channels get random weights (a fresh
    ``inpainting_unet`` ignores them), so the mask and masked latents change what it computes."""
    import torch

    from latentdiff.models.inpaint import inpainting_unet
    from latentdiff.pipeline import Pipeline

    base = build_tiny_pipeline(seed=1)
    unet = inpainting_unet(base.unet)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:].normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    folder = tmp_path_factory.mktemp("inpaint") / "tiny_inpaint"
    Pipeline.from_components(unet, base.vae, base.text_encoder, base.tokenizer, base.schedule).save(folder)
    return folder


@pytest.fixture(scope="session")
def spatial_model_dir(tmp_path_factory, tiny_model_dir):
    """A copy of the tiny model folder with gligen/, layout_controlnet/ and controlnet/ checkpoints inside:
    untrained, with the gates opened and the zero convolutions made non-zero so every route changes the
    output (read-only)."""
    import shutil

    import torch

    from latentdiff.models.control import controlnet_from_unet, save_layout_controlnet
    from latentdiff.models.gligen import MAX_BOXES, gated_unet, save_gligen
    from latentdiff.pipeline import Pipeline

    folder = tmp_path_factory.mktemp("spatial") / "model"
    shutil.copytree(tiny_model_dir, folder)
    pipe = Pipeline.load(folder, device="cpu")
    torch.manual_seed(0)
    gated = gated_unet(pipe.unet)
    with torch.no_grad():  # open the gates so the layout changes the output
        for name, p in gated.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(0.5)
    save_gligen(gated, folder / "gligen")
    for channels in (5, pipe.text_encoder.config.hidden_size + 1):  # the map's, the layout picture's
        net = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor, channels)
        with torch.no_grad():  # make the zero convolutions non-zero so the input changes the output
            for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters(),
                      *net.controlnet_cond_embedding.conv_out.parameters()]:
                p.normal_(0, 0.1)
        if channels == 5:
            net.save_pretrained(str(folder / "controlnet"))
        else:
            save_layout_controlnet(net, folder / "layout_controlnet", MAX_BOXES)
    return folder
