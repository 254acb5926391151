"""``latentdiff eval``: the evaluation suite of a model, as one report folder (Markdown + PNG + JSON).

Sections: per-attribute accuracy on the held-out prompts, a classifier-free guidance sweep (accuracy and
diversity against w), a sampler sweep (accuracy against steps), a classifier-guidance sweep (share of the
requested shape against s), the variational bound in bits/dim on held-out latents, and Fréchet distances
to real images (CLIP image tower; Inception with --inception-weights). See latentdiff/eval/suite.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from latentdiff.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: accuracy, guidance/sampler/classifier sweeps, bits/dim, FD",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder or .safetensors (default: the default model)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="evaluate the model with this LoRA file applied at weight SCALE (default 1); repeat to stack")
    p.add_argument("--suite", default="quick", help="quick (≤ 15 min on 2 CPU cores for the default model) | full")
    p.add_argument("--out", default="eval_out", help="report folder (default: eval_out)")
    p.add_argument("--sections", default=None, metavar="LIST",
                   help="comma-separated subset of accuracy,guidance,samplers,classifier,bpd,fd (default: all)")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="latent classifier for the classifier-guidance sweep (default: MODEL/classifier)")
    p.add_argument("--clip", default=None, metavar="DIR",
                   help="CLIP folder whose image tower defines the FD feature space (default: MODEL/clip)")
    p.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="Inception-v3 weights (.pth or .safetensors) for FID; pytorch-fid's file gives standard FID")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="real images for bits/dim and FD from this folder (default: fresh shapes-world scenes)")
    p.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W", help="w values of the sweep")
    p.add_argument("--classifier-scales", type=float, nargs="+", default=None, metavar="S",
                   help="s values of the classifier-guidance sweep")
    p.add_argument("--num-images", type=int, default=None, help="images per prompt (accuracy and guidance sweep)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N held-out prompts (0: all 50)")
    p.add_argument("--sampler", default=None, help="ddpm | ddim | dpm++ | euler (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="image j of every prompt starts from seed + j")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 16)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--speed", default="auto", metavar="LIST",
                   help="speed options as for 'latentdiff generate --speed' (default: auto, the fast path this "
                        "machine supports, as recorded in the report); plain: the exact float32 path")
    p.set_defaults(handler=run)


def _suite(args):
    from latentdiff.eval.suite import SUITES

    if args.suite not in SUITES:
        raise UserError(f"--suite {args.suite!r}: expected quick or full")
    suite = SUITES[args.suite]
    changes = {"seed": args.seed}
    for flag, value, fields in (("--num-images", args.num_images, ("accuracy_images", "guidance_images")),
                                ("--batch-size", args.batch_size, ("batch_size",))):
        if value is not None:
            if value < 1:
                raise UserError(f"{flag} {value}: expected a positive integer")
            changes.update({f: value for f in fields})
    if args.guidance:
        changes["guidance"] = tuple(args.guidance)
    if args.classifier_scales:
        changes["cg_scales"] = tuple(args.classifier_scales)
    if args.limit < 0 or args.seed < 0:
        raise UserError(f"--limit {args.limit} / --seed {args.seed}: expected non-negative integers")
    return dataclasses.replace(suite, **changes)


def _sections(text: str | None) -> list[str]:
    from latentdiff.eval.suite import SECTIONS

    if text is None:
        return list(SECTIONS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise UserError(f"--sections {text!r}: expected a comma-separated subset of {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]


def _hash(path: Path | None, model: Path | None) -> dict | None:
    """A file or folder the report names: its path as the report shows it (relative to the model folder
    ``model`` or the current folder, :func:`latentdiff.eval.report.shown_path`) and its sha256."""
    from latentdiff.eval.report import shown_path
    from latentdiff.provenance import file_sha256

    if path is None:
        return None
    files = sorted(p for p in ([path] if path.is_file() else path.glob("*.safetensors")))
    return {"path": shown_path(path, model), "sha256": file_sha256(files[0]) if files else "unknown"}


def _optional_dir(flag: str, given: str | None, pipe, role: str) -> Path | None:
    """--flag DIR if given (it must exist), else the model's companion ``role`` when it has one, else None."""
    from latentdiff.checkpoint import companion

    if given is not None:
        if not Path(given).exists():
            raise UserError(f"{flag} {given}: not found")
        return Path(given)
    return companion(pipe, role)


def _versions() -> dict:
    import diffusers
    import numpy
    import torch
    import torchvision
    import transformers

    from latentdiff import __version__

    return {"latentdiff": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__}


