"""A layout or map ControlNet folder from a checkpoint of its training run (its EMA weights), to choose a step.

``latentdiff train-spatial`` writes ``OUT/<condition>/final/<layout_controlnet|controlnet>`` from the EMA
weights at its last step; with ``loop.keep_every`` (configs/layout_controlnet2.yaml keeps steps 1,000, 2,000,
3,000) earlier checkpoints stay. This copies the final folder (its config and ``condition.json``) and puts a
kept checkpoint's EMA weights in it, so the steps can be compared on validation scenes (never the held-out
seed) with ``bench/spatial_eval.py --checkpoint``:

    python scripts/condition_from_checkpoint.py runs/default_v2_rel-layout2/layout --step 2000 --out runs/lcn2_s2000
    python bench/spatial_eval.py --model runs/default_v2_rel/model --condition layout --num 100 --seed 4242 \\
        --checkpoint runs/lcn2_s2000
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

WEIGHTS = "diffusion_pytorch_model.safetensors"
PREFIXES = {"layout_controlnet": "layout_controlnet.", "controlnet": "controlnet."}


def build(stage: Path, step: int, out: Path) -> Path:
    """``out``: a copy of ``stage``'s final ControlNet folder with the EMA weights of checkpoint ``step``."""
    from safetensors.torch import load_file, save_file

    from latentdiff.errors import UserError

    finals = [p for p in (stage / "final").glob("*") if p.name in PREFIXES and (p / WEIGHTS).is_file()]
    if len(finals) != 1:
        raise UserError(f"{stage}/final: expected one finished layout_controlnet/ or controlnet/ folder "
                        f"(run the training to its end first)")
    ckpt = stage / "checkpoints" / f"ckpt-{step:07d}" / "ema.safetensors"
    if not ckpt.is_file():
        kept = sorted(p.name for p in (stage / "checkpoints").glob("ckpt-*"))
        raise UserError(f"{ckpt}: no such checkpoint (kept: {', '.join(kept) or 'none'})")
    if out.exists():
        raise UserError(f"--out {out}: already exists; choose a new path")
    final, prefix = finals[0], PREFIXES[finals[0].name]
    weights, ema = load_file(str(final / WEIGHTS)), load_file(str(ckpt))
    trained = {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}
    if not trained or set(trained) - set(weights) or len(trained) != len(ema):
        raise UserError(f"{ckpt}: its weights are not {final.name}'s (a binder or another network trained "
                        f"beside it is not supported)")
    shutil.copytree(final, out)
    save_file({k: trained.get(k, v).to(v.dtype).contiguous() for k, v in weights.items()}, str(out / WEIGHTS))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", help="the training run's stage folder (OUT/layout or OUT/segmap)")
    p.add_argument("--step", type=int, required=True, help="a kept checkpoint's step")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = p.parse_args(argv)
    from latentdiff.errors import UserError

    try:
        out = build(Path(args.stage), args.step, Path(args.out))
    except UserError as exc:
        print(f"condition_from_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out} (EMA weights of step {args.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
