"""The training recipe as typed config; ``configs/*.yaml`` mirror these classes."""
from __future__ import annotations

from dataclasses import dataclass

from latentdiff.config import COMPILE_MODES, SAMPLERS, ScheduleConfig, check_choice
from latentdiff.errors import ConfigError
from latentdiff.models.factory import ImageTowerConfig, TextConfig, UNetConfig, VAEConfig


def check_x0_weight_floor(value: float | None) -> None:
    """A recipe's ``x0_weight_floor`` (None where it means "the base model's"): a weight >= 0."""
    if value is not None and not value >= 0.0:
        raise ConfigError(f"x0_weight_floor: expected a weight >= 0, got {value}")


@dataclass(frozen=True)
class LoopConfig:
    """What every stage's optimisation loop needs."""

    steps: int = 1000
    batch_size: int = 64  # per process
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (to choose one later); 0: none
    validate_every: int = 0  # 0: only at the end
    log_every: int = 10
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    max_nonfinite: int = 20  # consecutive non-finite losses before training stops
    # Speed (see docs/performance.md). compile: torch.compile mode for the trained module, or none.
    compile: str = "none"  # none | default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    channels_last: bool = False  # NHWC weights for the trained module's convolutions (often faster on GPUs)
    data_on_device: str = "auto"  # auto (yes on a GPU, when the stage can and the data fits) | yes | no
    sync_every: int = 0  # read loss and health on the host every N steps; 0: every step on CPU, log_every on GPU
    # stop (checkpoint, finish, resumable) this long after the loop started (compiling included); 0: none
    time_limit_s: float = 0.0

    def __post_init__(self):
        check_choice(self, "mixed_precision", ("auto", "no", "bf16", "fp16"))
        check_choice(self, "compile", ("none", *COMPILE_MODES))
        check_choice(self, "data_on_device", ("auto", "yes", "no"))
        if self.sync_every < 0:
            raise ConfigError(f"sync_every: expected 0 (auto) or a positive integer, got {self.sync_every}")
        if self.time_limit_s < 0:
            raise ConfigError(f"time_limit_s: expected 0 (none) or a positive number of seconds, "
                              f"got {self.time_limit_s}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "max_nonfinite", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.keep_every < 0:
            raise ConfigError(f"keep_every: expected 0 (none) or a positive number of steps, got {self.keep_every}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: expected 0 <= ema_decay < 1, got {self.ema_decay}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training images come from: an image folder with metadata.jsonl (any user folder),
    written first from the shapes world when ``shapes_num`` > 0 and the folder does not exist yet."""

    folder: str = "data/shapes-train"
    shapes_num: int = 0
    shapes_seed: int = 0
    exclude_held_out: bool = True
    exclude_validation: bool = False  # also keep the validation triples out (shapes.VALIDATION_TRIPLES)
    holdout: int = 256  # images kept out of training for validation (the last ones of the folder)


@dataclass(frozen=True)
class VAEStage:
    model: VAEConfig = VAEConfig()
    loop: LoopConfig = LoopConfig()
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    crop: int = 0  # train on random crops of this size (0: whole images); the VAE is fully convolutional
    outlines: int = 0  # concave-outline scenes added to the VAE's images (latentdiff.data.outlines); 64 px only

    def __post_init__(self):
        if self.outlines < 0:
            raise ConfigError(f"vae.outlines: expected a count >= 0, got {self.outlines}")
        if self.outlines and self.model.sample_size != 64:
            raise ConfigError(f"vae.outlines: the outline scenes are 64 px, but vae.model.sample_size is "
                              f"{self.model.sample_size}; set outlines: 0 or sample_size: 64")


@dataclass(frozen=True)
class ClipStage:
    text: TextConfig = TextConfig()
    image: ImageTowerConfig = ImageTowerConfig()
    loop: LoopConfig = LoopConfig()


@dataclass(frozen=True)
class UNetStage:
    model: UNetConfig = UNetConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loop: LoopConfig = LoopConfig()
    cond_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    x0_weight_floor: float = 0.0  # weight on the x₀ error min(SNR, γ) + this (latentdiff.diffusion.loss)
    text_encoder_lr_scale: float = 0.0  # > 0: the CLIP stage's text encoder trains too, at this × lr
    grounding_loss: float = 0.0  # weight of the cross-attention grounding loss (latentdiff.train.grounding)
    grounding_min_t: int = 0  # the grounding loss only on samples with t >= this (0: every t)
    validation_prompts: tuple[str, ...] = (
        "a small red circle in the top left", "a large blue square in the center",
        "a green triangle left of a yellow circle", "",
    )

    def __post_init__(self):
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ConfigError(f"cond_dropout: expected a probability in [0, 1], got {self.cond_dropout}")
        check_x0_weight_floor(self.x0_weight_floor)
        if self.x0_weight_floor and self.min_snr_gamma is None:
            raise ConfigError("x0_weight_floor: needs min_snr_gamma (the floor is added to min(SNR, γ))")
        if not self.text_encoder_lr_scale >= 0.0:
            raise ConfigError(f"text_encoder_lr_scale: expected a factor >= 0, got {self.text_encoder_lr_scale}")
        if not self.grounding_loss >= 0.0:
            raise ConfigError(f"grounding_loss: expected a weight >= 0, got {self.grounding_loss}")
        if not 0 <= self.grounding_min_t < self.schedule.num_timesteps:
            raise ConfigError(f"grounding_min_t: expected a timestep in [0, {self.schedule.num_timesteps}), "
                              f"got {self.grounding_min_t}")


@dataclass(frozen=True)
class GenerateDefaults:
    """What ``generate``, ``demo`` and ``eval`` use with the trained model unless told otherwise (written to its
    latentdiff.json as ``generate_defaults``), chosen on validation prompts (bench/guidance_select.py). None
    leaves the library's default (latentdiff.checkpoint.GENERATE_DEFAULTS)."""

    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None

    def __post_init__(self):
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"generate.sampler: expected one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= 1000):
            raise ConfigError(f"generate.steps: expected a whole number of steps in [1, 1000], got {self.steps!r}")
        if self.guidance is not None and not self.guidance >= 1.0:
            raise ConfigError(f"generate.guidance: expected a guidance scale >= 1, got {self.guidance!r}")

    def as_dict(self) -> dict:
        return {k: v for k, v in (("sampler", self.sampler), ("steps", self.steps), ("guidance", self.guidance))
                if v is not None}


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = DataConfig()
    vae: VAEStage = VAEStage()
    clip: ClipStage = ClipStage()
    unet: UNetStage = UNetStage()
    stages: tuple[str, ...] = ("vae", "clip", "unet")
    generate: GenerateDefaults = GenerateDefaults()

    def __post_init__(self):
        check_choice(self, "device", ("auto", "cpu", "cuda"))
        for s in self.stages:
            if s not in ("vae", "clip", "unet"):
                raise ConfigError(f"stages: expected items among vae, clip, unet, got {s!r}")
