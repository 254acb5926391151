"""``latentdiff finetune --reward NAME``: reward fine-tuning by policy gradient (DDPO, DPOK).

The flags of ``latentdiff finetune`` that only a reward run takes are added here; the shared ones (--out,
--model, --lora, --full, --lr, --batch-size, --seed, --resume, ...) are ``finetune``'s. Flags are checked
and turned into one-line errors; the work is :func:`latentdiff.train.reward_finetune.finetune_reward`.
"""
from __future__ import annotations

import argparse

from latentdiff.errors import UserError

# finetune flags that belong to training on a data folder: refused with --reward (value, default)
_DATA_ONLY = (("data", "--data", None), ("steps", "--steps", None), ("resolution", "--resolution", None),
              ("train_text_encoder", "--train-text-encoder", False), ("cond_dropout", "--cond-dropout", "0.1"),
              ("background", "--background", "white"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "reward fine-tuning (--reward; docs/finetune.md#reward-fine-tuning)",
        "With --reward, the shared options' defaults are: --lr 3e-4 (LoRA) or 1e-5 (--full); --batch-size the "
        "largest divisor of --samples-per-epoch up to 8 (is) or the whole epoch (sf); --checkpoint-every one epoch "
        "(in optimiser steps); --ema-decay 0.")
    g.add_argument("--reward", default=None, metavar="NAME",
                   help="train by policy gradient against a reward instead of on --data: scorer, scorer-all, "
                        "compressibility, incompressibility, or MODULE:FUNCTION (function(images, prompts) -> rewards)")
    g.add_argument("--epochs", default=None, metavar="N", help="epochs of sampling then training (default 50)")
    g.add_argument("--samples-per-epoch", default="32", metavar="N", help="trajectories sampled per epoch (default 32)")
    g.add_argument("--images-per-prompt", default="4", metavar="G",
                   help="trajectories of each prompt in an epoch; advantages are normalised per prompt (default 4)")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompts, one a line (default: 256 of the shapes world's training combinations)")
    g.add_argument("--objective", default="is", choices=("is", "sf"),
                   help="is: DDPO-IS, importance-sampled and clipped (default); sf: DDPO-SF, plain REINFORCE")
    g.add_argument("--clip", default=None, metavar="EPS", help="DDPO-IS clip range of the ratio (default 1e-4)")
    g.add_argument("--timestep-fraction", default=None, metavar="F",
                   help="share of each trajectory's steps an optimiser step trains on "
                        "(default 1 with is, 0.25 with sf)")
    g.add_argument("--kl", default="0", metavar="BETA",
                   help="DPOK: weight of the KL to the frozen base model (default 0)")
    g.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"),
                   help="the stochastic sampler of the trajectories: ddim with --eta (default) or ddpm")
    g.add_argument("--eta", default="1", metavar="ETA", help="DDIM's eta, 0 < eta <= 1 (default 1: the DDPM step)")
    g.add_argument("--sample-steps", default="20", metavar="N", help="sampler steps of a trajectory (default 20)")
    g.add_argument("--guidance", default=None, metavar="W",
                   help="classifier-free guidance of the trajectories (default: the model's, as generate uses it)")


def check_no_data_flags(args: argparse.Namespace) -> None:
    for attr, flag, default in _DATA_ONLY:
        if getattr(args, attr) != default:
            hint = "; use --epochs" if flag == "--steps" else ""
            raise UserError(f"{flag}: not used with --reward (reward fine-tuning samples its own images){hint}")


def build_config(args: argparse.Namespace):
    """A :class:`~latentdiff.train.reward_finetune.RewardConfig` from the flags (one-line errors for bad values)."""
    from latentdiff.commands.generate import parse_float, parse_int
    from latentdiff.errors import ConfigError
    from latentdiff.train.ddpo import IS_CLIP
    from latentdiff.train.reward_finetune import RewardConfig, default_timestep_fraction, reward_loop

    check_no_data_flags(args)
    method = "full" if args.full else "lora"
    samples = parse_int("--samples-per-epoch", args.samples_per_epoch, 1)
    per_prompt = parse_int("--images-per-prompt", args.images_per_prompt, 1)
    batch = parse_int("--batch-size", args.batch_size, 1)
    if samples % per_prompt:
        raise UserError(f"--samples-per-epoch {samples}: expected a multiple of --images-per-prompt {per_prompt}")
    if batch is not None and samples % batch:
        raise UserError(f"--samples-per-epoch {samples}: expected a multiple of --batch-size {batch}")
    floats = {name: _positive(name, parse_float(name, text)) for name, text in
              (("--lr", args.lr), ("--lora-alpha", args.lora_alpha), ("--clip", args.clip),
               ("--timestep-fraction", args.timestep_fraction))}
    fraction = floats["--timestep-fraction"] or default_timestep_fraction(args.objective)
    if fraction > 1:
        raise UserError(f"--timestep-fraction {args.timestep_fraction}: expected 0 < F <= 1")
    kl, eta = parse_float("--kl", args.kl), parse_float("--eta", args.eta)
    if kl < 0:
        raise UserError(f"--kl {args.kl}: expected a number >= 0")
    if not 0.0 < eta <= 1.0:
        raise UserError(f"--eta {args.eta}: expected 0 < eta <= 1 (eta = 0 is deterministic and has no density)")
    ema = parse_float("--ema-decay", args.ema_decay)
    if ema is not None and not 0.0 <= ema < 1.0:
        raise UserError(f"--ema-decay {args.ema_decay}: expected 0 <= D < 1")
    loop = reward_loop(method, parse_int("--epochs", args.epochs, 1) or 50, samples, args.objective, batch,
                       lr=floats["--lr"], ema_decay=ema, checkpoint_every=parse_int("--checkpoint-every",
                                                                                   args.checkpoint_every, 1))
    try:
        return RewardConfig(
            reward=args.reward, out=args.out, model=args.model, model_config=args.config,
            allow_unsafe_pickle=args.allow_unsafe_pickle, prompts=args.prompts, method=method,
            rank=parse_int("--lora", args.lora, 1) or 8, lora_alpha=floats["--lora-alpha"],
            lora_layers=args.lora_layers,
            samples_per_epoch=samples, images_per_prompt=per_prompt, objective=args.objective,
            clip_range=floats["--clip"] or IS_CLIP, timestep_fraction=fraction, kl=kl, sampler=args.sampler, eta=eta,
            sample_steps=parse_int("--sample-steps", args.sample_steps, 2, 1000),
            guidance=parse_float("--guidance", args.guidance), seed=parse_int("--seed", args.seed, 0, 2**63 - 1),
            device=args.device, validation_prompts=parse_int("--validation-prompts", args.validation_prompts, 0),
            loop=loop)
    except ConfigError as exc:  # pragma: no cover - the flags above are checked first
        raise UserError(str(exc)) from None


def _positive(flag: str, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise UserError(f"{flag} {value:g}: must be positive")
    return value


def run(args: argparse.Namespace) -> int:
    from latentdiff.train.reward_finetune import finetune_reward

    cfg = build_config(args)
    report_result(cfg, finetune_reward(cfg, resume=args.resume))
    print(f"rewards: {cfg.out}/rewards.jsonl, curve: {cfg.out}/rewards.png")
    return 0


def report_result(cfg, result) -> None:
    """What a fine-tune wrote and how to use it (a LoRA file or a model folder)."""
    print(f"result: {result}")
    if cfg.method == "lora":
        print(f"use with: latentdiff generate PROMPT --lora {result}" + (f" --model {cfg.model}" if cfg.model else ""))
    else:
        print(f"use with: latentdiff generate PROMPT --model {result}")
