"""The inpainting evaluation: object-replacement cases, their scoring (exact on rendered scenes), the seam
metric, and a run of the evaluation on a tiny model."""
import dataclasses

import numpy as np
import pytest

from latentdiff.data.shapes import is_held_out, render
from latentdiff.eval.inpaint import edit_cases, evaluate, score_edit
from latentdiff.eval.scorer import parse_caption
from latentdiff.eval.seams import border_band, gradient_energy, seam_score
from latentdiff.inpaint import composite, feather


@pytest.fixture(scope="module")
def cases():
    return edit_cases(200)


def test_cases_replace_one_object_by_a_different_one(cases):
    assert len(cases) == 200 and [c.prompt for c in edit_cases(5)] == [c.prompt for c in cases[:5]]
    for c in cases:
        old, new = c.scene.objects[c.index], c.new
        assert (new.colour, new.shape) != (old.colour, old.shape) and new.box == old.box and new.size == old.size
        assert (new.colour, new.shape) not in {(o.colour, o.shape) for o in c.scene.objects}
        assert len(c.scene.objects) in (2, 3) and not is_held_out(c.target) and not is_held_out(c.scene)
        x0, y0, x1, y1 = old.box
        assert (c.mask[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] == 255).all()
        assert (c.mask > 0).sum() == (min(y1 + 2, 64) - max(y0 - 2, 0)) * (min(x1 + 2, 64) - max(x0 - 2, 0))
        spec = parse_caption(c.prompt).objects[0]
        assert (spec.colour, spec.shape, spec.size, spec.position) == (new.colour, new.shape, new.size, new.position)
    assert len({c.new.colour for c in cases}) == 8 and len({c.new.shape for c in cases}) == 3


def test_the_target_scene_passes_and_the_untouched_input_fails(cases):
    assert all(score_edit(render(c.target)[0], c).success for c in cases)
    scores = [score_edit(render(c.scene)[0], c) for c in cases]
    assert not any(s.success for s in scores) and all(s.others_kept for s in scores)
    # the new object painted but a neighbour recoloured: the others are not kept
    c = cases[0]
    j = next(j for j in range(len(c.scene.objects)) if j != c.index)
    other = c.target.objects[j]
    recoloured = dataclasses.replace(other, colour="white" if other.colour != "white" else "red")
    objects = tuple(recoloured if i == j else o for i, o in enumerate(c.target.objects))
    s = score_edit(render(dataclasses.replace(c.target, objects=objects))[0], c)
    assert s.new_in_mask and not s.others_kept and not s.success
    # the new object outside the hole does not count
    without = tuple(o for i, o in enumerate(c.target.objects) if i != c.index)
    empty = render(dataclasses.replace(c.target, objects=without))[0]
    assert not score_edit(empty, c).new_in_mask


def test_seam_energy_sees_a_hard_paste_and_less_of_a_feathered_one():
    background = np.full((64, 64, 3), 30, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 16:44] = 255
    patch = np.full_like(background, 90)
    hard = composite(patch, background, feather(mask / 255.0, 0))
    soft = composite(patch, background, feather(mask / 255.0, 4))
    assert seam_score(background, background, mask, 4).excess == 0
    h, s = seam_score(hard, background, mask, 4).excess, seam_score(soft, background, mask, 4).excess
    # a jump spread over a ramp of w + 1 = 5 px has a √5 ≈ 2.2 times lower RMS gradient if linear; the
    # smoothstep ramp is steeper in its middle (measured ratio 1.93)
    assert h > 1.5 * s > 0
    # the band: the outermost masked pixels and width + 1 px outside
    band = border_band(mask, 4)
    assert band[20, 30] and band[19, 30] and band[15, 30] and not band[14, 30] and not band[21, 30]
    assert gradient_energy(background, band) == 0


@pytest.mark.parametrize("which,mode", [("t2i", "blend"), ("inpaint", "model")])
def test_the_evaluation_runs_on_a_tiny_model(tiny_model_dir, which, mode, tmp_path):
    from latentdiff.models.inpaint import inpainting_unet
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    if which == "inpaint":
        pipe.unet = inpainting_unet(pipe.unet).eval()
    report, images = evaluate(pipe, edit_cases(3), mode, steps=2, batch_size=2, progress=False)
    assert report["mode"] == mode and report["success"]["n"] == 3 and len(report["cases"]) == 3
    assert len(images) == 3 and images[0].shape == (64, 64, 3)
    for key in ("seam_hard", "seam_feathered", "seam_raw", "seam_input"):
        assert np.isfinite(report["seam_excess"][key])
    c = edit_cases(3)[0]
    far = feather(c.mask / 255.0, 4) == 0
    assert np.array_equal(images[0][far], render(c.scene)[0][far])
