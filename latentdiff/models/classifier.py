"""A noise-aware classifier p_φ(y | x_t, t) on latents, for classifier guidance (Dhariwal & Nichol 2021).

The network is the encoder half of a diffusers U-Net: ``conv_in`` → diffusers ``DownBlock2D`` blocks
(ResNet blocks that take the timestep embedding, then a strided downsample) → GroupNorm, SiLU, global
average pooling → one linear head per label kind:

* ``shape``  — circle, square, triangle (and star when trained with it),
* ``colour`` — the eight palette colours.

A shapes-world image has 1–3 objects, so y is defined as *the shape (colour) of an object drawn
uniformly at random from the image*; its target distribution is the share of each class among the
image's objects (one-hot for a one-object image). Guiding towards y = circle therefore pushes every
object of the image towards being a circle.

Saved as a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) plus
``classifier.json`` (what it was trained for), so ``from_pretrained``/``save_pretrained`` work.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from latentdiff.errors import UserError

HEADS = ("shape", "colour")
INFO_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`NoiseAwareClassifier` (YAML: ``classifier.model``)."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8


class NoiseAwareClassifier(ModelMixin, ConfigMixin):
    """``forward(x_t (B,C,H,W), t (B,)) -> {head: logits (B, K_head)}``; t are the diffusion timesteps."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 4, sample_size: int = 16, block_out_channels: tuple[int, ...] = (32, 64, 128),
                 layers_per_block: int = 1, norm_num_groups: int = 8, num_train_timesteps: int = 1000,
                 shapes: tuple[str, ...] = ("circle", "square", "triangle"),
                 colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import DownBlock2D

        width, emb = block_out_channels[0], block_out_channels[0] * 4
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, emb)
        self.conv_in = torch.nn.Conv2d(in_channels, width, 3, padding=1)
        blocks, ch = [], width
        for i, out in enumerate(block_out_channels):
            blocks.append(DownBlock2D(in_channels=ch, out_channels=out, temb_channels=emb, num_layers=layers_per_block,
                                      resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=norm_num_groups,
                                      add_downsample=i < len(block_out_channels) - 1, downsample_padding=1))
            ch = out
        self.down_blocks = torch.nn.ModuleList(blocks)
        self.norm_out = torch.nn.GroupNorm(norm_num_groups, ch)
        self.heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(ch, len(shapes)),
                                          "colour": torch.nn.Linear(ch, len(colours))})

    def classes(self, head: str) -> tuple[str, ...]:
        return tuple(self.config.shapes if head == "shape" else self.config.colours)

    def forward(self, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        temb = self.time_embedding(self.time_proj(t.reshape(-1)).to(x_t.dtype))  # (B, 4·C0)
        h = self.conv_in(x_t)  # (B, C0, H, W)
        for block in self.down_blocks:
            h, _ = block(h, temb)
        h = torch.nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, C_last)
        return {name: head(h) for name, head in self.heads.items()}

    def log_prob(self, x_t: Tensor, t: Tensor, head: str, index: int) -> Tensor:
        """log p_φ(y = class ``index`` of ``head`` | x_t, t): (B,)."""
        logits = self(x_t, t)[head]  # (B, K)
        return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)[:, index]


def build_classifier(cfg: ClassifierConfig, *, in_channels: int, sample_size: int, num_train_timesteps: int,
                     shapes: tuple[str, ...], colours: tuple[str, ...]) -> NoiseAwareClassifier:
    return NoiseAwareClassifier(in_channels=in_channels, sample_size=sample_size,
                                block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                                norm_num_groups=cfg.norm_num_groups, num_train_timesteps=num_train_timesteps,
                                shapes=tuple(shapes), colours=tuple(colours))


def soft_labels(objects: list[list[str]], classes: tuple[str, ...]) -> Tensor:
    """Per image, the share of each class among its objects: (N, K) rows summing to 1.

    ``objects[i]`` lists the class of every object of image i (for instance its shapes)."""
    out = torch.zeros(len(objects), len(classes))
    for i, names in enumerate(objects):
        for name in names:
            out[i, classes.index(name)] += 1.0 / len(names)
    return out


def save_classifier(model: NoiseAwareClassifier, folder: Path, info: dict) -> Path:
    """Write the classifier folder: diffusers config + safetensors weights + ``classifier.json``."""
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return folder


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> NoiseAwareClassifier:
    """Load a classifier folder written by ``latentdiff train-classifier``; a :class:`UserError` names the
    folder and the problem."""
    from latentdiff.quiet import quiet_libraries

    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{path}: not a classifier folder (no config.json); train one with "
                        f"'latentdiff train-classifier configs/classifier.yaml'")
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config}: cannot read JSON ({exc})") from None
    if name != NoiseAwareClassifier.__name__:
        raise UserError(f"{config}: _class_name is {name!r}, expected '{NoiseAwareClassifier.__name__}'")
    try:
        with quiet_libraries():
            model = NoiseAwareClassifier.from_pretrained(str(path), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot load the classifier "
                        f"({str(exc).splitlines()[0] if str(exc) else exc})") from None
    return model.to(device).eval().requires_grad_(False)


def resolve_class(classifier: NoiseAwareClassifier, name: str) -> tuple[str, int]:
    """(head, index) of a class name such as 'circle' or 'red'; a :class:`UserError` lists the choices."""
    for head in HEADS:
        classes = classifier.classes(head)
        if name in classes:
            return head, classes.index(name)
    choices = ", ".join(classifier.classes("shape") + classifier.classes("colour"))
    raise UserError(f"--classifier-guidance {name!r}: the classifier knows {choices}")


@dataclass
class ClassifierGuide:
    """Classifier guidance towards class ``name`` at scale ``scale``, ready to wrap any denoiser:
    ``guide.wrap(denoiser, schedule)`` (see :func:`latentdiff.diffusion.guidance.classifier_guidance`)."""

    classifier: NoiseAwareClassifier
    name: str
    scale: float
    path: str | None = None

    def __post_init__(self):
        self.head, self.index = resolve_class(self.classifier, self.name)

    def log_prob(self) -> Callable[[Tensor, Tensor], Tensor]:
        net = self.classifier
        dtype = next(net.parameters()).dtype

        def fn(x_t: Tensor, t: Tensor) -> Tensor:
            return net.log_prob(x_t.to(net.device, dtype), t.to(net.device), self.head, self.index).to(x_t.device)

        return fn

    def check(self, schedule, latent_channels: int) -> None:
        """The classifier must have been trained on this model's latent space and timesteps."""
        cfg = self.classifier.config
        if cfg.in_channels != latent_channels or cfg.num_train_timesteps != schedule.num_timesteps:
            raise UserError(f"classifier {self.path or ''}: trained on {cfg.in_channels}-channel latents and "
                            f"{cfg.num_train_timesteps} timesteps; this model has {latent_channels} and "
                            f"{schedule.num_timesteps}")

    def wrap(self, denoiser, schedule):
        from latentdiff.diffusion.guidance import classifier_guidance

        return classifier_guidance(denoiser, self.log_prob(), schedule, self.scale)

    def describe(self) -> dict:
        """What goes into an image's provenance record."""
        return {"class": self.name, "scale": self.scale, "classifier_path": self.path}
