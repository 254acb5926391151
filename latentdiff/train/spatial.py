"""Training the layout (GLIGEN) and segmentation (ControlNet) conditions on top of a trained model.

    latentdiff train-spatial configs/layout.yaml      (condition: layout; add --resume after an interruption)
    latentdiff train-spatial configs/segmap.yaml      (condition: segmap)

Both run on the loop every stage runs (:func:`latentdiff.train.loop.run_stage`) with the U-Net stage's loss
(:class:`latentdiff.train.stages.LatentDenoisingStage`: [DDPM] Algorithm 1 on cached latents, min-SNR
weights) over an image folder with ``boxes`` and ``segmap`` (the shapes world by default). The base model
stays frozen:

* ``layout``, ``method: controlnet``: a ControlNet copied from the U-Net is trained on the layout drawn as
  a picture (each box filled with its phrase's embedding, :func:`latentdiff.models.control.rasterise_layout`).
  Result: ``OUT/final/layout_controlnet/``.
* ``layout``, ``method: gligen``: the U-Net gets GLIGEN's gated self-attention and position net
  (:mod:`latentdiff.models.gligen`); only those are trained, as in GLIGEN. Result: ``OUT/final/gligen/``.
* ``segmap``: a ControlNet copied from the U-Net (:mod:`latentdiff.models.control`) is trained on the one-hot
  class maps. Result: ``OUT/final/controlnet/``.

Each condition has its own dropout (:func:`latentdiff.conditioning.drop_conditions`): the caption becomes the
empty prompt with probability ``cond_dropout`` and, independently, the layout/map becomes its null value (no
used slot / the all-zero map) with probability ``spatial_dropout``, so one model serves every branch of the
nested guidance of :func:`latentdiff.diffusion.guidance.nested_guidance`. ``--install`` (:func:`install`) copies
the result into the model folder and registers it in its ``latentdiff.json`` as the layout or segmap companion,
which ``latentdiff generate --layout/--segmap`` then uses.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from latentdiff.checkpoint import install_companion
from latentdiff.conditioning import ConditionedUNet, Conditioning, Grounding, drop_conditions
from latentdiff.config import to_dict
from latentdiff.data.latents import layout_of, segmap_of
from latentdiff.errors import ConfigError
from latentdiff.pixels import save_grid
from latentdiff.train.config import DataConfig, LoopConfig, check_x0_weight_floor
from latentdiff.train.stages import LatentDenoisingStage, loss_floor

CONDITIONS = ("layout", "segmap")
LAYOUT_METHODS = ("gligen", "controlnet")


@dataclass(frozen=True)
class SpatialTrainConfig:
    """The recipe of a layout or segmentation condition; ``configs/layout.yaml`` and ``configs/segmap.yaml``."""

    condition: str = "layout"  # layout | segmap
    out: str = "runs/layout"
    base_model: str = ""  # a diffusers text-to-image folder; "" = the default model
    seed: int = 0
    device: str = "auto"
    latent_cache: str = ""  # "" = out/latents
    data: DataConfig = DataConfig()
    loop: LoopConfig = LoopConfig(steps=600, batch_size=32, lr=3e-4, warmup_steps=50, checkpoint_every=100,
                                  log_every=10, ema_decay=0.999)
    cond_dropout: float = 0.1  # the caption's (the text route's), as in every stage
    spatial_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    x0_weight_floor: float | None = None  # None: the base model's (latentdiff.train.stages.loss_floor)
    validation_cases: int = 8
    validation_steps: int = 20
    gate_init: float = 0.0  # layout: the gates' starting value α (output × tanh α); GLIGEN's is 0, closed
    method: str = "gligen"  # layout: gligen (gated self-attention) | controlnet (a ControlNet on the boxes' picture)
    # layout ControlNet: the guidance scale generate uses with it unless told (condition.json)
    layout_scale: float = 1.0
    region_guidance: float | None = None  # layout ControlNet: the text guidance generate uses with --segmap's
    # region phrases unless told (condition.json); None: the model's own
    regional_text: float | None = None  # layout ControlNet: the share of a layout box's text that is its phrase
    # alone, which generate uses with every layout (a file or region phrases) unless told (condition.json); None: 0
    init: str = ""  # ControlNet methods: start from this trained ControlNet folder (a later phase) instead of the U-Net
    binder: bool = False  # segmap: add a region binder (each object pixel reads the caption's words for it)

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ConfigError(f"condition: expected one of {', '.join(CONDITIONS)}, got {self.condition!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: expected one of auto, cpu, cuda, got {self.device!r}")
        if self.method not in LAYOUT_METHODS:
            raise ConfigError(f"method: expected one of {', '.join(LAYOUT_METHODS)}, got {self.method!r}")
        if self.method != "gligen" and self.condition != "layout":
            raise ConfigError(f"method: {self.method!r} is a layout method (condition is {self.condition!r})")
        if self.layout_scale != 1.0 and self.method != "controlnet":
            raise ConfigError("layout_scale: only a layout ControlNet records its scale (method: controlnet)")
        if not 0 <= self.layout_scale <= 50:
            raise ConfigError(f"layout_scale: expected 0..50, got {self.layout_scale}")
        if self.region_guidance is not None and self.method != "controlnet":
            raise ConfigError("region_guidance: only a layout ControlNet records it (method: controlnet)")
        if self.region_guidance is not None and not 0 <= self.region_guidance <= 50:
            raise ConfigError(f"region_guidance: expected 0..50, got {self.region_guidance}")
        if self.regional_text is not None and self.method != "controlnet":
            raise ConfigError("regional_text: only a layout ControlNet records it (method: controlnet)")
        if self.regional_text is not None and not 0 <= self.regional_text <= 1:
            raise ConfigError(f"regional_text: expected a share in [0, 1], got {self.regional_text}")
        if self.gate_init != 0.0 and (self.condition, self.method) != ("layout", "gligen"):
            raise ConfigError("gate_init: only GLIGEN's layout layers have gates (condition: layout, method: gligen)")
        if self.binder and self.condition != "segmap":
            raise ConfigError("binder: only the segmentation map has a region binder (condition: segmap)")
        if self.init and self.condition == "layout" and self.method != "controlnet":
            raise ConfigError("init: only a ControlNet starts from a trained folder (method: controlnet, or segmap)")
        check_x0_weight_floor(self.x0_weight_floor)
        for name in ("cond_dropout", "spatial_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)}")


# --- the stage -------------------------------------------------------------------------------------------

class SpatialStage(LatentDenoisingStage):
    """The U-Net stage's loss with a layout or segmentation route added; only the new layers train."""

    can_place_data = False  # boxes, phrase embeddings and maps are gathered on the CPU

    def __init__(self, cfg: SpatialTrainConfig, base, model: ConditionedUNet, mean, std, tokens, null_tokens,
                 records, size: int, device, holdout=()):
        from latentdiff.models.gligen import MAX_BOXES, grounding_tensors, phrase_embeddings

        self.name, self.cfg, self.base, self.model = cfg.condition, cfg, base, model
        self.cond_dropout, self.min_snr_gamma = cfg.cond_dropout, cfg.min_snr_gamma
        self.x0_weight_floor = loss_floor(cfg.x0_weight_floor, base)
        self._setup(mean, std, base.scaling_factor, base.schedule, tokens, null_tokens, base.text_encoder, device)
        self.size, self.holdout = size, list(holdout)
        if cfg.condition == "layout":
            from latentdiff.models.control import unit_rms

            layouts = [layout_of(r, size) for r in records]
            phrases = sorted({p for lay in layouts for p, _ in lay})
            emb = phrase_embeddings(base.text_encoder, base.tokenizer, phrases).cpu()  # (P, D)
            emb = dict(zip(phrases, unit_rms(emb) if cfg.method == "controlnet" else emb))
            dim = base.text_encoder.config.hidden_size
            self.boxes, self.embeddings, self.slots = grounding_tensors(
                [[(emb[p], b) for p, b in lay] for lay in layouts], dim, MAX_BOXES)  # (N, S, 4), (N, S, D), (N, S)
        else:
            self.segmaps = torch.from_numpy(np.stack([segmap_of(r, size) for r in records]))  # (N, S, S) uint8

    def condition(self, index, generator) -> Conditioning:
        """The batch's caption and layout or map, each emptied to its null value (the empty prompt; no used
        slot / the all-zero map) by :func:`~latentdiff.conditioning.drop_conditions`: the caption with
        probability ``cond_dropout``, then, independently, the layout/map with ``spatial_dropout``."""
        from latentdiff.models.control import one_hot, rasterise_layout

        ctx = self.contexts[self.caption_index[index]]  # (B, L, D)
        if self.cfg.condition == "layout":  # the boxes as GLIGEN's tokens; a layout ControlNet draws them below
            full = Conditioning(ctx, grounding=Grounding(self.boxes[index], self.embeddings[index], self.slots[index]))
        else:
            full = Conditioning(ctx, control=one_hot(self.segmaps[index]))  # (B, K, S, S)
        route = "control" if full.control is not None else "grounding"
        cond, masks = drop_conditions(full, full.null(self.null_context),
                                      {"context": self.cfg.cond_dropout, route: self.cfg.spatial_dropout}, generator)
        self.dropped = masks["context"]
        if self.cfg.condition == "layout" and self.cfg.method == "controlnet":
            g = cond.grounding
            picture = rasterise_layout(g.boxes, g.embeddings, g.mask, self.size, self.size)  # (B, D + 1, S, S)
            cond = replace(cond, grounding=None, layout_control=picture)  # dropped: all zeros
        return cond.to(self.device)

    def predict(self, model, x_t, t, cond):
        return model(x_t, t, cond)

    def pipeline(self, model: ConditionedUNet):
        """A Pipeline over the model being trained (nothing copied), with the condition attached."""
        from latentdiff.models.gligen import MAX_BOXES
        from latentdiff.pipeline import Pipeline

        b = self.base
        pipe = Pipeline(model.unet, b.vae, b.text_encoder, b.tokenizer, b.schedule, b.scheduler_config, extra=b.extra)
        pipe.controlnet, pipe.layout_controlnet = model.controlnet, model.layout_controlnet
        pipe.layout_slots = MAX_BOXES if self.cfg.condition == "layout" else 0
        return pipe

    def validate(self, model, step, out):
        """Generate the first held-out records' layouts/maps with their captions; score them with the
        shapes scorer (box accuracy and IoU, or pixel accuracy) and save input | output grids."""
        if not self.holdout or not self.cfg.validation_cases:
            return {"step": step}
        from latentdiff.eval.spatial import run_cases

        cases = self.holdout[: self.cfg.validation_cases]
        metrics, tiles = run_cases(self.pipeline(model), cases, self.cfg.condition, self.size,
                                   steps=self.cfg.validation_steps)
        save_grid(np.stack(tiles), len(cases), out / "val" / f"step{step:07d}.png")
        return {"step": step, **metrics}

    def finish(self, model, out):
        from latentdiff.models.control import save_layout_controlnet, save_segmap_controlnet
        from latentdiff.models.gligen import MAX_BOXES, save_gligen

        if self.cfg.method == "controlnet":
            region = {k: v for k in ("region_guidance", "regional_text")
                      if (v := getattr(self.cfg, k)) is not None}
            return save_layout_controlnet(model.layout_controlnet, out / "layout_controlnet", MAX_BOXES,
                                          {"layout_scale": self.cfg.layout_scale, **region,
                                           "recipe": to_dict(self.cfg)})
        if self.cfg.condition == "layout":
            return save_gligen(model.unet, out / "gligen", {"recipe": to_dict(self.cfg)})
        return save_segmap_controlnet(model.controlnet, out / "controlnet")


