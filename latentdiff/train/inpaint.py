"""Fine-tune a dedicated inpainting model from a text-to-image one.

``latentdiff train-inpaint configs/inpaint.yaml`` (resumable with ``--resume``):

1. load the base model (a diffusers folder; the default model when ``base_model`` is empty) and widen its
   U-Net to diffusers' inpainting layout (:func:`latentdiff.models.inpaint.inpainting_unet`: 9 input
   channels, the new ones starting at zero, so training starts from the text-to-image model). A base that
   is already an inpainting model (ours, or Stable Diffusion's) keeps its U-Net and trains on: a new phase
   from an exported model, or the same recipe on a user's own folder;
2. train it with the loop every stage runs (:func:`latentdiff.train.loop.run_stage`) on an image folder
   (the shapes world by default): each example gets a random mask — an object's box from the folder's
   ``boxes`` (dilated), free-form brush strokes, a rectangle, or the whole image (which keeps text-to-image
   ability) — and the U-Net sees ``[x_t, mask, E(image ⊙ (1 − mask))]``, built by the same
   :func:`latentdiff.inpaint.inpainting_concat` as at inference. The loss is [DDPM] Algorithm 1 on the
   whole latent (with min-SNR weights), with conditioning dropout for classifier-free guidance;
3. write ``out/model``: a ``StableDiffusionInpaintPipeline`` folder (``latentdiff inpaint --model``).

Captions: with an object-box mask the caption names only that object with probability
``masks.object_caption`` ("a small purple square in the top left": the prompt says what goes in the
hole), else the image's own caption.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentdiff.conditioning import Conditioning, drop_conditions
from latentdiff.config import from_dict, read_yaml, to_dict
from latentdiff.data.latents import square_box
from latentdiff.diffusion.loss import diffusion_loss
from latentdiff.errors import ConfigError
from latentdiff.provenance import portable_path
from latentdiff.train.config import DataConfig, LoopConfig, check_x0_weight_floor
from latentdiff.train.stages import loss_floor

MASK_KINDS = ("box", "stroke", "rect", "whole")


@dataclass(frozen=True)
class MaskMix:
    """How often each kind of training mask is drawn (relative weights) and how object masks are made."""

    box: float = 0.4  # an object's box from the folder's ``boxes``, dilated (rect when an image has none)
    stroke: float = 0.15  # free-form brush strokes
    rect: float = 0.2  # a random rectangle
    whole: float = 0.25  # the whole image: text-to-image
    box_dilate: int = 2  # px at 64×64
    object_caption: float = 0.5  # with a box mask: probability that the caption names only that object

    def __post_init__(self):
        weights = [getattr(self, k) for k in MASK_KINDS]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"masks: weights {dict(zip(MASK_KINDS, weights))} must be >= 0 with a positive sum")
        if not 0.0 <= self.object_caption <= 1.0:
            raise ConfigError(f"masks.object_caption: expected a probability in [0, 1], got {self.object_caption}")
        if self.box_dilate < 0:
            raise ConfigError(f"masks.box_dilate: expected >= 0, got {self.box_dilate}")

    def probabilities(self) -> np.ndarray:
        w = np.array([getattr(self, k) for k in MASK_KINDS], dtype=np.float64)
        return w / w.sum()


@dataclass(frozen=True)
class InpaintTrainConfig:
    """The inpainting recipe; ``configs/inpaint.yaml`` mirrors it."""

    out: str = "runs/inpaint"
    base_model: str = ""  # a diffusers text-to-image folder; "" = the default model
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    latent_cache: str = ""  # latent cache folder; "" = out/latents (the key includes the VAE's weights)
    data: DataConfig = DataConfig()
    masks: MaskMix = MaskMix()
    loop: LoopConfig = LoopConfig(steps=500, batch_size=32, lr=3e-4, warmup_steps=50, checkpoint_every=50,
                                  validate_every=250, log_every=10, ema_decay=0.999)
    cond_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    x0_weight_floor: float | None = None  # None: the base model's (latentdiff.train.stages.loss_floor)
    validation_cases: int = 4
    validation_steps: int = 25

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: expected one of auto, cpu, cuda, got {self.device!r}")
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ConfigError(f"cond_dropout: expected a probability in [0, 1], got {self.cond_dropout}")
        check_x0_weight_floor(self.x0_weight_floor)


@dataclass(frozen=True)
class InpaintPhase:
    """One phase of an inpainting recipe: its settings and where it starts. The first phase starts from
    ``cfg.base_model`` (a text-to-image model, widened); a later one from the previous phase's checkpoint at
    step ``start_checkpoint`` (copied into this phase's checkpoints, so its optimizer and EMA go on), or, with
    ``start_model``, from the previous phase's finished model (``cfg.base_model`` is it; fresh optimizer)."""

    cfg: InpaintTrainConfig
    start_checkpoint: int | None = None
    start_model: bool = False


def load_inpaint_recipe(path: str | Path, *, out: str | None = None, base_model: str | None = None,
                        latent_cache: str | None = None) -> list[InpaintPhase]:
    """The phases of the recipe in ``path``: its top-level keys are :class:`InpaintTrainConfig`'s, and
    ``phases`` (optional; without it the recipe is one phase) lists each phase's changes to the phase before
    it (the first: to the top-level settings), merged key by key, plus ``start`` (``{checkpoint: N}`` or
    ``model``) for every phase after the first. Phase k > 1 writes to ``<out>k`` unless it names its ``out``.
    ``out`` / ``base_model`` / ``latent_cache``: command-line overrides of the top-level settings (the
    base model is the first phase's, and that of phases starting from a checkpoint)."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level: expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    steps = raw.pop("phases", [{}])
    try:
        top = _overridden(from_dict(InpaintTrainConfig, raw), out=out, base_model=base_model,
                          latent_cache=latent_cache)
        if not isinstance(steps, list) or not steps:
            raise ConfigError("phases: expected a list of phases, the first's changes to the settings above ({})")
        phases: list[InpaintPhase] = []
        for k, change in enumerate(steps, 1):
            phases.append(_phase(top, phases[-1] if phases else None, change, k))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return phases


def _overridden(cfg: InpaintTrainConfig, **overrides) -> InpaintTrainConfig:
    from dataclasses import replace

    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **given) if given else cfg


def _phase(top: InpaintTrainConfig, last: InpaintPhase | None, change, k: int) -> InpaintPhase:
    """Phase ``k`` (1-based): ``change`` (its YAML mapping) applied to the previous phase's settings."""
    where = f"phases[{k - 1}]"
    if not isinstance(change, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(change).__name__}")
    change = dict(change)
    start = change.pop("start", None)
    if last is None:
        if start is not None:
            raise ConfigError(f"{where}.start: the first phase starts from base_model")
        return InpaintPhase(from_dict(InpaintTrainConfig, _merged(to_dict(top), change), f"{where}."))
    merged = _merged(to_dict(last.cfg), change)
    if "out" not in change:
        merged["out"] = f"{top.out}{k}"
    if start == "model":
        merged["base_model"] = f"{last.cfg.out}/model"
    elif not (isinstance(start, dict) and set(start) == {"checkpoint"} and isinstance(start["checkpoint"], int)):
        raise ConfigError(f"{where}.start: expected {{checkpoint: STEP}} (the previous phase's checkpoint) or "
                          f"model (its finished model), got {start!r}")
    cfg = from_dict(InpaintTrainConfig, merged, f"{where}.")
    if start == "model":
        return InpaintPhase(cfg, start_model=True)
    step, before = start["checkpoint"], last.cfg.loop
    if not (0 < step <= before.steps and (step % before.checkpoint_every == 0 or step == before.steps)):
        raise ConfigError(f"{where}.start.checkpoint: {step}: the previous phase writes checkpoints every "
                          f"{before.checkpoint_every} steps up to {before.steps}")
    if cfg.loop.steps <= step:
        raise ConfigError(f"{where}.loop.steps: {cfg.loop.steps}: must be more than the starting step {step}")
    return InpaintPhase(cfg, start_checkpoint=step)


def _merged(base: dict, change: dict) -> dict:
    """``base`` with ``change`` applied: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in change.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def train_inpaint_recipe(phases: list[InpaintPhase], resume: bool = False) -> Path:
    """Run the phases in order (:func:`train_inpaint` each); with ``resume``, a finished phase is skipped and
    an interrupted one goes on. A phase that starts from a checkpoint gets it copied into its own checkpoints
    first (once). Returns the last phase's model folder."""
    from latentdiff.train.run import DONE

    model = Path(phases[-1].cfg.out) / "model"
    for k, phase in enumerate(phases, 1):
        out = Path(phase.cfg.out)
        if resume and (out / "inpaint" / DONE).is_file() and (out / "model" / "model_index.json").is_file():
            print(f"phase {k}/{len(phases)}: finished earlier, skipped ({out / 'model'})", flush=True)
            continue
        print(f"phase {k}/{len(phases)}: {out}", flush=True)
        seeded = phase.start_checkpoint is not None and _seed(phases[k - 2].cfg, phase, k)
        model = train_inpaint(phase.cfg, resume=resume or seeded)
    return model


def _seed(last: InpaintTrainConfig, phase: InpaintPhase, k: int) -> bool:
    """Copy the previous phase's checkpoint ``phase.start_checkpoint`` into this phase's checkpoints unless it
    has checkpoints already; whether it was copied now."""
    import shutil

    from latentdiff.errors import UserError

    folder = Path(phase.cfg.out) / "inpaint" / "checkpoints"
    if (folder / "latest").exists():
        return False
    source = Path(last.out) / "inpaint" / "checkpoints" / f"ckpt-{phase.start_checkpoint:07d}"
    if not source.is_dir():
        raise UserError(f"{source}: phase {k} starts from this checkpoint of phase {k - 1}, which is not there")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, folder / source.name)
    (folder / "latest").write_text(source.name + "\n")
    return True


