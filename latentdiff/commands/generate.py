"""``latentdiff generate``, ``latentdiff replay`` and ``latentdiff export``.

Flags are checked here and turned into one-line :class:`UserError` messages naming the flag and the value
(argparse's own errors would add a usage block). Sizes, images, steps and batches are bounded by the
limits of :mod:`latentdiff.limits` (``--max-side`` and the other limit flags raise them), checked before the
model loads; prompts are checked as text before they reach the tokenizer. torch and diffusers are imported
only when a command runs, so ``latentdiff generate --help`` stays fast.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import warnings
from pathlib import Path

from latentdiff.config import SAMPLERS
from latentdiff.errors import UserError
from latentdiff.limits import MAX_SEED, Limits, check_scale, check_text, parse_float

FORMATS = ("diffusers", "single-file")
DEFAULT_CLASSIFIER_SCALE = 5.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``generate``, ``replay`` and ``export``."""
    g = sub.add_parser("generate", help="generate images from a text prompt",
                       description="Generate PNG images from a prompt; each PNG records how it was made "
                                   "(see 'latentdiff replay'). Prints the paths it writes.")
    g.add_argument("prompt", help="the text prompt ('' for unconditional samples)")
    g.add_argument("--negative-prompt", default="", metavar="TEXT",
                   help="what to steer away from (the unconditional branch of guidance; default: '')")
    model_flags(g)
    g.add_argument("--num-images", default="1", metavar="N", help="number of images (default: 1)")
    g.add_argument("--steps", default=None, metavar="N", help="sampling steps (default: the model's, usually 25)")
    g.add_argument("--guidance", default=None, metavar="W",
                   help="classifier-free guidance scale w; 1 = no guidance (default: the model's, usually 4.0)")
    g.add_argument("--sampler", default=None, metavar="NAME",
                   help=f"{' | '.join(SAMPLERS)} (default: the model's, usually dpm++)")
    g.add_argument("--seed", default="0", metavar="S", help="image k uses seed S + k (default: 0)")
    g.add_argument("--height", default=None, metavar="H", help="image height in pixels (default: the model's)")
    g.add_argument("--width", default=None, metavar="W", help="image width in pixels (default: the model's)")
    g.add_argument("--batch-size", default=None, metavar="N", help="images per forward pass (default: up to 8)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="apply a LoRA file (from 'latentdiff finetune', or any diffusers-loadable SD LoRA) with "
                        "weight SCALE (default 1); a bare NAME is a LoRA shipped in the package; repeat to "
                        "stack several")
    g.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: outputs)")
    g.add_argument("--device", default="auto", metavar="DEV", help="cpu | cuda | auto (default: auto)")
    g.add_argument("--speed", default=None, metavar="LIST",
                   help="speed options, a comma list: auto (what this machine supports: on a CPU with native "
                        "bf16, bf16 and classic attention; recorded as the options it chose), fast (every GPU "
                        "option), fp16|bf16, channels_last, sdpa|eager, fuse_qkv, compile[=MODE], compile_vae, "
                        "cuda_graph, threads=N (see docs/performance.md); plain: the exact float32 path (the default)")
    g.add_argument("--classifier-guidance", default=None, metavar="CLASS",
                   help="classifier guidance towards a shape or colour (circle, square, triangle, red, ...); "
                        "with an empty prompt the default guidance becomes 1 (classifier-free guidance is the "
                        "identity when the prompt equals the negative prompt)")
    g.add_argument("--classifier-scale", default=None, metavar="S",
                   help=f"classifier guidance scale s (default: {DEFAULT_CLASSIFIER_SCALE:g}; 0 = none)")
    g.add_argument("--classifier", default=None, metavar="DIR",
                   help="classifier folder from 'latentdiff train-classifier' (default: MODEL/classifier)")
    spatial_flags(g)
    limit_flags(g)
    g.set_defaults(handler=run_generate)

    r = sub.add_parser("replay", help="regenerate an image from the record inside its PNG",
                       description="Regenerate an image written by 'latentdiff generate' from the record in its "
                                   "PNG; bit-identical on the same machine and software.")
    r.add_argument("image", help="a PNG written by latentdiff generate")
    r.add_argument("--model", default=None, metavar="PATH",
                   help="use this model instead of the recorded path (its weights must match the record)")
    r.add_argument("--allow-unsafe-pickle", action="store_true", help="allow loading .ckpt/.pt pickle files")
    r.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: outputs)")
    r.add_argument("--device", default=None, metavar="DEV", help="cpu | cuda | auto (default: the recorded one)")
    r.add_argument("--segmap", default=None, metavar="PNG",
                   help="the segmentation map an image made with --segmap was drawn with (the record keeps only "
                        "its SHA-256); boxes and scales come from the record")
    r.add_argument("--layout-model", default=None, metavar="DIR",
                   help="layout checkpoint (default: the recorded folder, else MODEL/<its name>)")
    r.add_argument("--segmap-model", default=None, metavar="DIR",
                   help="segmentation ControlNet (default: the recorded folder, else MODEL/<its name>)")
    limit_flags(r, "a record beyond them is refused before anything runs")
    r.set_defaults(handler=run_replay)

    e = sub.add_parser("export", help="write a model as a diffusers folder or one LDM .safetensors file",
                       description="Export a model. 'diffusers': a StableDiffusionPipeline folder. 'single-file': "
                                   "one .safetensors in the original LDM key layout (loads in diffusers' "
                                   "from_single_file, A1111, ComfyUI) plus a diffusers config folder "
                                   "<stem>_config/ next to it.")
    model_flags(e)
    e.add_argument("--format", required=True, metavar="FORMAT", help=" | ".join(FORMATS))
    e.add_argument("--out", required=True, metavar="PATH", help="output folder (diffusers) or .safetensors file")
    e.add_argument("--text-layout", default="auto", metavar="LAYOUT",
                   help="single-file text encoder keys: clip (SD 1.x), open_clip (SD 2.x) or auto (default)")
    e.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"),
                   help="weights' precision in the export (fp16 halves the size; loading upcasts to fp32)")
    e.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="bake a LoRA file into the exported weights (at SCALE, default 1); repeatable")
    e.set_defaults(handler=run_export)