def build_model(condition: str, base, gate_init: float = 0.0, method: str = "gligen",
                init: str = "", binder: bool = False) -> ConditionedUNet:
    """The module the loop trains: a gated copy of the frozen U-Net (its gates α set to ``gate_init``), or
    the frozen U-Net and a ControlNet (on the one-hot map, or with ``method`` controlnet on the layout's
    picture: D + 1 input channels, D the text encoder's width), copied from the U-Net or, with ``init``,
    loaded from an earlier phase's ControlNet folder (checked to fit the U-Net and take those channels).
    ``binder`` (segmap): the ControlNet also reads a region binder's channels
    (:class:`latentdiff.models.control.RegionBinder`), added with no effect at first unless ``init`` has one."""
    from latentdiff.models.control import NUM_CLASSES, controlnet_from_unet, with_binder
    from latentdiff.models.gligen import gated_unet

    base.unet.requires_grad_(False)
    if condition == "layout" and method != "controlnet":
        return ConditionedUNet(gated_unet(base.unet, gate_init)).train()
    channels = base.text_encoder.config.hidden_size + 1 if condition == "layout" else NUM_CLASSES
    net = _init_controlnet(init, base.unet, channels) if init else \
        controlnet_from_unet(base.unet, base.vae_scale_factor, channels)
    if binder and getattr(net, "region_binder", None) is None:
        net = with_binder(net, base.text_encoder.config.hidden_size)
    net = net.train().requires_grad_(True)
    if condition == "layout":
        return ConditionedUNet(base.unet, layout_controlnet=net).train()
    return ConditionedUNet(base.unet, net).train()