# --- masks and captions -------------------------------------------------------------------------

def box_mask(box, size: int, dilate: int) -> np.ndarray:
    """(size, size) uint8 mask, 255 inside ``box`` grown by ``dilate`` px (clamped to the image)."""
    x0, y0, x1, y1 = box
    mask = np.zeros((size, size), np.uint8)
    ys = slice(max(int(np.floor(y0)) - dilate, 0), min(int(np.ceil(y1)) + dilate, size))
    xs = slice(max(int(np.floor(x0)) - dilate, 0), min(int(np.ceil(x1)) + dilate, size))
    mask[ys, xs] = 255
    return mask


_SHAPES_PHRASE = re.compile(r"an? (\w+) (\w+)")


def object_captions(phrase: str, box, canvas: int = 64) -> list[str]:
    """Captions that name one object. For a shapes-world phrase ("a red circle") the size and position are
    read off its box (in the image's own pixels; the shapes canvas is 64) and it is written in the four
    training forms (with or without size and position); any other phrase is used as it is."""
    from latentdiff.data.shapes import COLOURS, SHAPES, SIZE_THRESHOLD, position_of, with_article

    m = _SHAPES_PHRASE.fullmatch(phrase.strip().lower())
    if m is None or m[1] not in COLOURS or m[2] not in SHAPES:
        return [phrase]
    x0, y0, x1, y1 = box
    size = "large" if max(x1 - x0, y1 - y0) >= SIZE_THRESHOLD * canvas / 64 else "small"
    where = f"in the {position_of((x0 + x1) / 2 * 64 / canvas, (y0 + y1) / 2 * 64 / canvas)}"
    core = f"{m[1]} {m[2]}"
    return [with_article(core), f"a {size} {core}", with_article(f"{core} {where}"), f"a {size} {core} {where}"]


