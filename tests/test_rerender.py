"""bench/rerender_winners.py: a passing sample is drawn again in the palette's colours, where the model put it."""
import numpy as np
from conftest import load_script
from PIL import Image

from latentdiff.data.shapes import PALETTE, Scene, ShapeObject, render
from latentdiff.eval.scorer import find_objects

CAPTION = "a red circle left of a blue square"


def scene(gap_x: int) -> Scene:
    """A red circle at x 8..30 and a blue square ``gap_x`` px to its right, on background 30."""
    red = ShapeObject("circle", "red", "large", "left", (19.0, 31.0), (8, 20, 30, 42))
    x0 = 30 + gap_x
    blue = ShapeObject("square", "blue", "small", "center", (x0 + 6.0, 31.0), (x0, 25, x0 + 12, 37))
    return Scene(30, (red, blue))


def sample_like(rgb: np.ndarray, shift: int = 25) -> Image.Image:
    """The scene as a model might draw it: the objects' colours off the palette by ``shift``, every pixel noisy."""
    objects = (rgb != rgb[0, 0]).any(axis=2, keepdims=True)  # (H, W, 1)
    noise = np.random.default_rng(0).integers(-4, 5, rgb.shape)
    return Image.fromarray(np.clip(rgb.astype(int) + shift * objects + noise, 0, 255).astype(np.uint8))


def test_a_passing_sample_is_redrawn_in_palette_colours_in_its_own_boxes():
    bench = load_script("bench/rerender_winners.py")
    clean, _ = render(scene(gap_x=10))
    sample = sample_like(clean)
    out, why = bench.redraw(sample, CAPTION)
    assert why is None
    assert np.array_equal(out, clean)  # same boxes, palette colours, the background level recovered
    found = {o.colour: o.rgb for o in find_objects(out)}
    assert tuple(round(c) for c in found["red"]) == PALETTE["red"]


def test_a_failing_sample_or_one_with_boxes_too_close_is_not_redrawn():
    bench = load_script("bench/rerender_winners.py")
    clean, _ = render(scene(gap_x=10))
    assert bench.redraw(Image.fromarray(clean), "a green circle left of a blue square") == (None, "not passing")
    rgb, _ = render(scene(gap_x=3))
    assert bench.redraw(Image.fromarray(rgb), CAPTION)[1] is None  # 3 px apart: redrawn
    # the sample's circle bulges 2 px to the right (box x 8..32, 1 px from the square; it still passes): its
    # redrawn box, 23 px around the found centre, ends at x = 32 too, closer than the data's 2 px gap
    rgb[20:42, 30:32] = PALETTE["red"]
    assert bench.redraw(Image.fromarray(rgb), CAPTION) == (None, "boxes too close")
