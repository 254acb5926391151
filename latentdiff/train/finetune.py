"""Fine-tuning a text-to-image model on a folder of the user's own captioned images: LoRA or full.

    latentdiff finetune --data DIR --out OUT [--model PATH] [--lora RANK | --full] ...

It runs on the training loop (:func:`latentdiff.train.loop.run_stage`: AdamW, warm-up then cosine decay,
gradient clipping, EMA, atomic checkpoints, exact resume), with the latent cache
(:mod:`latentdiff.data.latents`) and the loss with conditioning dropout of the U-Net stage
(:class:`latentdiff.train.stages.LatentDenoisingStage`). What differs is where the weights start (a
trained model: the default model or the user's Stable Diffusion weights) and which of them are trained:

* ``lora``: the model is frozen and peft LoRA layers are trained on the U-Net's attention projections
  (and on the text encoder's with ``train_text_encoder``), see :mod:`latentdiff.lora`. Result:
  ``OUT/pytorch_lora_weights.safetensors``, the format of diffusers' ``load_lora_weights``.
* ``full``: every U-Net weight is trained (and every text-encoder weight with ``train_text_encoder``);
  the result is the EMA of the weights (``loop.ema_decay``), written as a diffusers model folder ``OUT/model/``.

Images go through :mod:`latentdiff.data.intake` (RGBA, grayscale, palette, CMYK, 16-bit, EXIF rotation,
any size; corrupt or truncated files skipped; centre crop to the training resolution) and a summary is
printed before training starts. ``OUT`` also holds ``intake.json``, ``finetune.json`` (the run's
identity, checked by ``--resume``), ``checkpoints/``, ``log.jsonl``, ``val/`` (a prompt × seed grid at
the end), ``metrics.json`` and ``latents/``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentdiff.config import check_choice, to_dict
from latentdiff.errors import ConfigError, DataError, UserError
from latentdiff.lora import LORA_LAYERS, add_lora
from latentdiff.models.text import max_length, tokenize
from latentdiff.pixels import save_grid
from latentdiff.train.config import LoopConfig, check_x0_weight_floor
from latentdiff.train.stages import LatentDenoisingStage, UNetWithText, loss_floor

METHODS = ("lora", "full")
# Settings that make a run what it is: resuming with any of them changed is refused.
IDENTITY_KEYS = ("method", "rank", "lora_alpha", "lora_layers", "train_text_encoder", "resolution", "background",
                 "model_sha256", "data", "images")


def default_loop(method: str, **overrides) -> LoopConfig:
    """The loop settings of a fine-tune: LoRA learns fast at a high rate and needs no EMA; a full
    fine-tune takes a 10× lower rate and keeps an EMA of the weights."""
    base = dict(steps=1000, batch_size=16, warmup_steps=50, checkpoint_every=200, log_every=10, validate_every=0,
                keep_checkpoints=2)
    base.update(dict(lr=1e-3, ema_decay=0.0) if method == "lora" else dict(lr=1e-4, ema_decay=0.999))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return LoopConfig(**base)


@dataclass(frozen=True)
class FinetuneConfig:
    data: str
    out: str
    model: str | None = None  # None: the default model; else a diffusers folder or a single-file checkpoint
    model_config: str | None = None  # component configs of a single-file checkpoint (see latentdiff.interop)
    allow_unsafe_pickle: bool = False
    method: str = "lora"  # lora | full
    rank: int = 8
    lora_alpha: float | None = None  # None: = rank, so the LoRA update is scaled by α/r = 1
    lora_layers: str = "attention"  # attention | all (adds the convolutions, see latentdiff.lora)
    train_text_encoder: bool = False
    cond_dropout: float = 0.1  # probability that a caption becomes the empty prompt (keeps guidance working)
    resolution: int | None = None  # None: the model's native size
    background: str = "white"  # what transparent pixels are composited on: white | black
    min_snr_gamma: float | None = 5.0
    # added to min(SNR, γ) in the loss's weight on the x₀ error (latentdiff.diffusion.loss); None: what the base
    # model was trained with (its recipe's unet.x0_weight_floor in latentdiff.json), else 0. The v2 default model
    # used 1, which keeps the high-noise steps (where an object's place and count are decided) in the loss.
    x0_weight_floor: float | None = None
    seed: int = 0
    device: str = "auto"
    validation_prompts: int = 4  # distinct captions drawn (4 seeds each) after training; 0: none
    loop: LoopConfig = dataclasses.field(default_factory=lambda: default_loop("lora"))  # see default_loop(method)

    def __post_init__(self):
        check_choice(self, "method", METHODS)
        check_choice(self, "background", ("white", "black"))
        check_choice(self, "lora_layers", tuple(LORA_LAYERS))
        check_choice(self, "device", ("auto", "cpu", "cuda"))
        if self.rank < 1:
            raise ConfigError(f"rank: expected a positive integer, got {self.rank}")
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ConfigError(f"cond_dropout: expected a probability in [0, 1], got {self.cond_dropout}")
        check_x0_weight_floor(self.x0_weight_floor)
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"resolution: expected at least 8 pixels, got {self.resolution}")


class FinetuneStage(LatentDenoisingStage):
    """The U-Net stage's loss on a trained model's weights; LoRA or full (see the module docstring)."""

    name = "finetune"

    def __init__(self, cfg: FinetuneConfig, base, latent_mean, latent_std, tokens, null_tokens, device,
                 validation_prompts: list[str]):
        self.cfg, self.base = cfg, base
        self.cond_dropout, self.min_snr_gamma = cfg.cond_dropout, cfg.min_snr_gamma
        self.x0_weight_floor = loss_floor(cfg.x0_weight_floor, base)
        train_text = self.train_text = cfg.train_text_encoder
        self._setup(latent_mean, latent_std, base.scaling_factor, base.schedule, tokens, null_tokens,
                    base.text_encoder, device, encode_captions=not train_text)
        text = base.text_encoder if train_text else None
        self.lora_configs = None
        if cfg.method == "lora":
            self.lora_configs = add_lora(base.unet, text, cfg.rank, cfg.lora_alpha, cfg.lora_layers)
        else:
            base.unet.requires_grad_(True)
            if text is not None:
                text.requires_grad_(True)
        self.model = UNetWithText(base.unet, text).train()
        self.validation_prompts = validation_prompts

    def pipeline(self, model: UNetWithText):
        """A :class:`~latentdiff.pipeline.Pipeline` over the model being trained (nothing is copied)."""
        from latentdiff.pipeline import Pipeline

        b = self.base
        text = model.text_encoder if model.text_encoder is not None else b.text_encoder
        return Pipeline(model.unet, b.vae, text, b.tokenizer, b.schedule, b.scheduler_config, extra=b.extra)

    def validate(self, model, step, out):
        if not self.validation_prompts:
            return {"step": step}
        n = 4
        size = self.mean.shape[-1] * self.base.vae_scale_factor
        images = self.pipeline(model).generate(self.validation_prompts, num_images=n, seed=0, height=size,
                                               width=size, batch_size=16)
        save_grid(np.stack([np.asarray(im) for im in images]), len(self.validation_prompts),
                  out / "val" / f"step{step:07d}.png")
        return {"step": step, "validation_prompts": self.validation_prompts}

    def finish(self, model, out):
        if self.cfg.method == "lora":
            from latentdiff.lora import save_lora

            return save_lora(out, model.unet, model.text_encoder, self.lora_configs)
        pipe = self.pipeline(model)
        pipe.extra["finetune"] = {k: v for k, v in to_dict(self.cfg).items() if k not in ("out", "loop")}
        pipe.save(out / "model")
        return out / "model"


# --- the run ---------------------------------------------------------------------------------------------


def finetune(cfg: FinetuneConfig, resume: bool = False, on_step: Callable[[int], None] | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Fine-tune (see the module docstring); returns the LoRA file or the model folder.

    Every check of the data folder comes first, so an empty, caption-less or unreadable folder is a
    one-line :class:`~latentdiff.errors.DataError` before any model is loaded."""
    from latentdiff.data.folder import load_folder
    from latentdiff.data.intake import take_in
    from latentdiff.train.loop import STAGE_IDS, run_stage, seed_for
    from latentdiff.train.run import make_accelerator

    records = load_folder(cfg.data)
    out = check_output(cfg.out)
    accelerator = make_accelerator(cfg.device, cfg.loop.mixed_precision)
    main = accelerator.is_main_process
    base = load_base(cfg)
    size = _resolution(cfg, base)
    intake = take_in(records, size, cfg.background, root=Path(cfg.data), progress=main)
    if main:
        log(intake.summary())
    if not intake.records:
        raise DataError(f"{cfg.data}: none of its {intake.total} images can be used (see the summary above)")
    if main:
        make_output(out)
        (out / "intake.json").write_text(json.dumps(intake.to_json(), indent=1))
        check_identity(out, _identity(cfg, base, size, len(intake.records)), resume)
    base.to(accelerator.device)
    mean, std = _latents(accelerator, out, base, intake, size, cfg.background)
    texts = [r.text for r in intake.records]
    tokens, null = caption_token_ids(base, texts, log if main else (lambda _: None))
    torch.manual_seed(seed_for(cfg.seed, STAGE_IDS["finetune"], 1 << 30))  # LoRA's initial A from the seed
    prompts = list(dict.fromkeys(texts))[: cfg.validation_prompts]
    stage = FinetuneStage(cfg, base, mean, std, tokens, null, accelerator.device, prompts)
    if main:
        params = list(stage.model.parameters())
        trained = sum(p.numel() for p in params if p.requires_grad)
        log(f"training {trained:,} of {sum(p.numel() for p in params):,} parameters ({_what(cfg)}), "
            f"{cfg.loop.steps} steps of {cfg.loop.batch_size} images at {size}x{size}")
    return run_stage(stage, cfg.loop, out, cfg.seed, accelerator, resume, to_dict(cfg), on_step, final=out)