def spatial_flags(g) -> None:
    """The --layout / --segmap flags (and their scales, checkpoints, region phrases, regional text), shared by
    ``generate`` and ``inpaint``; :func:`check_spatial_flags` and :func:`spatial_conditions` read them."""
    g.add_argument("--layout", default=None, metavar="FILE",
                   help='layout JSON: [{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...] in pixels '
                        '(x1, y1 exclusive); needs a layout checkpoint (MODEL/layout_controlnet, MODEL/gligen or '
                        '--layout-model)')
    g.add_argument("--layout-normalized", action="store_true", help="the layout's boxes are in [0, 1]")
    g.add_argument("--layout-scale", default=None, metavar="S",
                   help="guidance scale of the layout or of --segmap's region phrases (1 = no extra guidance; "
                        "default: the layout checkpoint's layout_scale, 3 for the default model's, else 1)")
    g.add_argument("--layout-model", default=None, metavar="DIR",
                   help="layout checkpoint folder, a layout ControlNet or GLIGEN layers, for --layout or --segmap's "
                        "region phrases (default: MODEL/layout_controlnet, else MODEL/gligen)")
    g.add_argument("--segmap", default=None, metavar="PNG",
                   help="segmentation map: single-channel or palette PNG of class ids (0 background, 1 circle, "
                        "2 square, 3 triangle, 4 star) of the image's size; needs MODEL/controlnet or --segmap-model")
    g.add_argument("--segmap-scale", default=None, metavar="S",
                   help="guidance scale of the segmentation map (1 = no extra guidance, default: 1)")
    g.add_argument("--segmap-model", default=None, metavar="DIR",
                   help="segmentation ControlNet folder (default: MODEL/controlnet)")
    g.add_argument("--no-region-phrases", action="store_true",
                   help="with --segmap and no --layout: draw the map alone. By default the objects a shapes-world "
                        "prompt names are bound to the map's regions of their class (by the positions, sizes and "
                        "relation it states) and each drawn as a layout phrase in its region's box, when the model "
                        "has a layout checkpoint (see docs/layout.md)")
    g.add_argument("--regional-text", default=None, metavar="A",
                   help="the share in [0, 1] of each layout box's text that is its phrase alone, the prompt's "
                        "elsewhere (regional text: keeps one object's colour out of another's box; default: the "
                        "layout checkpoint's regional_text, 0.5 for the default model's, else 0)")


