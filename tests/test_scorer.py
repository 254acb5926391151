"""The scorer: caption parser, object finder, prompt/layout/segmap scores."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from latentdiff.data import shapes as sh
from latentdiff.data.grammar import CaptionError, ObjectSpec, Spec
from latentdiff.eval.scorer import (
    find_objects,
    parse_caption,
    score,
    score_layout,
    score_segmap,
)

ATTRIBUTES = ("colour", "shape", "size", "position")


@pytest.mark.parametrize(
    "text, objects, relation",
    [
        ("a small red circle in the top left", [("red", "circle", "small", "top left")], None),
        ("a large blue star at the bottom", [("blue", "star", "large", "bottom")], None),
        ("a green square", [("green", "square", None, None)], None),
        ("A white triangle in the centre.", [("white", "triangle", None, "center")], None),
        ("an orange circle", [("orange", "circle", None, None)], None),
        ("a red circle left of a blue square", [("red", "circle", None, None), ("blue", "square", None, None)],
         ("left of", 0, 1)),
        ("a cyan square below a cyan square", [("cyan", "square", None, None)] * 2, ("below", 0, 1)),
        ("a red circle and a blue square", [("red", "circle", None, None), ("blue", "square", None, None)], None),
        (
            "a small red circle in the top left, a blue square at the right and a large white star in the bottom",
            [("red", "circle", "small", "top left"), ("blue", "square", None, "right"),
             ("white", "star", "large", "bottom")],
            None,
        ),
    ],
)
def test_parse_caption(text, objects, relation):
    spec = parse_caption(text)
    assert spec == Spec(tuple(ObjectSpec(*o) for o in objects), relation)


@pytest.mark.parametrize("text", ["", "a red", "a pink circle", "a red circle near a blue square", "red circle"])
def test_parse_caption_rejects(text):
    with pytest.raises(CaptionError):
        parse_caption(text)


def accuracy(shapes, n=1000, seed=11):
    """Per-attribute accuracy of score(image, scene) and the fraction of own captions judged matching."""
    right = {a: [] for a in ATTRIBUTES}
    captions = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scene = sh.sample_scene(rng, shapes=shapes)
        rgb, _ = sh.render(scene)
        result = score(rgb, scene)
        for obj in result.objects:
            for a in ATTRIBUTES:
                right[a].append(getattr(obj, a))
        captions.append(score(rgb, sh.caption(scene, rng)).match)
    return {a: float(np.mean(v)) for a, v in right.items()}, float(np.mean(captions))


@pytest.mark.parametrize("shapes", [sh.BASE_SHAPES, sh.SHAPES], ids=["base", "with-star"])
def test_scorer_is_right_on_generated_scenes(shapes):
    per_attribute, captions = accuracy(shapes)
    assert all(v >= 0.99 for v in per_attribute.values()), per_attribute
    assert captions >= 0.99


def test_scorer_survives_noise():
    right = []
    for i in range(100):
        rng = np.random.default_rng([12, i])
        scene = sh.sample_scene(rng, shapes=sh.SHAPES)
        rgb, _ = sh.render(scene)
        noisy = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
        right.append(score(noisy, scene).match)
    assert np.mean(right) >= 0.97


def one_scene(*objects, background=20):
    """A Scene from (shape, colour, size, position) tuples, placed at the cell centres."""
    objs = []
    for shape, colour, size, position in objects:
        side = sh.SIZES[size]
        cx, cy = sh.cell_centre(position)
        box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
        objs.append(sh.ShapeObject(shape, colour, size, position, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), box))
    return sh.Scene(background, tuple(objs))


def test_wrong_attributes_and_relation_are_caught():
    scene = one_scene(("circle", "red", "small", "left"), ("square", "blue", "large", "right"))
    rgb, _ = sh.render(scene)
    assert score(rgb, "a red circle left of a blue square").match
    wrong_rel = score(rgb, "a red circle right of a blue square")
    assert wrong_rel.relation is False and not wrong_rel.match and all(o.matched for o in wrong_rel.objects)
    wrong_colour = score(rgb, "a green circle and a blue square")
    assert not wrong_colour.match and [o.colour for o in wrong_colour.objects] == [False, True]
    wrong_size = score(rgb, "a large red circle in the left, a blue square in the right and a red star in the top")
    assert not wrong_size.match and not wrong_size.count and wrong_size.objects[2].found is None
    assert wrong_size.objects[0].size is False and wrong_size.objects[0].position is True
    one = score(rgb, "a red circle")
    assert one.objects[0].matched and not one.count and not one.match


def test_accepts_pil_and_numpy():
    scene = one_scene(("star", "yellow", "large", "center"))
    rgb, _ = sh.render(scene)
    for image in (rgb, Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA")):
        (obj,) = find_objects(image)
        assert (obj.shape, obj.colour, obj.size, obj.position, obj.box) == ("star", "yellow", "large", "center",
                                                                          scene.objects[0].box)
    with pytest.raises(ValueError):
        find_objects(np.zeros((64, 64), np.uint8))


def test_layout_score():
    scene = one_scene(("triangle", "green", "large", "top left"), ("circle", "white", "small", "bottom right"))
    rgb, _ = sh.render(scene)
    result = score_layout(rgb, sh.boxes_annotation(scene))
    assert result.accuracy == 1.0 and result.mean_iou == 1.0
    x0, y0, x1, y1 = scene.objects[1].box
    shifted = [{"phrase": "a green triangle", "box": [0, 0, 40, 40]},
               {"phrase": "a red circle", "box": [x0, y0, x1, y1]}]
    result = score_layout(rgb, shifted)
    assert [b.ok for b in result.boxes] == [True, False] and 0 < result.boxes[0].iou < 1 and result.boxes[1].iou == 0


def test_segmap_score():
    scene = one_scene(("square", "purple", "large", "center"), ("star", "orange", "small", "top"))
    rgb, seg = sh.render(scene)
    result = score_segmap(rgb, seg, "a purple square and an orange star")
    assert result.pixel_accuracy == 1.0 and result.miou == 1.0 and result.colour is True
    wrong = seg.copy()
    wrong[wrong == 4] = 3  # the map says triangle where a star is drawn
    result = score_segmap(Image.fromarray(rgb), Image.fromarray(wrong), "a purple square and a red star")
    assert result.pixel_accuracy == 1.0 and result.class_iou[4] == 0.0 and result.miou < 1 and result.colour is False
