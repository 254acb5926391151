"""``latentdiff train CONFIG``: train the VAE, the CLIP text encoder and the latent U-Net of a recipe.
``latentdiff train-classifier CONFIG``: train the noise-aware latent classifier for classifier guidance.

The same entry point serves ``python train.py CONFIG`` and
``accelerate launch --multi_gpu --num_processes 2 train.py CONFIG`` (on CPU: gloo, one process a rank).
"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML recipe (configs/default.yaml)", description=__doc__)
    p.add_argument("config", help="YAML recipe, e.g. configs/default.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of each stage")
    p.add_argument("--out", help="output folder (overrides the recipe's 'out')")
    p.add_argument("--stage", action="append", choices=("vae", "clip", "unet"),
                   help="run only this stage (repeatable); default: the recipe's stages")
    p.set_defaults(handler=run)

    c = sub.add_parser("train-classifier", help="train a noise-aware latent classifier for classifier guidance "
                                                "(configs/classifier.yaml)",
                       description="Train p(y | x_t, t) on a model's latents (y: shape and colour of the objects); "
                                   "the result OUT/final is what 'latentdiff generate --classifier' loads.")
    c.add_argument("config", help="YAML recipe, e.g. configs/classifier.yaml")
    c.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    c.add_argument("--out", help="output folder (overrides the recipe's 'out')")
    c.add_argument("--model", help="the diffusion model to guide (overrides the recipe's 'model')")
    c.add_argument("--install", action="store_true",
                   help="copy the result into the model's folder as MODEL/classifier, registered as its classifier")
    add_latent_cache_arg(c)
    c.set_defaults(handler=run_classifier)

    s = sub.add_parser("train-spatial", help="train layout (ControlNet or GLIGEN) or segmentation (ControlNet) "
                                             "conditioning (configs/layout_controlnet.yaml, configs/segmap.yaml)",
                       description="Train the layout or segmentation condition of a model (its base stays "
                                   "frozen); the result OUT/<condition>/final/layout_controlnet, .../gligen or "
                                   ".../controlnet goes into the model folder (or --install copies it there).")
    s.add_argument("config", help="YAML recipe, e.g. configs/layout.yaml")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    s.add_argument("--out", help="output folder (overrides the recipe's 'out')")
    s.add_argument("--model", help="the base model (overrides the recipe's 'base_model')")
    s.add_argument("--init", metavar="DIR", help="start the ControlNet from this trained folder, a later phase "
                                               "(overrides the recipe's 'init')")
    s.add_argument("--install", action="store_true",
                   help="copy the result into the base model's folder, registered as its layout or segmap checkpoint")
    add_latent_cache_arg(s)
    s.set_defaults(handler=run_spatial)


def add_latent_cache_arg(p: argparse.ArgumentParser) -> None:
    """--latent-cache: the companions of a model trained elsewhere find its run's cache (scripts/companions.sh)."""
    p.add_argument("--latent-cache", metavar="DIR",
                   help="where latent caches live (overrides the recipe's 'latent_cache'; a cache is reused only "
                        "when its key, which includes the VAE's weights, matches)")


def run(args: argparse.Namespace) -> int:
    from latentdiff.config import load_config
    from latentdiff.train.config import TrainConfig
    from latentdiff.train.run import train

    cfg = load_config(args.config, TrainConfig, out=args.out)
    model = train(cfg, resume=args.resume, only=tuple(args.stage) if args.stage else None)
    print(f"model: {model}")
    return 0


def run_classifier(args: argparse.Namespace) -> int:
    from latentdiff.config import load_config
    from latentdiff.train.classifier import ClassifierTrainConfig, train_classifier

    cfg = load_config(args.config, ClassifierTrainConfig, out=args.out, model=args.model,
                      latent_cache=args.latent_cache)
    result = train_classifier(cfg, resume=args.resume)
    print(f"classifier: {result}")
    if args.install:
        from pathlib import Path

        from latentdiff.checkpoint import DEFAULT_MODEL_DIR, install_companion

        model = Path(cfg.model) if cfg.model else DEFAULT_MODEL_DIR
        print(f"installed: {install_companion(result, model, 'classifier', 'classifier')}")
    return 0


def run_spatial(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentdiff.config import load_config
    from latentdiff.train.spatial import SpatialTrainConfig, install, train_spatial

    cfg = load_config(args.config, SpatialTrainConfig, out=args.out, base_model=args.model, init=args.init,
                      latent_cache=args.latent_cache)
    result = train_spatial(cfg, resume=args.resume)
    print(f"{cfg.condition}: {result}")
    if args.install:
        from latentdiff.checkpoint import DEFAULT_MODEL_DIR

        print(f"installed: {install(result, Path(cfg.base_model) if cfg.base_model else DEFAULT_MODEL_DIR)}")
    return 0
