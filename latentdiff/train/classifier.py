"""Training the noise-aware latent classifier p_φ(y | x_t, t) used for classifier guidance.

A stage of the one training loop (:func:`latentdiff.train.loop.run_stage`): checkpoints, EMA, resume and
progress come from there. Each step draws cached VAE latents x_0 of a batch of images, t ~ U{0..T−1} and
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε ([DDPM] eq. 4) with the *diffusion model's* schedule, and minimises the
cross-entropy of both heads against the images' soft labels (the share of each shape / colour among
their objects, read from the captions):

    L(φ) = E_{x_0, t, ε} [ −Σ_y q(y | x_0) log p_φ(y | x_t, t) ]   summed over the shape and colour heads.

Output (``cfg.out``): ``checkpoints/``, ``log.jsonl``, ``metrics.json`` and ``final/`` — the classifier
folder that ``latentdiff generate --classifier`` and ``latentdiff eval --classifier`` load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentdiff.data.shapes import BASE_SHAPES, COLOURS, SHAPES
from latentdiff.diffusion.schedule import Schedule, q_sample
from latentdiff.errors import ConfigError, UserError
from latentdiff.models.classifier import HEADS, ClassifierConfig, build_classifier, save_classifier, soft_labels
from latentdiff.provenance import portable_path
from latentdiff.train.config import DataConfig, LoopConfig

T_BUCKETS = 4  # validation accuracy is reported per quarter of the timesteps


@dataclass(frozen=True)
class ClassifierStage:
    model: ClassifierConfig = ClassifierConfig()
    loop: LoopConfig = LoopConfig(steps=1500, batch_size=128, lr=1e-3, warmup_steps=50, checkpoint_every=250,
                                  log_every=25, ema_decay=0.999)
    # the shape classes; () = those that occur in the data (circle, square, triangle[, star])
    shapes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """``configs/classifier.yaml``. ``model`` is the diffusion model the classifier will guide (its VAE
    encodes the images, its schedule noises them); "" means the default model."""

    out: str = "runs/classifier"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    model: str = ""
    data: DataConfig = DataConfig()
    latent_cache: str = ""  # where latent caches live ("" = OUT/latents); a cache whose key matches is reused
    max_images: int = 0  # train on the first N training images (0 = all)
    classifier: ClassifierStage = ClassifierStage()

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: expected one of auto, cpu, cuda, got {self.device!r}")
        if self.max_images < 0:
            raise ConfigError(f"max_images: expected 0 (all) or a positive integer, got {self.max_images}")
        for s in self.classifier.shapes:
            if s not in SHAPES:
                raise ConfigError(f"classifier.shapes: expected items among {', '.join(SHAPES)}, got {s!r}")


def record_objects(records) -> list[list[tuple[str, str]]]:
    """(colour, shape) of every object of every record, from its caption (shapes-world captions only)."""
    from latentdiff.data.grammar import CaptionError, parse_caption

    out = []
    for r in records:
        try:
            spec = parse_caption(r.text)
        except CaptionError:
            where = f"line {r.line}" if r.line is not None else r.image_path.name
            raise UserError(f"{r.image_path.parent}: {where}: caption {r.text!r} is not a shapes-world caption; "
                            f"the classifier needs the colour and shape of every object") from None
        out.append([(o.colour, o.shape) for o in spec.objects])
    return out


def label_tensors(objects: list[list[tuple[str, str]]], shapes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{"shape": (N, K_s), "colour": (N, K_c)} soft labels (see :func:`soft_labels`)."""
    return {"shape": soft_labels([[s for _, s in objs] for objs in objects], shapes),
            "colour": soft_labels([[c for c, _ in objs] for objs in objects], COLOURS)}


def data_shapes(objects: list[list[tuple[str, str]]]) -> tuple[str, ...]:
    present = {s for objs in objects for _, s in objs}
    return tuple(s for s in SHAPES if s in present or s in BASE_SHAPES)