def model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a diffusers folder or a single-file .safetensors checkpoint (default: the default model)")
    p.add_argument("--config", default=None, metavar="DIR|NAME",
                   help="component configs for a single-file checkpoint: a diffusers folder or sd1 | sd2 | "
                        "sd2-base (default: embedded, <stem>_config/, or detected from the weights)")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow loading .ckpt/.pt pickle files (they can run arbitrary code)")


def limit_flags(p: argparse.ArgumentParser, note: str = "", defaults: Limits = Limits()) -> None:
    """``--max-side``, ``--max-images``, ``--max-steps`` and ``--max-batch-pixels`` (see latentdiff.limits)."""
    g = p.add_argument_group("limits", "bounds on the work one call may ask for" + (f"; {note}" if note else ""))
    g.add_argument("--max-side", default=str(defaults.max_side), metavar="PX",
                   help=f"largest height or width in pixels, generated or read ({defaults.max_side})")
    g.add_argument("--max-images", default=str(defaults.max_images), metavar="N",
                   help=f"most images per call ({defaults.max_images})")
    g.add_argument("--max-steps", default=str(defaults.max_steps), metavar="N",
                   help=f"most sampler steps ({defaults.max_steps})")
    g.add_argument("--max-batch-pixels", default=str(defaults.max_batch_pixels), metavar="N",
                   help=f"most latent pixels (images x H/f x W/f) in one forward batch ({defaults.max_batch_pixels:,})")


def parse_limits(args: argparse.Namespace, defaults: Limits = Limits()) -> Limits:
    """The :class:`Limits` the limit flags give (the other fields from ``defaults``)."""
    from dataclasses import replace

    return replace(defaults, max_side=parse_int("--max-side", args.max_side, 1),
                   max_images=parse_int("--max-images", args.max_images, 1),
                   max_steps=parse_int("--max-steps", args.max_steps, 1),
                   max_batch_pixels=parse_int("--max-batch-pixels", args.max_batch_pixels, 1))


def check_request(limits: Limits, *, prompt: str, negative_prompt: str, num: int, steps: int | None,
                  height: int | None, width: int | None, batch: int | None) -> None:
    """What can be checked before the model loads: the prompts as text and the limits."""
    check_text(prompt, "prompt", limits.max_prompt_chars)
    check_text(negative_prompt, "--negative-prompt", limits.max_prompt_chars)
    limits.check_images(num, "--num-images")
    if batch is not None:
        limits.check_images(batch, "--batch-size")
    if steps is not None:
        limits.check_steps(steps, "--steps")
    for flag, value in (("--height", height), ("--width", width)):
        if value is not None:
            limits.check_side(flag, value)


# --- flag parsing -------------------------------------------------------------------------------------

