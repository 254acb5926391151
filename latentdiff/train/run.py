"""``train(cfg)``: data → VAE → CLIP → U-Net → a diffusers-format model folder, each stage resumable.

Output folder layout (``cfg.out``)::

    vae/   checkpoints/ log.jsonl val/ metrics.json final/          (AutoencoderKL)
    clip/  ...                                final/clip final/text_encoder
    unet/  ...                                final/unet
    latents/<key>/                            the latent cache
    model/                                    the assembled StableDiffusionPipeline-format folder
    times.json                                wall time of each stage, with the device
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from latentdiff.config import to_dict
from latentdiff.data.folder import load_folder
from latentdiff.errors import UserError
from latentdiff.train.config import TrainConfig
from latentdiff.train.loop import STAGE_IDS, run_stage, seed_for

DONE = "DONE"


def make_accelerator(device: str, mixed_precision: str):
    """An Accelerator on CUDA unless device is "cpu" (or none is there). "auto" precision is bf16 autocast
    where the device computes bf16 natively: a GPU that supports it, or a CPU with AMX-BF16 or AVX-512-BF16
    (:func:`latentdiff.speed.cpu_bf16_kind`); elsewhere fp32, since emulated bf16 is slower than fp32."""
    from accelerate import Accelerator

    from latentdiff.speed import cpu_bf16_kind

    cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA device is available")
    if mixed_precision == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else cpu_bf16_kind() is not None
        mixed_precision = "bf16" if native else "no"
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        # accelerate keeps one state per process; a later run in the same process (a test, a notebook)
        # with another precision starts afresh instead of failing
        AcceleratorState._reset_state()
    return Accelerator(cpu=not cuda, mixed_precision=mixed_precision)


def prepare_data(cfg: TrainConfig, accelerator):
    folder = Path(cfg.data.folder)
    if cfg.data.shapes_num > 0 and not (folder / "metadata.jsonl").is_file():
        if accelerator.is_main_process:
            from latentdiff.data.shapes import write_dataset

            print(f"writing {cfg.data.shapes_num} shapes-world images to {folder}", flush=True)
            write_dataset(folder, cfg.data.shapes_num, seed=cfg.data.shapes_seed,
                          exclude_held_out=cfg.data.exclude_held_out, workers=min(16, os.cpu_count() or 1),
                          exclude_validation=cfg.data.exclude_validation)
        accelerator.wait_for_everyone()
    records = load_folder(folder)
    holdout = min(cfg.data.holdout, len(records) // 10)
    if len(records) - holdout < 1:
        raise UserError(f"{folder}: needs at least 2 images to train, found {len(records)}")
    return records[: len(records) - holdout], records[len(records) - holdout:]


def main_first(accelerator, fn):
    """``fn()`` on the main process, then on the others once it has finished: the main process builds a
    cache (latents, say) that the other ranks then only read."""
    if accelerator.is_main_process:
        result = fn()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        result = fn()
    return result


def derived_run(cfg, mixed_precision: str, inpainting_ok: bool = False):
    """Set-up shared by the recipes that extend a trained text-to-image model (inpainting, layout,
    segmentation): the accelerator, the base pipeline (refused when its U-Net already has extra inputs,
    except an inpainting model's when ``inpainting_ok``: the inpainting recipe trains one on),
    ``OUT/config.json`` and the shapes data split. Returns (accelerator, base, train records, held-out)."""
    from latentdiff.pipeline import Pipeline

    out = Path(cfg.out)
    accelerator = make_accelerator(cfg.device, mixed_precision)
    device = accelerator.device
    base = Pipeline.load(cfg.base_model or None, device="cuda" if device.type == "cuda" else "cpu")
    if base.is_inpainting and not inpainting_ok:
        raise UserError(f"base_model {cfg.base_model or 'default'}: is an inpainting model (extra U-Net "
                        f"inputs); start from a text-to-image model")
    if base.concat_channels() and not base.is_inpainting:
        raise UserError(f"base_model {cfg.base_model or 'default'}: has extra U-Net inputs; start from a "
                        f"text-to-image model")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    train_recs, hold_recs = prepare_data(cfg, accelerator)
    return accelerator, base, train_recs, hold_recs


def tokenize_captions(tokenizer, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids  # (N, 77) int64


class StageTimer:
    def __init__(self, path: Path, device: str, active: bool):
        self.path, self.device, self.active = path, device, active

    def record(self, stage: str, seconds: float, steps_run: int) -> None:
        if not self.active:
            return
        times = json.loads(self.path.read_text()) if self.path.is_file() else {}
        prev = times.get(stage, {"seconds": 0.0, "steps_run": 0})
        times[stage] = {"seconds": prev["seconds"] + seconds, "steps_run": prev["steps_run"] + steps_run,
                        "device": self.device}
        self.path.write_text(json.dumps(times, indent=1))


def train(cfg: TrainConfig, resume: bool = False, only: tuple[str, ...] | None = None) -> Path:
    """Run the stages of ``cfg`` (or ``only`` those) and assemble the model folder; return it."""
    from latentdiff.data.latents import load_images
    from latentdiff.models.tokenizer import load_clip_tokenizer

    out = Path(cfg.out)
    accelerator = make_accelerator(cfg.device, cfg.unet.loop.mixed_precision)
    device = accelerator.device
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    train_recs, hold_recs = prepare_data(cfg, accelerator)
    size = cfg.vae.model.sample_size
    tokenizer = load_clip_tokenizer(None)
    tokenizer.model_max_length = cfg.clip.text.max_length
    timer = StageTimer(out / "times.json", f"{device.type} x{accelerator.num_processes}", main)
    stages = only or cfg.stages
    images = holdout = None

    def imgs():
        nonlocal images, holdout
        if images is None:
            images, holdout = load_images(train_recs, size, main), load_images(hold_recs, size, False)
        return images, holdout

    if "vae" in stages:
        _run_vae(cfg, out, resume, accelerator, imgs, timer)
    if "clip" in stages:
        _run_clip(cfg, out, resume, accelerator, imgs, train_recs, hold_recs, tokenizer, timer)
    if "unet" in stages:
        return _run_unet(cfg, out, resume, accelerator, imgs, train_recs, tokenizer, timer)
    return out


def outline_images(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 64, 64) uint8: the VAE recipe's ``outlines`` (latentdiff.data.outlines), a function of the seed."""
    from latentdiff.data.outlines import concave_images

    return torch.from_numpy(concave_images(n, seed_for(seed, STAGE_IDS["vae"], 1 << 30) + 1)).permute(0, 3, 1, 2)


def seed_init(seed: int, stage: str) -> None:
    """Seed the global RNG before a stage builds its model, so initial weights follow from the recipe."""
    torch.manual_seed(seed_for(seed, STAGE_IDS[stage], 1 << 30))


def _stage_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def timed_stage(stage_name, folder: Path, resume: bool, timer: StageTimer, fn, steps: int):
    """Run ``fn()`` unless the stage finished earlier (then a resume skips it); record its time. A stage
    stopped by its time limit before ``steps`` is not marked finished: a resume goes on with it."""
    if _stage_done(folder):
        if resume:
            print(f"{stage_name}: finished earlier, skipped", flush=True)
            return
        raise UserError(f"{folder}: stage {stage_name} has already finished; pass --resume to go on "
                        f"with the next stages, or choose another output folder")
    t0 = time.time()
    steps_before = _steps_done(folder)
    try:
        fn()
    finally:  # an interrupted stage's time counts too
        timer.record(stage_name, time.time() - t0, _steps_done(folder) - steps_before)
    if timer.active and _steps_done(folder) >= steps:
        (folder / DONE).write_text("")


def _steps_done(folder: Path) -> int:
    pointer = folder / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("-")[1]) if pointer.is_file() else 0