@dataclass
class Latents:
    """VAE posterior mean and std per image, (N, C, h, w) each, and the soft labels."""

    mean: torch.Tensor
    std: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def x0(self, index: torch.Tensor, scaling_factor: float, generator: torch.Generator) -> torch.Tensor:
        """x_0 = scaling_factor · (mean + std · ε), a sample of the posterior as in U-Net training."""
        eps = torch.randn(self.mean[index].shape, generator=generator)
        return (self.mean[index] + self.std[index] * eps) * scaling_factor  # (B, C, h, w)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−Σ_y q(y) log p(y), averaged over the batch. logits, target: (B, K)."""
    return -(target * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class ClassifierTrainStage:
    name = "classifier"

    def __init__(self, model, train: Latents, holdout: Latents, schedule: Schedule, scaling_factor: float,
                 device: torch.device, info: dict | None = None):
        self.model, self.train, self.holdout, self.info = model, train, holdout, dict(info or {})
        self.schedule, self.scaling_factor, self.device = schedule, scaling_factor, device
        self.num_examples = train.mean.shape[0]

    def noisy(self, data: Latents, index: torch.Tensor, generator: torch.Generator, t: torch.Tensor | None = None):
        """(x_t, t) for images ``index``: x_0 from the posterior, t ~ U{0..T−1} unless given."""
        x0 = data.x0(index, self.scaling_factor, generator)
        if t is None:
            t = torch.randint(0, self.schedule.num_timesteps, (index.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        return q_sample(self.schedule, x0, t, noise).to(self.device), t.to(self.device)

    def loss(self, model, index, generator):
        x_t, t = self.noisy(self.train, index, generator)
        logits = model(x_t, t)
        return sum(soft_cross_entropy(logits[h], self.train.labels[h][index].to(self.device)) for h in HEADS)

    def validate(self, model, step, out):
        """Top-1 accuracy on the held-out images per head and per quarter of t: the predicted class must be
        one of the image's classes (exact accuracy for one-object images). Fixed noise, so comparable
        across steps."""
        gen = torch.Generator().manual_seed(0)
        n, T = self.holdout.mean.shape[0], self.schedule.num_timesteps
        metrics: dict = {"step": step, "holdout_n": n}
        if n == 0:
            return metrics
        for b in range(T_BUCKETS):
            lo, hi = b * T // T_BUCKETS, (b + 1) * T // T_BUCKETS
            t = torch.randint(lo, hi, (n,), generator=gen)
            x_t, tt = self.noisy(self.holdout, torch.arange(n), gen, t)
            logits = model(x_t, tt)
            for h in HEADS:
                pred = logits[h].argmax(-1).cpu()
                ok = self.holdout.labels[h][torch.arange(n), pred] > 0
                metrics[f"{h}_top1_t{lo}-{hi - 1}"] = ok.float().mean().item()
        return metrics

    def finish(self, model, out):
        return save_classifier(model, out, self.info)


def _latents(cfg: ClassifierTrainConfig, pipe, records, accelerator, out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from latentdiff.data.latents import cached_latents, load_images
    from latentdiff.train.stages import vae_latent_stats

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    encode = lambda x: vae_latent_stats(pipe.vae, x, accelerator.device)  # noqa: E731
    root = Path(cfg.latent_cache) if cfg.latent_cache else out / "latents"
    mean, std, _ = cached_latents(root, pipe.vae, records, size, encode,
                                  lambda: load_images(records, size, accelerator.is_main_process))
    return mean, std


def train_classifier(cfg: ClassifierTrainConfig, resume: bool = False) -> Path:
    """Train the classifier of ``cfg`` (resumable) and return its folder ``OUT/final``."""
    from latentdiff.config import to_dict
    from latentdiff.pipeline import Pipeline
    from latentdiff.train.loop import run_stage
    from latentdiff.train.run import make_accelerator, prepare_data, seed_init

    out = Path(cfg.out)
    accelerator = make_accelerator(cfg.device, cfg.classifier.loop.mixed_precision)
    pipe = Pipeline.load(cfg.model or None, device=accelerator.device)
    train_recs, hold_recs = prepare_data(cfg, accelerator)
    if cfg.max_images:
        train_recs = train_recs[: cfg.max_images]
    objs_train, objs_hold = record_objects(train_recs), record_objects(hold_recs)
    shapes = cfg.classifier.shapes or data_shapes(objs_train)
    train = Latents(*_latents(cfg, pipe, train_recs, accelerator, out), label_tensors(objs_train, shapes))
    holdout = Latents(*_latents(cfg, pipe, hold_recs, accelerator, out), label_tensors(objs_hold, shapes))
    seed_init(cfg.seed, "classifier")
    model = build_classifier(cfg.classifier.model, in_channels=train.mean.shape[1], sample_size=train.mean.shape[-1],
                             num_train_timesteps=pipe.schedule.num_timesteps, shapes=shapes, colours=COLOURS)
    info = {"model_name": pipe.name, "model_path": portable_path(pipe.path) if pipe.path else None,
            "model_sha256": pipe.weights_sha256, "scaling_factor": pipe.scaling_factor,
            "train_images": len(train_recs), "data": cfg.data.folder, "recipe": to_dict(cfg)}
    stage = ClassifierTrainStage(model, train, holdout, pipe.schedule, pipe.scaling_factor, accelerator.device, info)
    result = run_stage(stage, cfg.classifier.loop, out, cfg.seed, accelerator, resume, to_dict(cfg))
    if accelerator.is_main_process:
        print(json.dumps(json.loads((out / "metrics.json").read_text()), indent=1))
    return result
