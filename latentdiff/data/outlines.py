"""Shapes the world does not name, for training a VAE that keeps outlines it never saw (issue #27, item 3).

A VAE trained on the world's five shapes alone reconstructs a 12-px star as a pentagon: it learnt to
draw the shapes it knows, not outlines. Mixing in scenes of irregular polygons (never a regular star)
teaches outlines in general, so a user's new shape (the star of docs/finetune.md) survives the round trip.
Each scene: 1–3 objects of 8–24 px in the world's palette on a world background (``shapes.render``'s
canvas and greys).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from latentdiff.data.shapes import BACKGROUND_MAX, CANVAS, PALETTE

DrawObject = Callable[[ImageDraw.ImageDraw, np.random.Generator, int, int, int, tuple], None]


def _scene(rng: np.random.Generator, draw_object: DrawObject) -> np.ndarray:
    """(64, 64, 3) uint8: 1–3 objects drawn by ``draw_object(draw, rng, cx, cy, side, fill)``."""
    grey = int(rng.integers(0, BACKGROUND_MAX + 1))
    image = Image.new("RGB", (CANVAS, CANVAS), (grey,) * 3)
    draw, colours = ImageDraw.Draw(image), list(PALETTE.values())
    for _ in range(int(rng.integers(1, 4))):
        side = int(rng.integers(8, 25))
        cx, cy = rng.integers(side // 2, CANVAS - side // 2, 2)
        fill = tuple(int(c) for c in colours[rng.integers(len(colours))])
        draw_object(draw, rng, int(cx), int(cy), side, fill)
    return np.asarray(image)


def _convex(draw, rng, cx, cy, side, fill):
    rx, ry = side / 2 * rng.uniform(0.6, 1.0), side / 2 * rng.uniform(0.6, 1.0)
    if rng.random() < 0.3:
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
        return
    angles, turn = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9)))), rng.uniform(0, 2 * np.pi)
    x, y = rx * np.cos(angles), ry * np.sin(angles)  # sorted angles on an ellipse: a convex polygon
    draw.polygon([(cx + a * np.cos(turn) - b * np.sin(turn), cy + a * np.sin(turn) + b * np.cos(turn))
                  for a, b in zip(x, y)], fill=fill)


def _concave(draw, rng, cx, cy, side, fill):
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 13))))
    radii = side / 2 * rng.uniform(0.3, 1.0, len(angles))  # radii vary independently: mostly concave
    draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)], fill=fill)


def generic_scene(rng: np.random.Generator) -> np.ndarray:
    """1–3 convex polygons (3–8 sides) or ellipses."""
    return _scene(rng, _convex)


def concave_scene(rng: np.random.Generator) -> np.ndarray:
    """1–3 irregular polygons of 5–12 vertices at random angles whose radii vary independently (30–100 %
    of the size), so most are concave. Never a regular star."""
    return _scene(rng, _concave)


def concave_images(n: int, seed: int) -> np.ndarray:
    """(n, 64, 64, 3) uint8: ``n`` concave-outline scenes, a function of (n, seed)."""
    rng = np.random.default_rng(seed)
    return np.stack([concave_scene(rng) for _ in range(n)]) if n else np.zeros((0, CANVAS, CANVAS, 3), np.uint8)