def _init_folder(folder: str) -> Path:
    """The recipe's ``init`` folder, which must exist (else a ConfigError naming it)."""
    if not Path(folder).is_dir():
        raise ConfigError(f"init: {folder} is not a folder (expected a trained ControlNet, e.g. "
                          f"OUT/final/layout_controlnet)")
    return Path(folder)


def _init_controlnet(folder: str, unet, channels: int):
    """An earlier phase's ControlNet in fp32 on the U-Net's device: it must fit ``unet`` and take ``channels``."""
    from latentdiff.models.control import load_fitting_controlnet

    return load_fitting_controlnet(_init_folder(folder), unet, channels, torch.float32, lambda n: ConfigError(
        f"init: {folder} takes {n} input channels, this condition needs {channels}"))


# --- the run ---------------------------------------------------------------------------------------------

def train_spatial(cfg: SpatialTrainConfig, resume: bool = False) -> Path:
    """Run the recipe (module docstring); returns ``OUT/final/`` + ``gligen``, ``layout_controlnet`` or
    ``controlnet``."""
    from latentdiff.data.latents import cached_latents, load_images
    from latentdiff.train.finetune import caption_token_ids
    from latentdiff.train.loop import run_stage
    from latentdiff.train.run import derived_run, main_first, seed_init
    from latentdiff.train.stages import vae_latent_stats

    out = Path(cfg.out)
    if cfg.init:
        _init_folder(cfg.init)  # before any work; build_model checks what it holds
    accelerator, base, train_recs, hold_recs = derived_run(cfg, cfg.loop.mixed_precision)
    device, main = accelerator.device, accelerator.is_main_process
    size = int(base.vae.config.sample_size)
    cache = Path(cfg.latent_cache) if cfg.latent_cache else out / "latents"
    encode = lambda x: vae_latent_stats(base.vae, x, device)  # noqa: E731
    mean, std, _ = main_first(accelerator, lambda: cached_latents(cache, base.vae, train_recs, size, encode,
                                                                 lambda: load_images(train_recs, size, main)))
    tokens, null = caption_token_ids(base, [r.text for r in train_recs], print if main else (lambda _: None))
    seed_init(cfg.seed, cfg.condition)
    model = build_model(cfg.condition, base, cfg.gate_init, cfg.method, cfg.init, cfg.binder)
    stage = SpatialStage(cfg, base, model, mean, std, tokens, null, train_recs, size, device, hold_recs)
    if main:
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{cfg.condition}: training {n:,} parameters, {cfg.loop.steps} steps of {cfg.loop.batch_size}",
              flush=True)
    result = run_stage(stage, cfg.loop, out / cfg.condition, cfg.seed, accelerator, resume, to_dict(cfg))
    if main:
        print("to use it by default, install it into the model folder: run again with --resume --install", flush=True)
    return result


def install(result: Path, model_dir: Path) -> Path:
    """Copy a trained condition (``gligen/``, ``layout_controlnet/`` or ``controlnet/``) into a model folder
    and register it there as the model's layout or segmap companion (:func:`latentdiff.checkpoint.
    install_companion`): the model then uses it by default."""
    return install_companion(result, model_dir, "segmap" if result.name == "controlnet" else "layout")
