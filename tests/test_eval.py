"""The accuracy harness: exact on a pipe that draws what it is asked, sane on a tiny random model."""
import dataclasses
import json

import numpy as np
from PIL import Image

from latentdiff.data.shapes import SIZES, Scene, ShapeObject, cell_centre, held_out_prompts, render
from latentdiff.eval.accuracy import evaluate_prompts, pairwise_distance, wilson
from latentdiff.eval.scorer import parse_caption

OTHER_CELL = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom"),
              "below": ("bottom", "top"), None: ("left", "right")}


def _obj(spec, position):
    side = SIZES[spec.size or "large"]
    cx, cy = cell_centre(position)
    box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
    return ShapeObject(spec.shape, spec.colour, spec.size or "large", position, (cx, cy), box)


class OraclePipe:
    """Draws exactly the scene a prompt asks for (flipping the relation when ``wrong``)."""

    def __init__(self, wrong=False, third=False):
        self.wrong, self.third = wrong, third

    def generate(self, prompts, num_images=1, seed=0, **kw):
        out = []
        for p in prompts:
            spec = parse_caption(p)
            if len(spec.objects) == 1:
                objs = (_obj(spec.objects[0], spec.objects[0].position or "center"),)
            else:
                a, b = OTHER_CELL[spec.relation[0] if spec.relation else None]
                if self.wrong:
                    a, b = b, a
                objs = (_obj(spec.objects[0], a), _obj(spec.objects[1], b))
                if self.third:  # a copy of the second object in a free cell, as the v2 model sometimes draws
                    free = next(c for c in ("top left", "bottom right", "top right", "bottom left")
                                if c not in (a, b))
                    objs += (_obj(dataclasses.replace(spec.objects[1], size="small"), free),)
            rgb, _ = render(Scene(20, objs))
            out += [Image.fromarray(rgb)] * num_images
        return out


def test_oracle_scores_perfectly_and_a_wrong_relation_scores_zero():
    prompts = held_out_prompts()
    r = evaluate_prompts(OraclePipe(), prompts, num_images=2, progress=False)
    for key in ("one_colour_shape", "one_position", "one_size", "two_relation"):
        assert r[key]["accuracy"] == 1.0 and r[key]["n"] > 0, key
    assert r["diversity"] == 0.0  # identical images
    wrong = evaluate_prompts(OraclePipe(wrong=True),
                             [p for p in prompts if " of " in p or "above" in p or "below" in p],
                             num_images=1, progress=False)
    assert wrong["two_relation"]["accuracy"] == 0.0


def test_a_third_object_keeps_the_relation_but_fails_count_and_match():
    prompts = [p for p in held_out_prompts() if " of " in p or "above" in p or "below" in p]
    clean = evaluate_prompts(OraclePipe(), prompts, num_images=1, progress=False)
    assert clean["two_count"]["accuracy"] == 1.0 and clean["two_match"]["accuracy"] == 1.0
    third = evaluate_prompts(OraclePipe(third=True), prompts, num_images=1, progress=False)
    assert third["two_relation"]["accuracy"] == 1.0
    assert third["two_count"]["accuracy"] == 0.0 and third["two_match"]["accuracy"] == 0.0
    assert third["two_count"]["n"] == len(prompts)


def test_wilson_and_diversity():
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and abs((hi - lo) - 0.19) < 0.02
    a, b = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert pairwise_distance([a, b]) == 1.0


def test_eval_command_on_tiny_model(tiny_model_dir, tmp_path):
    from latentdiff.cli import main

    out = tmp_path / "rep"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--sections", "accuracy,guidance",
                 "--guidance", "1", "3", "--num-images", "2", "--limit", "3", "--steps", "4"]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert [r["guidance"] for r in res["guidance"]["results"]] == [1.0, 3.0]
    first = res["guidance"]["results"][0]["one_colour_shape"]
    assert first["n"] == 4 and 0.0 <= first["accuracy"] <= 1.0  # prompts 1 and 3 of 3 (stride 2) × 2 images
    assert res["accuracy"]["one_colour_shape"]["n"] == 6
    assert (out / "guidance_sweep.png").is_file() and (out / "accuracy_samples.png").is_file()
    assert "| 3 |" in (out / "report.md").read_text()


class TintedPipe(OraclePipe):
    """The oracle's images with every object's colour pushed off its palette colour by ``shift`` levels in
    the red channel (not enough to change the nearest palette colour)."""

    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def generate(self, prompts, num_images=1, seed=0, **kw):
        out = []
        for im in super().generate(prompts, num_images, seed):
            rgb = np.asarray(im).astype(np.int16)
            background = rgb[0, 0]
            objects = np.abs(rgb - background).sum(-1) > 30
            rgb[..., 0] = np.where(objects, np.clip(rgb[..., 0] + self.shift, 0, 255), rgb[..., 0])
            out.append(Image.fromarray(rgb.astype(np.uint8)))
        return out


def test_colour_error_sees_a_drift_the_verdict_does_not():
    """The one-object colour error is ~0 for exact palette colours and grows with a tint that leaves every
    colour verdict right; the shape IoU is the template fit of a right shape."""
    prompts = [p for p in held_out_prompts() if " of " not in p and " and " not in p
               and "above" not in p and "below" not in p]
    exact = evaluate_prompts(OraclePipe(), prompts, num_images=1, progress=False)
    tinted = evaluate_prompts(TintedPipe(-20), prompts, num_images=1, progress=False)
    assert exact["one_colour_shape"]["accuracy"] == tinted["one_colour_shape"]["accuracy"] == 1.0
    assert exact["one_colour_error"] < 2.0
    assert 15.0 < tinted["one_colour_error"] < 25.0
    assert 0.8 < exact["one_shape_iou"] <= 1.0
