"""``latentdiff finetune``: teach a model your own captioned images, as a LoRA file or a full fine-tune.

Flags are checked here and turned into one-line errors; the work is :func:`latentdiff.train.finetune.finetune`.
"""
from __future__ import annotations

import argparse

from latentdiff.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a model on a folder of your own captioned images (LoRA or full)",
        description="Fine-tune the default model (or --model) on an image folder with captions "
                    "(metadata.jsonl, metadata.csv or name.txt beside each image). Images of any size and "
                    "format are converted (centre crop; transparency on white); unreadable ones are skipped "
                    "and listed before training starts. Interrupt at any time and continue with --resume.")
    p.add_argument("--data", default=None, metavar="DIR", help="the image folder (or --reward, below)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: pytorch_lora_weights.safetensors (LoRA) or model/ (--full), "
                        "plus checkpoints, log and a validation grid")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="base model: a diffusers folder or a single-file Stable Diffusion checkpoint "
                        "(default: the default model)")
    p.add_argument("--config", default=None, metavar="DIR|NAME",
                   help="component configs for a single-file checkpoint (see 'latentdiff generate --help')")
    p.add_argument("--allow-unsafe-pickle", action="store_true", help="allow loading .ckpt/.pt pickle files")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--lora", default=None, metavar="RANK",
                     help="train LoRA layers of this rank on the attention projections (the default, rank 8)")
    how.add_argument("--full", action="store_true", help="train every U-Net weight (with an EMA of the weights)")
    p.add_argument("--lora-alpha", default=None, metavar="A", help="LoRA alpha; the update is scaled by A/RANK "
                                                                   "(default: RANK, a scale of 1)")
    p.add_argument("--lora-layers", default="attention", choices=("attention", "all"),
                   help="U-Net layers that get LoRA: the attention projections (default), or all: those plus the "
                        "convolutions and feed-forward layers, for a concept whose look is new (docs/finetune.md)")
    p.add_argument("--train-text-encoder", action="store_true",
                   help="also train the text encoder (its LoRA layers, or all of it with --full)")
    p.add_argument("--steps", default=None, metavar="N", help="optimizer steps (default 1000)")
    p.add_argument("--lr", default=None, metavar="LR", help="peak learning rate (default 1e-3 LoRA, 1e-4 full)")
    p.add_argument("--batch-size", default=None, metavar="B", help="images per step (default 16)")
    p.add_argument("--resolution", default=None, metavar="R",
                   help="train on R×R centre crops (default: the model's native size)")
    p.add_argument("--cond-dropout", default="0.1", metavar="P",
                   help="probability that a caption is replaced by the empty prompt, so that classifier-free "
                        "guidance keeps working (default 0.1; the cond_dropout of every training recipe)")
    p.add_argument("--caption-dropout", dest="cond_dropout", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # its old name, kept so that users' scripts keep working
    p.add_argument("--background", default="white", choices=("white", "black"),
                   help="what transparent pixels are composited on (default: white)")
    p.add_argument("--ema-decay", default=None, metavar="D", help="EMA decay of the weights (default 0 LoRA, "
                                                                  "0.999 full)")
    p.add_argument("--checkpoint-every", default=None, metavar="N", help="steps between checkpoints (default 200)")
    p.add_argument("--validation-prompts", default="4", metavar="N",
                   help="after training, draw the first N distinct captions (4 seeds each) to OUT/val/ "
                        "(default 4; 0: none)")
    p.add_argument("--seed", default="0", metavar="S", help="seed of the data order, noise and LoRA init")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    from latentdiff.commands.finetune_reward import add_arguments

    add_arguments(p)
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace):
    """A :class:`~latentdiff.train.finetune.FinetuneConfig` from the flags (one-line errors for bad values)."""
    from latentdiff.commands.generate import parse_float, parse_int
    from latentdiff.errors import ConfigError
    from latentdiff.train.finetune import FinetuneConfig, default_loop

    method = "full" if args.full else "lora"
    dropout = parse_float("--cond-dropout", args.cond_dropout)
    if not 0.0 <= dropout <= 1.0:
        raise UserError(f"--cond-dropout {args.cond_dropout}: expected a probability in [0, 1]")
    lr = parse_float("--lr", args.lr)
    if lr is not None and lr <= 0:
        raise UserError(f"--lr {args.lr}: must be positive")
    ema = parse_float("--ema-decay", args.ema_decay)
    if ema is not None and not 0.0 <= ema < 1.0:
        raise UserError(f"--ema-decay {args.ema_decay}: expected 0 <= D < 1")
    alpha = parse_float("--lora-alpha", args.lora_alpha)
    if alpha is not None and alpha <= 0:
        raise UserError(f"--lora-alpha {args.lora_alpha}: must be positive")
    steps = parse_int("--steps", args.steps, 1)
    loop = default_loop(method, steps=steps, lr=lr, batch_size=parse_int("--batch-size", args.batch_size, 1),
                        ema_decay=ema, checkpoint_every=parse_int("--checkpoint-every", args.checkpoint_every, 1),
                        warmup_steps=min(50, max(1, (steps or 1000) // 20)))
    try:
        return FinetuneConfig(
            data=args.data, out=args.out, model=args.model, model_config=args.config,
            allow_unsafe_pickle=args.allow_unsafe_pickle, method=method,
            rank=parse_int("--lora", args.lora, 1) or 8, lora_alpha=alpha, lora_layers=args.lora_layers,
            train_text_encoder=args.train_text_encoder,
            cond_dropout=dropout, resolution=parse_int("--resolution", args.resolution, 8),
            background=args.background, seed=parse_int("--seed", args.seed, 0, 2**63 - 1), device=args.device,
            validation_prompts=parse_int("--validation-prompts", args.validation_prompts, 0), loop=loop)
    except ConfigError as exc:  # pragma: no cover - the flags above are checked first
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from latentdiff.commands.finetune_reward import report_result
    from latentdiff.train.finetune import finetune

    if args.reward is not None:
        from latentdiff.commands.finetune_reward import run as run_reward

        return run_reward(args)
    if args.data is None:
        raise UserError("one of --data DIR (your images) or --reward NAME (reward fine-tuning) is required")
    cfg = build_config(args)
    report_result(cfg, finetune(cfg, resume=args.resume))
    return 0