def _run_vae(cfg, out, resume, accelerator, imgs, timer):
    from latentdiff.train.stages import VAETrainStage

    folder = out / "vae"

    def go():
        images, holdout = imgs()
        if cfg.vae.outlines:
            images = torch.cat([images, outline_images(cfg.vae.outlines, cfg.seed)])
        seed_init(cfg.seed, "vae")
        stage = VAETrainStage(cfg.vae, images, holdout, accelerator.device)
        run_stage(stage, cfg.vae.loop, folder, cfg.seed, accelerator, resume, to_dict(cfg.vae))

    timed_stage("vae", folder, resume, timer, go, cfg.vae.loop.steps)


def _run_clip(cfg, out, resume, accelerator, imgs, train_recs, hold_recs, tokenizer, timer):
    from latentdiff.train.stages import ClipTrainStage

    folder = out / "clip"

    def go():
        images, holdout = imgs()
        seed_init(cfg.seed, "clip")
        stage = ClipTrainStage(cfg.clip, images, tokenize_captions(tokenizer, [r.text for r in train_recs]), holdout,
                               tokenize_captions(tokenizer, [r.text for r in hold_recs]), accelerator.device)
        run_stage(stage, cfg.clip.loop, folder, cfg.seed, accelerator, resume, to_dict(cfg.clip))

    timed_stage("clip", folder, resume, timer, go, cfg.clip.loop.steps)


