"""A model folder from a checkpoint of ``latentdiff finetune --full`` (its EMA U-Net), before the run ends.

For comparing two full fine-tunes at the same step when there is no time to finish both: the base model
folder is copied and its U-Net weights are replaced by the checkpoint's EMA weights (``unet.*`` keys). The
run itself is not touched and can still be resumed.

    python bench/finetune_checkpoint.py --run runs/ctrl_ft --base runs/default_v2_rel/model --step 800 \\
        --out runs/ctrl_ft/model-step800
"""
from __future__ import annotations

import argparse
import json
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

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    ckpt = Path(args.run) / "checkpoints" / f"ckpt-{args.step:07d}" / "ema.safetensors"
    if not ckpt.is_file():
        sys.exit(f"{ckpt}: no such checkpoint")
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out}: exists already")
    ema = load_file(ckpt)
    if any(not k.startswith("unet.") for k in ema):  # e.g. --train-text-encoder: its weights would be dropped
        sys.exit(f"{ckpt}: holds more than the U-Net (a trained text encoder?); only U-Net-only runs are handled")
    weights = {k.removeprefix("unet."): v for k, v in ema.items()}
    target = Path(args.base) / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(target, "pt") as f:
        if set(weights) != set(f.keys()):
            sys.exit(f"{ckpt}: its U-Net keys do not match {target}'s; is --base the model the run started from?")
    shutil.copytree(args.base, out, symlinks=True)
    save_file(weights, out / "unet" / "diffusion_pytorch_model.safetensors")
    info_path = out / "latentdiff.json"  # say where the U-Net came from, as scripts/model_from_checkpoint.py does
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["finetune_checkpoint"] = {"run": str(args.run), "step": args.step, "weights": "ema"}
    info_path.write_text(json.dumps(info, indent=1))
    print(f"wrote {out} (EMA U-Net of {ckpt.parent.name})")


if __name__ == "__main__":
    main()