def _what(cfg: FinetuneConfig) -> str:
    parts = "U-Net and text encoder" if cfg.train_text_encoder else "U-Net"
    where = "attention layers" if cfg.lora_layers == "attention" else "attention and convolution layers"
    return f"LoRA rank {cfg.rank} on the {parts}'s {where}" if cfg.method == "lora" else f"all of the {parts}"


def check_output(text: str) -> Path:
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    return out


def make_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror or exc})") from None


def load_base(cfg: FinetuneConfig):
    from latentdiff.pipeline import Pipeline

    base = Pipeline.load(cfg.model, device="cpu", dtype=torch.float32, config=cfg.model_config,
                         allow_unsafe_pickle=cfg.allow_unsafe_pickle)
    if base.concat_channels():
        raise UserError(f"{cfg.model or 'the default model'}: an inpainting model (its U-Net takes extra inputs); "
                        f"fine-tune the text-to-image model it was made from")
    return base


def _resolution(cfg: FinetuneConfig, base) -> int:
    native = base.unet.config.sample_size
    native = (native[0] if isinstance(native, (list, tuple)) else native) * base.vae_scale_factor
    size = cfg.resolution or native
    if size % base.vae_scale_factor:
        raise UserError(f"--resolution {size}: expected a multiple of {base.vae_scale_factor} "
                        f"(the VAE's downscale factor)")
    return size


