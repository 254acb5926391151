"""Give a trained U-Net cross-attention at one more resolution, starting as a no-op (issue #27: the third object).

The v2 U-Net has text cross-attention only at its 8×8 and 4×4 blocks (and the middle); its 32×32 and 16×16
blocks never see the words, and the extra object of two-object prompts is a copy sharpened there. This
writes a copy of MODEL whose ``--level`` block (down and up; 1 = the 16×16 one) becomes a
``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``. Every existing weight keeps its name and value (diffusers
names a block's ResNets and resamplers the same with or without attention); the new transformers' output
projections start at zero, so the copy computes exactly what MODEL does until it is trained (checked below).

    python bench/attention_surgery.py --model runs/default_v2_rel/model --level 1 --out runs/surgery16/model

Then train it like any model (``latentdiff finetune --full --data ...``) beside the same run from MODEL.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder (diffusers layout)")
    ap.add_argument("--level", type=int, default=1, help="down-block index to give attention (default 1)")
    ap.add_argument("--out", required=True, help="new model folder")
    args = ap.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    src, out = Path(args.model), Path(args.out)
    if out.exists():
        sys.exit(f"{out}: exists already")
    old = UNet2DConditionModel.from_pretrained(src / "unet")
    cfg = dict(old.config)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    k, n = args.level, len(down)
    if down[k] != "DownBlock2D":
        sys.exit(f"down block {k} is {down[k]}, not a DownBlock2D without attention")
    down[k], up[n - 1 - k] = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
    cfg.update(down_block_types=tuple(down), up_block_types=tuple(up))
    cfg = {key: v for key, v in cfg.items() if not key.startswith("_")}
    new = UNet2DConditionModel(**cfg)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(".attentions." not in m for m in missing):
        sys.exit(f"state dicts do not line up: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for block in (new.down_blocks[k], new.up_blocks[n - 1 - k]):
            for attn in block.attentions:
                attn.proj_out.weight.zero_()
                attn.proj_out.bias.zero_()
    # the copy must compute what the original does
    g = torch.Generator().manual_seed(0)
    size = cfg["sample_size"]
    x = torch.randn(2, cfg["in_channels"], size, size, generator=g)
    ctx = torch.randn(2, 8, cfg["cross_attention_dim"], generator=g)
    with torch.no_grad():
        diff = (old(x, 500, ctx).sample - new(x, 500, ctx).sample).abs().max().item()
    if diff > 1e-5:
        sys.exit(f"the copy differs from the original by {diff}")
    shutil.copytree(src, out, symlinks=True, ignore=shutil.ignore_patterns("unet"))
    new.save_pretrained(out / "unet")
    new_names = set(missing)
    added = sum(p.numel() for name, p in new.named_parameters() if name in new_names)
    print(json.dumps({"model": str(src), "out": str(out), "level": k, "down_block_types": down,
                      "up_block_types": up, "new_parameters": added, "max_abs_difference": diff}))


if __name__ == "__main__":
    main()