def parse_int(flag: str, text: str | None, minimum: int | None = None, maximum: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected an integer") from None
    if minimum is not None and value < minimum:
        raise UserError(f"{flag} {value}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise UserError(f"{flag} {value}: must be at most {maximum}")
    return value


def parse_sampler(text: str | None) -> str | None:
    if text is not None and text not in SAMPLERS:
        raise UserError(f"--sampler {text!r}: unknown sampler; expected one of {', '.join(SAMPLERS)}")
    return text


def parse_device(text: str | None) -> str | None:
    if text is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise UserError(f"--device {text!r}: expected cpu, cuda or auto")
    return text


def prepare_out_dir(text: str) -> Path:
    """Create the output folder and prove it is writable (by writing into it: root ignores modes)."""
    out = Path(text)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".latentdiff-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write to this folder ({exc.strerror or exc})") from None
    return out


def prompt_slug(prompt: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-")
    return slug or "unconditional"


def free_path(out: Path, stem: str) -> Path:
    path, n = out / f"{stem}.png", 1
    while path.exists():
        path, n = out / f"{stem}_{n}.png", n + 1
    return path


class UserWarnings(warnings.catch_warnings):
    """Within the block, a :class:`PromptTruncatedWarning` prints as one line on stderr."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def __enter__(self):
        from latentdiff.models.text import PromptTruncatedWarning

        super().__enter__()
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, PromptTruncatedWarning):
                print(f"latentdiff {self.command}: warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        warnings.simplefilter("always", PromptTruncatedWarning)
        return self


def check_classifier_flags(name: str | None, scale_text: str | None, path_text: str | None) -> float | None:
    """Check the classifier-guidance flags before any model is loaded; return the scale (None: unset)."""
    if name is None and (scale_text is not None or path_text is not None):
        raise UserError("--classifier-scale and --classifier need --classifier-guidance CLASS")
    return parse_float("--classifier-scale", scale_text)


def classifier_guide(pipe, name: str | None, scale: float | None, path_text: str | None):
    """The :class:`~latentdiff.models.classifier.ClassifierGuide` the flags ask for, or None."""
    if name is None:
        return None
    from latentdiff.checkpoint import companion
    from latentdiff.models.classifier import ClassifierGuide, load_classifier

    path = Path(path_text) if path_text else companion(pipe, "classifier")
    if path is None or not path.exists():
        where = f"--classifier {path}: not found" if path_text else "this model has no classifier/ folder"
        raise UserError(f"--classifier-guidance: {where}; pass --classifier DIR (written by 'latentdiff "
                        f"train-classifier')")
    guide = ClassifierGuide(load_classifier(path, pipe.device), name,
                            DEFAULT_CLASSIFIER_SCALE if scale is None else scale, path=str(path.resolve()))
    guide.check(pipe.schedule, pipe.unet.config.in_channels)
    return guide


def check_spatial_flags(args: argparse.Namespace) -> dict:
    """Check --layout/--segmap flags before any model is loaded; the scales."""
    needs = {"--layout-normalized": ("--layout",), "--layout-scale": ("--layout", "--segmap"),
             "--layout-model": ("--layout", "--segmap"), "--segmap-scale": ("--segmap",),
             "--segmap-model": ("--segmap",), "--no-region-phrases": ("--segmap",),
             "--regional-text": ("--layout", "--segmap")}
    for flag, mains in needs.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value not in (None, False) and all(getattr(args, m[2:]) is None for m in mains):
            raise UserError(f"{flag} needs {' or '.join(f'{m} FILE' for m in mains)}")
    for flag, path in (("--layout", args.layout), ("--segmap", args.segmap)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {path}: file not found")
    segmap_scale = check_scale("--segmap-scale", parse_float("--segmap-scale", args.segmap_scale))
    share = parse_float("--regional-text", args.regional_text)
    if share is not None and not 0.0 <= share <= 1.0:
        raise UserError(f"--regional-text {args.regional_text}: expected a share in [0, 1]")
    return {"layout_scale": check_scale("--layout-scale", parse_float("--layout-scale", args.layout_scale)),
            "segmap_scale": segmap_scale, "regional_text": share}  # None: the default (request_conditions)


def spatial_checkpoint(pipe, flag: str, explicit: str | None, role: str, required: bool = True) -> Path | None:
    """An explicit checkpoint folder, else the model's companion ``role`` ("layout" or "segmap",
    :func:`latentdiff.checkpoint.companion`); when it has none, an error (or None when not ``required``)."""
    from latentdiff.checkpoint import COMPANION_FOLDERS, companion

    if explicit is not None:
        if not Path(explicit).is_dir():
            raise UserError(f"{flag} {explicit}: folder not found")
        return Path(explicit)
    folder = companion(pipe, role)
    if folder is not None or not required:
        return folder
    raise UserError(f"{pipe.name}: the model has no {'/ or '.join(COMPANION_FOLDERS[role])}/ checkpoint; pass "
                    f"{flag} DIR (written by 'latentdiff train-spatial')")


def spatial_conditions(pipe, args: argparse.Namespace, scales: dict, height: int | None, width: int | None,
                       guidance: float | None):
    """Attach the checkpoints the flags need, read the layout / segmentation map and turn them into the
    call's conditions and text guidance (:func:`latentdiff.conditions.request_conditions`, as the web app
    does); its notes go to stderr."""
    from latentdiff.conditions import request_conditions
    from latentdiff.layout import read_layout, read_segmap

    layout = segmap = None
    if args.layout is not None or args.segmap is not None:
        size = pipe.resolve(height=height, width=width)  # the layout's boxes and the map are the image's size
        h, w = size["height"], size["width"]
        if args.layout is not None:
            pipe.attach_layout(spatial_checkpoint(pipe, "--layout-model", args.layout_model, "layout"))
            layout = read_layout(args.layout, w, h, args.layout_normalized, pipe.layout_slots)
        if args.segmap is not None:
            pipe.attach_segmap(spatial_checkpoint(pipe, "--segmap-model", args.segmap_model, "segmap"))
            segmap = read_segmap(args.segmap, w, h)
    conditions = request_conditions(
        pipe, args.prompt, layout, segmap, **scales, region_phrases=not args.no_region_phrases, guidance=guidance,
        find_layout=lambda: spatial_checkpoint(pipe, "--layout-model", args.layout_model, "layout",
                                               required=False))
    for note in conditions.notes:
        print(note, file=sys.stderr)
    return conditions


def load_pipeline(args: argparse.Namespace, model: str | None, device: str | None):
    from latentdiff.pipeline import Pipeline

    if getattr(args, "own_process", False):
        # The command is the whole process: the ~10^6 objects that importing torch, diffusers and transformers
        # made live as long as it does. Moving them out of the cyclic collector's reach spares the full
        # collections that loading a model would otherwise run over all of them (~0.2 s of start-up;
        # BENCHMARKS.md, "Start-up"). Not done for a caller's process (main(argv) from Python).
        import gc

        gc.freeze()
    return Pipeline.load(model, device=device or "auto", config=getattr(args, "config", None),
                         allow_unsafe_pickle=args.allow_unsafe_pickle)


# --- handlers -----------------------------------------------------------------------------------------

def run_generate(args: argparse.Namespace) -> int:
    from latentdiff.lora import parse_lora_spec
    from latentdiff.provenance import Record, save_png
    from latentdiff.speed import speed_option

    limits = parse_limits(args)
    num = parse_int("--num-images", args.num_images, 1)
    steps = parse_int("--steps", args.steps, 1)
    guidance = parse_float("--guidance", args.guidance)
    sampler = parse_sampler(args.sampler)
    seed = parse_int("--seed", args.seed, 0, MAX_SEED - (num - 1))
    height = parse_int("--height", args.height, 1)
    width = parse_int("--width", args.width, 1)
    batch = parse_int("--batch-size", args.batch_size, 1)
    check_request(limits, prompt=args.prompt, negative_prompt=args.negative_prompt, num=num, steps=steps,
                  height=height, width=width, batch=batch)
    device = parse_device(args.device)
    cg_scale = check_classifier_flags(args.classifier_guidance, args.classifier_scale, args.classifier)
    speed = speed_option(args.speed)
    loras = [parse_lora_spec(text) for text in args.lora]
    spatial_flags = check_spatial_flags(args)
    out = prepare_out_dir(args.out)
    pipe = load_pipeline(args, args.model, device)
    pipe.limits = limits
    conditions = spatial_conditions(pipe, args, spatial_flags, height, width, guidance)
    if loras:
        pipe.load_loras(loras)
    guide = classifier_guide(pipe, args.classifier_guidance, cg_scale, args.classifier)
    if speed is not None:
        pipe.optimize(speed)  # after LoRAs and spatial checkpoints, which must come first
    if guide is not None and guidance is None and args.prompt == args.negative_prompt:
        guidance = 1.0  # ε_∅ + w(ε_∅ − ε_∅) = ε_∅: skip the second pass
    else:
        guidance = conditions.guidance
    with UserWarnings("generate"):
        images = pipe.generate(args.prompt, negative_prompt=args.negative_prompt, num_images=num, steps=steps,
                               guidance=guidance, sampler=sampler, seed=seed, height=height, width=width,
                               progress=sys.stderr.isatty(), batch_size=batch, guide=guide,
                               spatial=conditions.spatial)
    for img in images:
        record = Record.from_json(img.info["latentdiff"])
        path = save_png(img, free_path(out, f"{prompt_slug(args.prompt)}_{record.seed}"), record)
        print(path)
    return 0


def _replay_model(record, image: Path, override: str | None) -> str | None:
    """Which model to load for a record: --model, else the recorded path, else the default model."""
    if override is not None:
        return override
    if record.model_path is None:
        return None
    if not Path(record.model_path).exists():
        raise UserError(f"{image}: model '{record.model_name}' not found at {record.model_path}; "
                        f"pass --model PATH")
    return record.model_path


def _replay_speed(options: dict, device: str, image: Path) -> dict:
    """The recorded speed options that apply on ``device``: CUDA graphs and compilation need the GPU they
    were made on (elsewhere the result differs in the last bits anyway, and compiling takes minutes)."""
    gpu_only = ("cuda_graph", "compile", "compile_vae")
    if device == "cuda" or not any(k in options for k in gpu_only):
        return dict(options)
    print(f"latentdiff replay: note: {image} was made with {', '.join(k for k in gpu_only if k in options)}; "
          f"replaying without them on {device}", file=sys.stderr)
    return {k: v for k, v in options.items() if k not in gpu_only}


def _replay_checkpoints(pipe, record, image: Path, args: argparse.Namespace) -> None:
    """Attach the layout / segmentation checkpoints an image was made with: --layout-model/--segmap-model,
    else the recorded folder, else the subfolder of the loaded model's folder of the same name (a model moved
    or installed elsewhere: the name, not the role, so it is the checkpoint the image was made with)."""
    made = record.extra.get("spatial_checkpoints") or {}
    for kind, flag, explicit in (("layout", "--layout-model", args.layout_model),
                                 ("segmap", "--segmap-model", args.segmap_model)):
        if kind not in record.extra:
            if explicit is not None:
                what = "layout" if kind == "layout" else "segmentation map"
                raise UserError(f"{flag}: {image} was made without a {what}")
            continue
        recorded = made.get(kind)
        folder = spatial_checkpoint(pipe, flag, explicit, kind) if explicit is not None else None
        if folder is None and recorded and Path(recorded).is_dir():
            folder = Path(recorded)
        moved = pipe.path / Path(recorded).name if recorded and pipe.path is not None else None
        if folder is None and moved is not None and moved.is_dir():
            folder = moved
        if folder is None:
            raise UserError(f"{image}: made with the {kind} checkpoint {recorded}, which is not there any more; "
                            f"pass {flag} DIR")
        (pipe.attach_layout if kind == "layout" else pipe.attach_segmap)(folder)


def run_replay(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from latentdiff.provenance import Record, read_record, save_png

    image = Path(args.image)
    limits = parse_limits(args)
    record = read_record(image, limits)
    if args.segmap is not None and not Path(args.segmap).is_file():
        raise UserError(f"--segmap {args.segmap}: file not found")
    device = parse_device(args.device) or record.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"latentdiff replay: warning: {image} was made on {record.device}; replaying on cpu, "
                  f"the result may differ in the last bits", file=sys.stderr)
            device = "cpu"
    out = prepare_out_dir(args.out)
    pipe = load_pipeline(args, _replay_model(record, image, args.model), device)
    pipe.limits = limits
    if pipe.weights_sha256 != record.model_sha256:
        raise UserError(f"{image}: the model at {pipe.path} has weights sha256 {pipe.weights_sha256[:12]}…, "
                        f"the image was made with {record.model_sha256[:12]}…")
    _replay_checkpoints(pipe, record, image, args)  # before the speed options, which must come last
    segmap = None
    if args.segmap is not None:
        from latentdiff.layout import read_segmap

        segmap = read_segmap(args.segmap, record.width, record.height)
    if "speed" in record.extra:
        pipe.optimize(**_replay_speed(record.extra["speed"], pipe.device.type, image))
    guide = None
    if "classifier_guidance" in record.extra:
        cg = record.extra["classifier_guidance"]
        guide = classifier_guide(pipe, cg.get("class"), float(cg.get("scale", DEFAULT_CLASSIFIER_SCALE)),
                                 cg.get("classifier_path"))
    with UserWarnings("replay"):
        img = pipe.replay(record, guide=guide, segmap=segmap)
    path = save_png(img, free_path(out, f"{image.stem}_replay"), Record.from_json(img.info["latentdiff"]))
    print(path)
    with Image.open(image) as orig:
        a, b = np.asarray(orig.convert("RGB")).astype(int), np.asarray(img).astype(int)
    if a.shape == b.shape and (a == b).all():
        print(f"identical to {image}")
        return 0
    diff = int(np.abs(a - b).max()) if a.shape == b.shape else "shape"
    print(f"latentdiff replay: warning: differs from {image} (max abs pixel difference {diff})", file=sys.stderr)
    return 1


def _copy_aux_folders(src, out: Path, half: bool = False) -> None:
    """Copy the companion folders of model folder ``src`` (:func:`latentdiff.checkpoint.companion_folders`:
    the trained CLIP with its image tower, the noise-aware classifier, layout/segmentation checkpoints) into
    ``out`` under their names and register them there by role; ``half``: their float32 weights are stored as
    float16 (loaders upcast them), as the components are."""
    import shutil

    from latentdiff.checkpoint import COMPANION_FOLDERS, companion, companion_folders, register_companions

    if src is None or not Path(src).is_dir():
        return
    for folder in companion_folders(src):
        shutil.copytree(folder, out / folder.name)
        for f in (out / folder.name).rglob("*.safetensors") if half else ():
            _halve_safetensors(f)
    roles = {role: companion(src, role) for role in COMPANION_FOLDERS}
    register_companions(out, {role: folder.name for role, folder in roles.items() if folder is not None},
                        replace=True)


def _halve_safetensors(path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)


def run_export(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UserError(f"--format {args.format!r}: expected one of {', '.join(FORMATS)}")
    if args.text_layout not in ("auto", "clip", "open_clip"):
        raise UserError(f"--text-layout {args.text_layout!r}: expected auto, clip or open_clip")
    from latentdiff.lora import parse_lora_spec

    loras = [parse_lora_spec(text) for text in args.lora]  # a missing file fails before anything is written
    out = Path(args.out)
    if args.format == "single-file" and out.suffix != ".safetensors":
        raise UserError(f"--out {out}: a single-file export must end in .safetensors")
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists; choose a new path")
    try:
        (out.parent if args.format == "single-file" else out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror or exc})") from None
    pipe = load_pipeline(args, args.model, "cpu")
    if loras:
        pipe.load_loras(loras)
        for entry in pipe.fuse_loras():
            print(f"fused {entry['path']} (scale {entry['scale']:g}, sha256 {entry['sha256'][:12]}…)")
    if args.dtype == "fp16":
        import torch

        pipe.to(dtype=torch.float16)
    cls = "StableDiffusionInpaintPipeline" if pipe.is_inpainting else "StableDiffusionPipeline"
    if args.format == "diffusers":
        pipe.save(out)
        _copy_aux_folders(pipe.path, out, half=args.dtype == "fp16")
        print(out)
        print(f"load with: {cls}.from_pretrained({str(out)!r}, safety_checker=None)")
        return 0
    path, config_dir = pipe.export_single_file(out, text_layout=args.text_layout)
    print(path)
    print(config_dir)
    print(f"load with: {cls}.from_single_file({str(path)!r}, config={str(config_dir)!r})")
    return 0