def finished_stages(out: Path):
    """The VAE and the text encoder of run folder ``out``, from its finished stages (eval mode, CPU)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    vae_dir, text_dir = out / "vae" / "final", out / "clip" / "final" / "text_encoder"
    for need in (vae_dir, text_dir):
        if not (need / "config.json").is_file():
            raise UserError(f"{need}: missing; train the earlier stages first (stages: [vae, clip, unet])")
    return AutoencoderKL.from_pretrained(str(vae_dir)).eval(), CLIPTextModel.from_pretrained(str(text_dir)).eval()


def _run_unet(cfg, out, resume, accelerator, imgs, train_recs, tokenizer, timer):
    from latentdiff.data.latents import cached_latents
    from latentdiff.train.stages import UNetTrainStage, vae_latent_stats

    folder, device = out / "unet", accelerator.device
    vae, text_encoder = finished_stages(out)
    vae = vae.to(device)
    size = cfg.vae.model.sample_size
    encode = lambda x: vae_latent_stats(vae, x, device)  # noqa: E731
    mean, std, _ = main_first(accelerator, lambda: cached_latents(out / "latents", vae, train_recs, size, encode,
                                                                 lambda: imgs()[0]))
    tokens = tokenize_captions(tokenizer, [r.text for r in train_recs])
    null = tokenize_captions(tokenizer, [""])[0]
    assemble = lambda unet, text, dest: assemble_model(dest, unet, vae, text or text_encoder, tokenizer,  # noqa: E731
                                                       cfg, out)
    seed_init(cfg.seed, "unet")
    stage = UNetTrainStage(cfg.unet, mean, std, tokens, null, text_encoder, vae.config.scaling_factor, device, assemble)
    if cfg.unet.grounding_loss > 0:
        stage.set_grounding(cfg.unet.grounding_loss, *grounding_data(train_recs, tokenizer, size),
                            min_t=cfg.unet.grounding_min_t)
    timed_stage("unet", folder, resume, timer,
           lambda: run_stage(stage, cfg.unet.loop, folder, cfg.seed, accelerator, resume, to_dict(cfg.unet)),
           cfg.unet.loop.steps)
    if not accelerator.is_main_process:
        return out / "model"
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(str(folder / "final" / "unet"))
    if (folder / "final" / "text_encoder").is_dir():  # trained with the U-Net (unet.text_encoder_lr_scale)
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "final" / "text_encoder")).eval()
    return assemble_model(out / "model", unet, vae, text_encoder, tokenizer, cfg, out)


def grounding_data(records, tokenizer, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the grounding loss needs of each record: the object each caption token names, (N, L) int8, and
    the objects' pixels, (N, size, size) uint8 (:mod:`latentdiff.train.grounding`). Every record needs boxes
    and a segmentation map (the shapes world writes both)."""
    import numpy as np
    from PIL import Image

    from latentdiff.train.grounding import instance_map, token_objects

    length = tokenizer.model_max_length
    token_obj = np.full((len(records), length), -1, np.int8)
    instances = np.zeros((len(records), size, size), np.uint8)
    for i, rec in enumerate(records):
        if not rec.boxes or rec.segmap_path is None:
            raise UserError(f"unet.grounding_loss needs boxes and a segmap for every image; "
                            f"{rec.image_path.name} (metadata.jsonl line {rec.line}) has "
                            f"{'no boxes' if not rec.boxes else 'no segmap'}")
        kinds = [tuple(b.phrase.split()[-2:]) for b in rec.boxes]  # "a red circle" -> ("red", "circle")
        token_obj[i] = token_objects(tokenizer, rec.text, kinds, length)
        with Image.open(rec.segmap_path) as im:
            scale = size / im.width  # boxes are in the image's pixels
            seg = np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.NEAREST))
        instances[i] = instance_map(seg, [tuple(c * scale for c in b.box) for b in rec.boxes])
    return torch.from_numpy(token_obj), torch.from_numpy(instances)


def assemble_model(dest: Path, unet, vae, text_encoder, tokenizer, cfg: TrainConfig, out: Path) -> Path:
    """Write the diffusers-format model folder (plus clip/ and latentdiff.json) via the Pipeline."""
    import shutil

    from latentdiff.checkpoint import companion_map, register_companions
    from latentdiff.diffusion.schedule import Schedule
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.from_components(unet, vae, text_encoder, tokenizer, Schedule.from_config(cfg.unet.schedule))
    # assembling again (a finished run resumed) keeps the companions installed since whose folders are there
    before = companion_map(dest) if dest.is_dir() else {}
    pipe.save(dest)
    kept = {role: sub for role, sub in before.items() if (dest / sub).is_dir()}
    info = {"recipe": to_dict(cfg)}
    if cfg.generate.as_dict():
        info["generate_defaults"] = cfg.generate.as_dict()
    times = out / "times.json"
    if times.is_file():
        info["train_times"] = json.loads(times.read_text())
    (dest / "latentdiff.json").write_text(json.dumps(info, indent=1))
    clip_src = out / "clip" / "final" / "clip"
    if clip_src.is_dir():
        shutil.copytree(clip_src, dest / "clip", dirs_exist_ok=True)
        kept["clip"] = "clip"
    if kept:
        register_companions(dest, kept)
    return dest