@dataclass
class Example:
    """What the sampler needs of one training image: its caption and its objects' boxes (training pixels)
    with their captions."""

    caption: str
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    object_captions: list[list[str]] = field(default_factory=list)


def examples_of(records, size: int) -> list[Example]:
    """One :class:`Example` per folder record; boxes are mapped into the size × size training image."""
    out = []
    for r in records:
        ex = Example(r.text)
        if r.boxes:
            with Image.open(r.image_path) as im:
                w, h = im.size
            for b in r.boxes:
                ex.boxes.append(square_box(b.box, w, h, size))
                ex.object_captions.append(object_captions(b.phrase, b.box, min(w, h)))
        out.append(ex)
    return out


def draw_mask(example: Example, mix: MaskMix, size: int,
              rng: np.random.Generator) -> tuple[str, np.ndarray, int | None]:
    """(kind, mask (size, size) uint8 in {0, 255}, index of the masked object or None) for one example."""
    from latentdiff.data.shapes import rect_mask, stroke_mask

    kind = MASK_KINDS[int(rng.choice(len(MASK_KINDS), p=mix.probabilities()))]
    if kind == "box" and not example.boxes:
        kind = "rect"
    if kind == "box":
        i = int(rng.integers(len(example.boxes)))
        dilate = int(round(mix.box_dilate * size / 64))
        return kind, box_mask(example.boxes[i], size, dilate), i
    if kind == "stroke":
        return kind, stroke_mask(rng, size), None
    if kind == "rect":
        return kind, rect_mask(rng, size), None
    return kind, np.full((size, size), 255, np.uint8), None


