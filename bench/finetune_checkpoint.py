"""A model folder from a checkpoint of ``latentdiff finetune --full`` (its EMA U-Net), before the run ends.

For comparing two full fine-tunes at the same step when there is no time to finish both: the base model
folder is copied and its U-Net weights are replaced by the checkpoint's EMA weights (``unet.*`` keys). The
run itself is not touched and can still be resumed.

    python bench/finetune_checkpoint.py --run runs/ctrl_ft --base runs/default_v2_rel/model --step 800 \\
        --out runs/ctrl_ft/model-step800
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="the fine-tune's --out folder")
    ap.add_argument("--base", required=True, help="the model folder the fine-tune started from (its --model)")
    ap.add_argument("--step", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from safetensors.torch import load_file, save_file

    ckpt = Path(args.run) / "checkpoints" / f"ckpt-{args.step:07d}" / "ema.safetensors"
    if not ckpt.is_file():
        sys.exit(f"{ckpt}: no such checkpoint")
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out}: exists already")
    weights = {k.removeprefix("unet."): v for k, v in load_file(ckpt).items() if k.startswith("unet.")}
    target = Path(args.base) / "unet" / "diffusion_pytorch_model.safetensors"
    if set(weights) != set(load_file(target)):
        sys.exit(f"{ckpt}: its U-Net keys do not match {target}'s; is --base the model the run started from?")
    shutil.copytree(args.base, out, symlinks=True)
    save_file(weights, out / "unet" / "diffusion_pytorch_model.safetensors")
    print(f"wrote {out} (EMA U-Net of {ckpt.parent.name})")


if __name__ == "__main__":
    main()