def _identity(cfg: FinetuneConfig, base, size: int, images: int) -> dict:
    return {"method": cfg.method, "rank": cfg.rank if cfg.method == "lora" else None,
            "lora_alpha": cfg.lora_alpha if cfg.method == "lora" else None,
            "lora_layers": cfg.lora_layers if cfg.method == "lora" else None,
            "train_text_encoder": cfg.train_text_encoder, "resolution": size, "background": cfg.background,
            "model": base.name, "model_sha256": base.weights_sha256, "data": str(Path(cfg.data).resolve()),
            "images": images}


def check_identity(out: Path, identity: dict, resume: bool, keys: tuple[str, ...] = IDENTITY_KEYS,
                    name: str = "finetune.json") -> None:
    """Write ``name`` (``finetune.json``); on ``--resume`` first refuse ``keys`` that differ from the run's."""
    path = out / name
    if resume and path.is_file():
        before = json.loads(path.read_text())
        if before.get("method") == "lora":
            before.setdefault("lora_layers", "attention")  # runs from before the option had only these
        changed = [k for k in keys if before.get(k) != identity.get(k)]
        if changed:
            what = ", ".join(f"{k} {before.get(k)!r} → {identity.get(k)!r}" for k in changed)
            raise UserError(f"{out}: cannot resume, the run was started with other settings ({what}); "
                            f"use another --out")
    path.write_text(json.dumps(identity, indent=1))


def _latents(accelerator, out: Path, base, intake, size: int, background: str):
    """VAE posterior (mean, std) of every used image, (N, C, h, w) each: encoded once, then cached."""
    from latentdiff.data.latents import cached_latents
    from latentdiff.train.stages import vae_latent_stats

    encode = lambda x: vae_latent_stats(base.vae, x, accelerator.device, batch=32)  # noqa: E731
    from latentdiff.train.run import main_first

    mean, std, _ = main_first(accelerator, lambda: cached_latents(out / "latents", base.vae, intake.records, size,
                                                                 encode, lambda: intake.images,
                                                                 variant=f"background={background}"))
    return mean, std


def caption_token_ids(base, texts: list[str], log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the captions, (N, L), and of the empty prompt, (L,), padded as the pipeline pads
    (:func:`latentdiff.models.text.tokenize`)."""
    length = max_length(base.text_encoder)
    long = sum(len(ids) > length for ids in base.tokenizer(texts, verbose=False).input_ids)
    if long:
        log(f"note: {long} captions are longer than {length} tokens; their ends are cut off")
    return (tokenize(base.tokenizer, base.text_encoder, texts).input_ids,
            tokenize(base.tokenizer, base.text_encoder, [""]).input_ids[0])