def draw_caption(example: Example, obj: int | None, mix: MaskMix, rng: np.random.Generator) -> str:
    if obj is not None and rng.random() < mix.object_caption:
        forms = example.object_captions[obj]
        return forms[int(rng.integers(len(forms)))]
    return example.caption


# --- the stage ----------------------------------------------------------------------------------

class InpaintTrainStage:
    """The inpainting fine-tune as a :class:`latentdiff.train.loop.Stage`."""

    name = "inpaint"

    def __init__(self, cfg: InpaintTrainConfig, unet, base, images: torch.Tensor, latent_mean: torch.Tensor,
                 latent_std: torch.Tensor, examples: list[Example], device, holdout: list | None = None):
        self.cfg, self.device, self.base = cfg, device, base  # base: the text-to-image Pipeline (frozen parts)
        self.x0_weight_floor = loss_floor(cfg.x0_weight_floor, base)
        self.model = unet
        self.images = images  # (N, 3, S, S) uint8
        self.mean, self.std = latent_mean, latent_std  # (N, C, h, w) each
        self.examples, self.holdout = examples, holdout or []
        self.size = images.shape[-1]
        self.num_examples = images.shape[0]
        texts = sorted({e.caption for e in examples} | {c for e in examples for cs in e.object_captions for c in cs})
        self.text_id = {t: i for i, t in enumerate(texts)}
        self.contexts = torch.cat([base.encode_prompt(texts[i:i + 256]).float().cpu()
                                   for i in range(0, len(texts), 256)])  # (U, L, D), each text encoded once
        self.null_context = base.encode_prompt([""])[0].float().cpu()  # (L, D)

    def batch_conditions(self, index: torch.Tensor, generator: torch.Generator):
        """Masks (B, 1, S, S) in {0, 1} and contexts (B, L, D, with dropout) for a batch; the mask kinds."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        masks, ids, kinds = [], [], []
        for i in index.tolist():
            ex = self.examples[i]
            kind, mask, obj = draw_mask(ex, self.cfg.masks, self.size, rng)
            masks.append(mask)
            ids.append(self.text_id[draw_caption(ex, obj, self.cfg.masks, rng)])
            kinds.append(kind)
        text = Conditioning(context=self.contexts[ids])  # (B, L, D)
        ctx = drop_conditions(text, text.null(self.null_context), {"context": self.cfg.cond_dropout},
                              generator)[0].context
        mask = torch.from_numpy(np.stack(masks)).float()[:, None] / 255.0
        return mask, ctx, kinds

    def loss(self, model, index, generator):
        from latentdiff.inpaint import inpainting_concat
        from latentdiff.pixels import to_unit

        mask, ctx = self.batch_conditions(index, generator)[:2]
        concat = inpainting_concat(self.base.vae, to_unit(self.images[index]), mask).to(self.device)  # (B, 1+C, h, w)
        ctx = ctx.to(self.device)
        eps0 = torch.randn(self.mean[index].shape, generator=generator)
        x0 = ((self.mean[index] + self.std[index] * eps0) * self.base.scaling_factor).to(self.device)  # (B, C, h, w)
        t = torch.randint(0, self.base.schedule.num_timesteps, (x0.shape[0],), generator=generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        fn = lambda x_t, tt: model(torch.cat([x_t, concat], 1), tt, encoder_hidden_states=ctx).sample  # noqa: E731
        return diffusion_loss(fn, self.base.schedule, x0, t=t, noise=noise, min_snr_gamma=self.cfg.min_snr_gamma,
                              x0_weight_floor=self.x0_weight_floor)

    def validate(self, model, step, out):
        """Inpaint a few held-out images (an object's box, a prompt naming it in another colour): a grid of
        input | mask | result rows in ``out/val/``."""
        from latentdiff.pixels import save_grid

        cases = validation_cases(self.holdout, self.size, self.cfg.validation_cases)
        if not cases:
            return {"step": step}
        pipe = inpaint_pipeline(model, self.base)
        tiles = []
        for image, mask, prompt in cases:
            result = np.asarray(pipe.inpaint(prompt, image, mask, seed=0, steps=self.cfg.validation_steps)[0])
            tiles += [image, np.repeat(mask[..., None], 3, -1), result]
        save_grid(np.stack(tiles), len(cases), out / "val" / f"step{step:07d}.png")
        return {"step": step}

    def finish(self, model, out):
        model.save_pretrained(str(out / "unet"), safe_serialization=True)
        return out


def validation_cases(records, size: int, n: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image (S, S, 3) uint8, mask (S, S) uint8, prompt) for the first ``n`` held-out records with boxes:
    the first object's box is masked and the prompt names the same shape in the next palette colour."""
    from latentdiff.data.latents import load_image
    from latentdiff.data.shapes import COLOURS

    out = []
    for ex, rec in zip(examples_of(records, size), records):
        if len(out) >= n or not ex.boxes:
            continue
        forms = ex.object_captions[0]
        prompt = forms[-1]
        for c in COLOURS:
            if f" {c} " in f" {prompt} ":
                prompt = prompt.replace(c, COLOURS[(COLOURS.index(c) + 1) % len(COLOURS)], 1)
                break
        out.append((load_image(rec.image_path, size), box_mask(ex.boxes[0], size, 2), prompt))
    return out


# --- the run ------------------------------------------------------------------------------------

def train_inpaint(cfg: InpaintTrainConfig, resume: bool = False) -> Path:
    """Run the recipe (module docstring); return the model folder ``out/model``."""
    from latentdiff.data.latents import cached_latents, load_images
    from latentdiff.models.inpaint import inpainting_unet
    from latentdiff.train.loop import run_stage
    from latentdiff.train.run import StageTimer, derived_run, main_first, seed_init, timed_stage
    from latentdiff.train.stages import vae_latent_stats

    out = Path(cfg.out)
    accelerator, base, train_recs, hold_recs = derived_run(cfg, cfg.loop.mixed_precision, inpainting_ok=True)
    device, main = accelerator.device, accelerator.is_main_process
    size = int(base.vae.config.sample_size)
    images = load_images(train_recs, size, main)  # the stage composes masked inputs from the pixels
    encode = lambda x: vae_latent_stats(base.vae, x, device)  # noqa: E731
    cache = Path(cfg.latent_cache) if cfg.latent_cache else out / "latents"
    mean, std, _ = main_first(accelerator, lambda: cached_latents(cache, base.vae, train_recs, size, encode,
                                                                 lambda: images))
    seed_init(cfg.seed, "inpaint")
    unet = (base.unet if base.is_inpainting else inpainting_unet(base.unet)).train().requires_grad_(True)
    stage = InpaintTrainStage(cfg, unet, base, images, mean, std, examples_of(train_recs, size), device, hold_recs)
    folder = out / "inpaint"
    timer = StageTimer(out / "times.json", f"{device.type} x{accelerator.num_processes}", main)
    timed_stage("inpaint", folder, resume, timer,
           lambda: run_stage(stage, cfg.loop, folder, cfg.seed, accelerator, resume, to_dict(cfg)), cfg.loop.steps)
    if not main:
        return out / "model"
    from diffusers import UNet2DConditionModel

    trained = UNet2DConditionModel.from_pretrained(str(folder / "final" / "unet"))
    return assemble_inpaint_model(out / "model", trained, base, cfg, out)


def assemble_inpaint_model(dest: Path, unet, base, cfg: InpaintTrainConfig, out: Path) -> Path:
    """Write the ``StableDiffusionInpaintPipeline`` folder with the base model's VAE, text encoder, tokenizer
    and scheduler, and latentdiff.json (recipe, base model, generate defaults, training time)."""
    import shutil

    from latentdiff.checkpoint import companion, register_companions

    inpaint_pipeline(unet, base).save(dest)
    info = {"recipe": to_dict(cfg), "base_model": portable_path(base.path) if base.path else "in-memory",
            "x0_weight_floor": loss_floor(cfg.x0_weight_floor, base)}  # what a later phase trains with
    if "generate_defaults" in base.extra:
        info["generate_defaults"] = base.extra["generate_defaults"]
    times = out / "times.json"
    if times.is_file():
        info["train_times"] = json.loads(times.read_text())
    (dest / "latentdiff.json").write_text(json.dumps(info, indent=1))
    clip = companion(base, "clip")
    if clip is not None:
        shutil.copytree(clip, dest / clip.name, dirs_exist_ok=True)
        register_companions(dest, {"clip": clip.name})
    return dest


def inpaint_pipeline(unet, base):
    """A Pipeline of an inpainting U-Net with the base model's other parts (nothing copied)."""
    from latentdiff.pipeline import Pipeline

    return Pipeline.from_components(unet, base.vae, base.text_encoder, base.tokenizer, base.schedule,
                                    base.scheduler_config)
