"""Do the U-Net's features know where they are? A linear probe per attention level.

    python bench/position_probe.py [--model latentdiff/assets/default_model] [--images 96]

Both the text's position words and the layout condition (GLIGEN's gated self-attention, which compares
visual tokens with Fourier features of boxes) need each visual token to carry its own place in the
image. GLIGEN's visual tokens get no positional encoding: they rely on the U-Net's features holding it
(convolutions with zero padding can encode it). This measures whether they do: fresh shapes-world scenes
are encoded, noised to t, and passed through the U-Net with their captions; at the input of every
transformer block, a ridge-regularised least-squares linear classifier is fitted to predict each token's
grid row and column from its feature vector, on half the images, and scored on the other half
(chance: 1 / grid side). Prints one line per (t, level).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def probe_accuracy(features: np.ndarray, labels: np.ndarray, ridge: float = 1e-2) -> float:
    """Fit on the first half of ``features`` (B, N, C) with per-token ``labels`` (N,), score on the rest."""
    b, n, c = features.shape
    half, classes = b // 2, int(labels.max()) + 1
    x_train = np.c_[features[:half].reshape(-1, c), np.ones(half * n)]
    x_test = np.c_[features[half:].reshape(-1, c), np.ones((b - half) * n)]
    targets = np.eye(classes)[np.tile(labels, half)]
    weights = np.linalg.solve(x_train.T @ x_train + ridge * np.eye(c + 1), x_train.T @ targets)
    return float(((x_test @ weights).argmax(1) == np.tile(labels, b - half)).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the default model)")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--timesteps", default="100,500,900")
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args(argv)

    from latentdiff.data import shapes
    from latentdiff.inpaint import encode_images
    from latentdiff.pipeline import Pipeline
    from latentdiff.pixels import to_unit_hwc

    pipe = Pipeline.load(args.model, device="cpu")
    unet = pipe.unet.float()
    rng = np.random.default_rng(args.seed)
    scenes = [shapes.sample_scene(rng) for _ in range(args.images)]
    pixels = np.stack([shapes.render(s)[0] for s in scenes])
    captions = [shapes.caption(s, rng, training=False) for s in scenes]
    latents = encode_images(pipe.vae.float(), to_unit_hwc(pixels))
    with torch.no_grad():
        context = pipe.encode_prompt(captions).float()
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, kwargs):
            seen[name] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach()
        return hook

    for name, module in unet.named_modules():
        if name.endswith("transformer_blocks.0"):
            module.register_forward_pre_hook(keep(name), with_kwargs=True)
    print(f"model: {pipe.name}; {args.images} scenes, half to fit, half to score")
    for t in (int(v) for v in args.timesteps.split(",")):
        ab = pipe.schedule.alphas_bar[t].float()
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            unet(ab.sqrt() * latents + (1 - ab).sqrt() * noise, torch.full((len(latents),), t),
                 encoder_hidden_states=context)
        for name, feats in seen.items():
            n = feats.shape[1]
            side = int(round(n ** 0.5))  # square images: a side x side grid
            rows, cols = np.repeat(np.arange(side), side), np.tile(np.arange(side), side)
            f = feats.numpy()
            print(f"t = {t:4d}  {name:50s} {side}x{side}: row {probe_accuracy(f, rows):.2f}  "
                  f"column {probe_accuracy(f, cols):.2f}  (chance {1 / side:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
