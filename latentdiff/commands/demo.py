"""``latentdiff demo``: the main job on the default model.

Generates images for a few shapes-world prompts with the default model (a grid, scored by the shapes
scorer), and draws the forward process x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε of a shapes image at increasing t —
the process the model learned to run backwards. Without an installed default model, only the latter.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from latentdiff.errors import UserError

if TYPE_CHECKING:  # numpy, torch and PIL are imported where used: building the CLI must not import torch
    import numpy as np
    from PIL import Image

TIMESTEPS = (0, 50, 100, 200, 350, 500, 700, 999)
DEMO_PROMPTS = ("a small red circle in the top left", "a large blue square in the center",
                "a yellow triangle at the bottom right", "a green circle left of a purple square")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="write a picture of the forward-noising sequence of a shapes image",
                       description=__doc__)
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0, help="which scene to draw (default: 0)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="model folder or .safetensors to generate with (default: the default model)")
    p.set_defaults(handler=run)


def forward_noising_strip(image: np.ndarray, timesteps=TIMESTEPS, seed: int = 0, scale: int = 3) -> Image.Image:
    """A strip of x_t for each t: image (H, W, 3) uint8 → PIL image with one labelled panel per t."""
    import torch
    from PIL import Image, ImageDraw

    from latentdiff.config import ScheduleConfig
    from latentdiff.diffusion.schedule import Schedule, q_sample
    from latentdiff.pixels import to_uint8, to_unit_hwc

    schedule = Schedule.from_config(ScheduleConfig())
    x0 = to_unit_hwc(image[None])  # (1, 3, H, W) in [-1, 1]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)  # one ε for every t, so the panels show one trajectory
    h, w = image.shape[:2]
    label_h = 14
    strip = Image.new("RGB", (len(timesteps) * w * scale, h * scale + label_h), "white")
    draw = ImageDraw.Draw(strip)
    for i, t in enumerate(timesteps):
        xt = q_sample(schedule, x0, torch.tensor([t]), noise)[0]  # (3, H, W)
        pix = to_uint8(xt[None])[0]
        panel = Image.fromarray(pix).resize((w * scale, h * scale), Image.NEAREST)
        strip.paste(panel, (i * w * scale, label_h))
        ab = schedule.alphas_bar[t].item()
        draw.text((i * w * scale + 3, 1), f"t={t + 1} abar={ab:.2f}", fill="black")
    return strip


def generate_grid(out: Path, seed: int, model: str | None = None) -> Path | None:
    """Images for DEMO_PROMPTS (4 seeds each) from ``model`` (None: the default model), as one grid; None
    without a default model."""
    from collections import Counter

    import numpy as np

    from latentdiff.checkpoint import DEFAULT_MODEL_DIR
    from latentdiff.eval.scorer import score
    from latentdiff.pipeline import Pipeline
    from latentdiff.pixels import save_grid

    if model is None and not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        print("no default model installed: skipping generation")
        return None
    pipe = Pipeline.load(model)
    rows = []
    for prompt in DEMO_PROMPTS:
        images = pipe.generate(prompt, num_images=4, seed=seed)
        scores = [score(im, prompt) for im in images]
        ok = sum(s.match for s in scores)
        asked = len(scores[0].objects)
        counts = Counter(s.num_found for s in scores if s.num_found != asked)  # misses by a wrong object count
        extra = "".join(f"; {k} object{'s' * (k != 1)} instead of {asked} in {n} image{'s' * (n != 1)}"
                        for k, n in sorted(counts.items()))
        print(f"{prompt!r}: {ok}/4 images match the prompt (shapes scorer{extra})")
        rows += [np.asarray(im) for im in images]
    path = out / "generated.png"
    save_grid(np.stack(rows), len(DEMO_PROMPTS), path, scale=3)
    print(f"wrote {path}: rows = prompts above, columns = seeds {seed}..{seed + 3} "
          f"({pipe.defaults['sampler']}, {pipe.defaults['steps']} steps, guidance {pipe.defaults['guidance']})")
    return path


def run(args: argparse.Namespace) -> int:
    from latentdiff.data.shapes import render, scene_for_index

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the output folder ({exc.strerror})") from None
    generate_grid(out, args.seed, args.model)
    scene, text = scene_for_index(args.seed, 0)
    rgb, _ = render(scene)
    path = out / "forward_noising.png"
    forward_noising_strip(rgb, seed=args.seed).save(path)
    print(f"scene: {text!r}")
    print(f"wrote {path}: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for t = "
          f"{', '.join(str(t + 1) for t in TIMESTEPS)}")
    return 0
