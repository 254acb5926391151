"""Prompt-following accuracy of a model on the shapes world, scored exactly by the scorer.

For each prompt, ``n`` images (image i from the seed's i-th generator) are generated and scored:
one-object prompts give colour+shape, position and size accuracy; two-object relation prompts give the
share where both objects have the right colour and shape and the relation holds (a third object drawn
besides them does not count against it; ``two_count`` and ``two_match`` do count it). Diversity is the
mean pairwise RMS distance between the images of one prompt (pixels in [0, 1]).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from latentdiff.data.shapes import PALETTE
from latentdiff.eval.scorer import parse_caption, score


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Tally:
    k: int = 0
    n: int = 0

    def add(self, ok: bool | None) -> None:
        if ok is not None:
            self.k += int(bool(ok))
            self.n += 1

    def summary(self) -> dict:
        lo, hi = wilson(self.k, self.n)
        return {"accuracy": self.k / self.n if self.n else None, "correct": self.k, "n": self.n, "ci95": [lo, hi]}


@dataclass
class PromptAccuracy:
    one_colour_shape: Tally = field(default_factory=Tally)
    one_position: Tally = field(default_factory=Tally)
    one_size: Tally = field(default_factory=Tally)
    two_relation: Tally = field(default_factory=Tally)
    two_count: Tally = field(default_factory=Tally)  # exactly two objects found: no third, none missing
    two_match: Tally = field(default_factory=Tally)  # everything asked and nothing more (what `demo` counts)
    any_match: Tally = field(default_factory=Tally)
    diversity: list = field(default_factory=list)
    # continuous evidence behind the one-object verdicts, which moves before a verdict flips: the distance
    # (0-255 RGB units) from the found object's core colour to the asked palette colour, and the found
    # object's IoU with its best shape template (0 where the shape is wrong or nothing was found)
    one_colour_error: list = field(default_factory=list)
    one_shape_iou: list = field(default_factory=list)

    def add(self, prompt: str, images: list) -> None:
        spec = parse_caption(prompt)
        for im in images:
            s = score(im, spec)
            self.any_match.add(s.match)
            if len(spec.objects) == 1:
                o = s.objects[0]
                self.one_colour_shape.add(o.colour and o.shape)
                if o.found is None:
                    self.one_shape_iou.append(0.0)
                else:
                    asked = np.array(PALETTE[o.requested.colour], np.float32)
                    self.one_colour_error.append(float(np.linalg.norm(np.array(o.found.rgb) - asked)))
                    self.one_shape_iou.append(o.found.shape_iou if o.shape else 0.0)
                self.one_position.add(o.position)
                self.one_size.add(o.size)
            elif len(spec.objects) == 2 and spec.relation is not None:
                self.two_relation.add(all(o.colour and o.shape for o in s.objects) and bool(s.relation))
                self.two_count.add(s.count)
                self.two_match.add(s.match)
        self.diversity.append(pairwise_distance(images))

    def summary(self) -> dict:
        out = {k: v.summary() for k, v in vars(self).items() if isinstance(v, Tally)}
        out["diversity"] = float(np.mean(self.diversity)) if self.diversity else None
        for name in ("one_colour_error", "one_shape_iou"):
            values = getattr(self, name)
            out[name] = float(np.mean(values)) if values else None
        return out


def pairwise_distance(images: list) -> float:
    """Mean RMS distance over pairs of images (pixels scaled to [0, 1])."""
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    pairs = list(itertools.combinations(arrays, 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in pairs]))


def evaluate_prompts(pipe, prompts: list[str], num_images: int = 4, guidance: float | None = None,
                     sampler: str | None = None, steps: int | None = None, seed: int = 0,
                     progress: bool = True) -> dict:
    """Generate ``num_images`` per prompt with ``pipe`` and score them; returns the summary dict."""
    acc = PromptAccuracy()
    chunk = 4  # prompts per call: 4 × num_images rows, drawn in batches of 16
    for start in tqdm(range(0, len(prompts), chunk), desc=f"eval w={guidance}", disable=not progress, leave=False):
        group = prompts[start:start + chunk]
        images = pipe.generate(group, num_images=num_images, guidance=guidance, sampler=sampler, steps=steps,
                               seed=seed, batch_size=16)
        for i, prompt in enumerate(group):
            acc.add(prompt, images[i * num_images:(i + 1) * num_images])
    return {"guidance": guidance, "sampler": sampler, "steps": steps, "num_images": num_images,
            "num_prompts": len(prompts), **acc.summary()}