def _machine(pipe) -> str:
    import torch

    if pipe.device.type == "cuda":
        return torch.cuda.get_device_name(pipe.device)
    from latentdiff.speed import cpu_model_name

    return f"{cpu_model_name()} ({platform.machine()}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _features(args, pipe, skipped: dict) -> tuple[dict, dict]:
    """The FD feature extractors available, and their provenance for the report."""
    from latentdiff.eval.fid import ClipImageFeatures, InceptionFeatures

    features, meta = {}, {}
    clip = _optional_dir("--clip", args.clip, pipe, "clip")
    if clip is not None:
        meta["clip"] = _hash(clip, pipe.path)
        features["clip"] = ClipImageFeatures(clip, device=pipe.device, label=meta["clip"]["path"])
    if args.inception_weights:
        features["inception"] = InceptionFeatures(args.inception_weights, device=pipe.device)
        meta["inception"] = _hash(Path(args.inception_weights), pipe.path)
    if not features:
        skipped["fd"] = ("no feature space: the model folder has no clip/ (the CLIP image tower training writes) "
                         "and neither --clip nor --inception-weights was given")
    elif "clip" not in features:
        skipped["fd (CLIP)"] = "the model folder has no clip/ and --clip was not given"
    return features, meta


def run(args: argparse.Namespace) -> int:
    from latentdiff.commands.generate import parse_device, parse_sampler, prepare_out_dir
    from latentdiff.data.shapes import held_out_prompts
    from latentdiff.eval import report
    from latentdiff.eval.report import shown_path
    from latentdiff.eval.suite import SECTION_CLASSES, Context, ImageBank, RealSet, run_suite
    from latentdiff.lora import parse_lora_spec
    from latentdiff.models.classifier import ClassifierGuide, load_classifier
    from latentdiff.pipeline import Pipeline
    from latentdiff.speed import speed_option

    suite, sections = _suite(args), _sections(args.sections)
    sampler, device = parse_sampler(args.sampler), parse_device(args.device)
    speed = speed_option(args.speed)
    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise UserError(f"--inception-weights {args.inception_weights}: file not found")
    loras = [parse_lora_spec(text) for text in args.lora]
    out = prepare_out_dir(args.out)
    t0 = time.time()
    pipe = Pipeline.load(args.model, device=device)
    if loras:
        pipe.load_loras(loras)
    if speed is not None:
        pipe.optimize(speed)  # after the LoRAs, which must come first
    opts = pipe.resolve(steps=args.steps, sampler=sampler)
    skipped: dict[str, str] = {}
    meta_files: dict = {}
    classifier = None
    clf_dir = _optional_dir("--classifier", args.classifier, pipe, "classifier")
    if "classifier" in sections:
        if clf_dir is None:
            skipped["classifier"] = ("no classifier: pass --classifier DIR (train one with 'latentdiff "
                                     "train-classifier configs/classifier.yaml') or put it in MODEL/classifier")
        else:
            classifier = load_classifier(clf_dir, pipe.device)
            meta_files["classifier"] = _hash(clf_dir, pipe.path)
    features = {}
    if "fd" in sections:
        features, more = _features(args, pipe, skipped)
        meta_files.update(more)
    sections = [s for s in sections if s not in skipped]
    if not sections:
        raise UserError("nothing to evaluate: " + "; ".join(skipped.values()))

    def make_guide(key):
        guide = ClassifierGuide(classifier, key[0], key[1], path=str(clf_dir))
        guide.check(pipe.schedule, pipe.unet.config.in_channels)
        return guide

    prompts = held_out_prompts()[: args.limit or None]
    ctx = Context(pipe=pipe, suite=suite, out=out, bank=ImageBank(pipe, suite.batch_size, make_guide, None), bar=None,
                  real=RealSet(opts["height"], args.data), sampler=opts["sampler"], steps=opts["steps"],
                  guidance=opts["guidance"], prompts=prompts, classifier=classifier, features=features)
    results = run_suite(ctx, sections, progress=True)
    argv = getattr(args, "argv", None)
    meta = {"model": args.model or "the default model", "suite": suite.name, "date": report.now(),
            "command": "latentdiff " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "model_sha256": pipe.weights_sha256, "versions": _versions(), "machine": _machine(pipe),
            "speed": pipe.speed.describe() if pipe.speed is not None else "plain (float32)",
            "seconds": time.time() - t0, "skipped": skipped, "settings": dataclasses.asdict(suite), **meta_files,
            "loras": [{**e, "path": shown_path(p, pipe.path)} for (p, _), e in zip(loras, pipe.loras)]}
    path = report.write_report(out, results, meta, {k: c.title for k, c in SECTION_CLASSES.items()})
    print(f"wrote {path}")
    return 0
