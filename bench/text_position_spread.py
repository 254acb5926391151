"""How much does a text encoder's output change when only the position words change? (issue #27)

    .venv/bin/python bench/text_position_spread.py                                  # the shipped model
    .venv/bin/python bench/text_position_spread.py --text-encoder runs/proxy/v1+te/text_encoder

Encodes the nine prompts "a large red circle in the {cell}" as the pipeline does (last hidden state) and
prints, per token position, the between-prompt variance as a share of the mean squared norm: the part of
the context that says *where*. A U-Net can only place what this part tells it. Also the cosine between
the nine prompts' centred contexts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def spread(pipe) -> dict:
    from latentdiff.data.shapes import POSITIONS

    prompts = [f"a large red circle in the {cell}" for cell in POSITIONS]
    ctx = pipe.encode_prompt(prompts).float()  # (9, L, D)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=ctx.shape[1]).input_ids
    between = (ctx - ctx.mean(0, keepdim=True)).pow(2).sum(-1).mean(0)  # (L,)
    share = (between / ctx.pow(2).sum(-1).mean(0)).tolist()
    eos = max(row.index(pipe.tokenizer.eos_token_id) for row in ids)  # the first EOS of the longest prompt
    flat = (ctx - ctx.mean(0, keepdim=True)).flatten(1)
    cos = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
    return {"prompts": prompts, "share_by_token": share, "max_share_words": max(share[:eos]),
            "share_eos": share[eos], "share_mean": sum(share) / len(share), "cosine": cos.tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--text-encoder", default=None, help="a text encoder folder to use instead of the model's")
    args = ap.parse_args(argv)
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(args.model, device="cpu")
    if args.text_encoder:
        from transformers import CLIPTextModel

        pipe.text_encoder = CLIPTextModel.from_pretrained(args.text_encoder).eval()
    r = spread(pipe)
    print("token  between-prompt share of the squared norm")
    for i, s in enumerate(r["share_by_token"][:12]):
        print(f"{i:5d}  {s:.4f}")
    print(f"largest share at a word token: {r['max_share_words']:.4f}; at the first EOS: {r['share_eos']:.4f}; "
          f"mean over all {len(r['share_by_token'])} tokens: {r['share_mean']:.4f}")
    print("cosine between the centred contexts (rows: " + ", ".join(c.split(" the ")[-1] for c in r["prompts"]) + ")")
    for row in r["cosine"]:
        print(" ".join(f"{v:+.2f}" for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
