"""Assemble a model folder from a U-Net checkpoint of a training run (its EMA weights), before the stage ends.

For time-boxed runs: the U-Net stage of a recipe writes ``OUT/unet/checkpoints/ckpt-NNNNNNN`` every
``checkpoint_every`` steps; this builds the same diffusers folder the finished stage would (VAE and text
encoder from the run's finished stages, the EMA U-Net of the checkpoint, clip/, latentdiff.json with the
checkpoint step recorded), without touching the run, which can still be resumed to its end.

    python scripts/model_from_checkpoint.py configs/default.yaml --out runs/default/model-step1500 [--step 1500]

Without ``--step`` the newest checkpoint is used.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the training recipe (YAML) whose run holds the checkpoint")
    p.add_argument("--out", required=True, help="model folder to write (must not exist)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)

    from latentdiff.errors import UserError

    try:
        return build(args)
    except UserError as exc:
        print(f"model_from_checkpoint: error: {exc}", file=sys.stderr)
        return 2


def build(args) -> int:
    from safetensors.torch import load_file

    from latentdiff.config import load_config
    from latentdiff.errors import UserError
    from latentdiff.models.factory import build_unet
    from latentdiff.models.tokenizer import load_clip_tokenizer
    from latentdiff.train.config import TrainConfig
    from latentdiff.train.run import assemble_model, finished_stages
    from latentdiff.train.state import latest_checkpoint

    cfg = load_config(args.config, TrainConfig)
    run, dest = Path(cfg.out), Path(args.out)
    if dest.exists():
        raise UserError(f"--out {dest}: already exists; choose a new path")
    ckpts = run / "unet" / "checkpoints"
    ckpt = ckpts / f"ckpt-{args.step:07d}" if args.step is not None else latest_checkpoint(ckpts)
    if ckpt is None or not (ckpt / "ema.safetensors").is_file():
        raise UserError(f"{ckpts}: no checkpoint{'' if args.step is None else f' at step {args.step}'} "
                        f"with EMA weights")
    unet = build_unet(cfg.unet.model)
    ema = load_file(str(ckpt / "ema.safetensors"))
    vae, text_encoder = finished_stages(run)
    joint = cfg.unet.text_encoder_lr_scale > 0  # the text encoder trained with the U-Net: both are in the EMA
    for prefix, module in ({"unet.": unet, "text_encoder.": text_encoder} if joint else {"": unet}).items():
        missing, unexpected = module.load_state_dict(
            {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}, strict=False)
        params = {n for n, _ in module.named_parameters()}
        if [k for k in missing if k in params] or unexpected:
            raise UserError(f"{ckpt}/ema.safetensors: does not match the {prefix[:-1] or 'unet'} of {args.config}")
    tokenizer = load_clip_tokenizer(None)
    tokenizer.model_max_length = cfg.clip.text.max_length
    assemble_model(dest, unet.eval(), vae, text_encoder.eval(), tokenizer, cfg, run)
    info_path = dest / "latentdiff.json"
    info = json.loads(info_path.read_text())
    step = json.loads((ckpt / "state.json").read_text())["step"]
    info["unet_checkpoint"] = {"step": step, "of_steps": cfg.unet.loop.steps, "weights": "ema"}
    info_path.write_text(json.dumps(info, indent=1))
    print(f"{dest} (U-Net EMA weights of step {step} of {cfg.unet.loop.steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
