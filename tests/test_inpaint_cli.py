"""`latentdiff inpaint` on a tiny model: PNGs with provenance, exact pixels outside the feather, and
one-line errors with exit status 2."""
import json

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 28, 3)).astype(np.uint8)
    mask = np.zeros((30, 28), np.uint8)
    mask[6:18, 8:20] = 255
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.dstack([image, 255 - mask])).save(tmp_path / "cut.png")
    Image.fromarray(mask[:20]).save(tmp_path / "small.png")
    return tmp_path, image, mask


def test_inpaint_writes_pngs_with_provenance_and_keeps_the_unmasked_pixels(tiny_model_dir, files, capsys):
    tmp, image, mask = files
    code, out, err = run(capsys, "inpaint", "a red circle", "--image", str(tmp / "img.png"), "--mask",
                         str(tmp / "mask.png"), "--model", str(tiny_model_dir), "--steps", "3", "--num-images", "2",
                         "--seed", "4", "--mask-blur", "2", "--out", str(tmp / "out"), "--device", "cpu")
    assert code == 0, err
    paths = out.split()
    assert [p.rsplit("/", 1)[1] for p in paths] == ["a-red-circle_inpaint_4.png", "a-red-circle_inpaint_5.png"]
    with Image.open(paths[1]) as img:
        px = np.asarray(img.convert("RGB")).astype(int)
        rec = json.loads(img.text["latentdiff"])
    assert px.shape == image.shape and rec["seed"] == 5
    assert rec["extra"]["inpaint"]["mode"] == "blend" and rec["extra"]["inpaint"]["mask_blur"] == 2
    far = np.ones_like(mask, bool)
    far[6 - 2:18 + 2, 8 - 2:20 + 2] = False  # the mask grown by the feather width (a box is enough here)
    assert np.abs(px[far] - image[far]).max() <= 2 and np.abs(px[mask > 0] - image[mask > 0]).mean() > 20


def test_mask_from_alpha(tiny_model_dir, files, capsys):
    tmp, image, mask = files
    code, out, err = run(capsys, "inpaint", "a square", "--image", str(tmp / "cut.png"), "--mask-from-alpha",
                         "--model", str(tiny_model_dir), "--steps", "2", "--mask-blur", "0", "--out", str(tmp / "o"))
    assert code == 0, err
    with Image.open(out.split()[0]) as img:
        px = np.asarray(img.convert("RGB"))
    assert np.array_equal(px[mask == 0], image[mask == 0])


@pytest.mark.parametrize("extra, words", [
    (["--mask", "{tmp}/small.png"], "small.png: size 28x20 differs from --image"),
    (["--mask", "{tmp}/nope.png"], "--mask {tmp}/nope.png: file not found"),
    (["--mask", "{tmp}/mask.png", "--mode", "model"], "--mode model needs an inpainting model"),
    (["--mask", "{tmp}/mask.png", "--mode", "fill"], "--mode 'fill': expected one of auto, model, blend"),
    (["--mask", "{tmp}/mask.png", "--strength", "0"], "--strength 0: expected a number in (0, 1]"),
    (["--mask", "{tmp}/mask.png", "--mask-blur", "-1"], "--mask-blur -1: must be at least 0"),
    (["--mask", "{tmp}/mask.png", "--resample", "3"], "RePaint resampling is for --mode blend with --sampler ddpm"),
    ([], "no mask: pass --mask MASK"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, files, capsys, extra, words):
    tmp = files[0]
    argv = ["inpaint", "x", "--image", str(tmp / "img.png"), "--model", str(tiny_model_dir), "--steps", "2",
            "--out", str(tmp / "o"), *[a.format(tmp=tmp) for a in extra]]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("latentdiff inpaint: error: ") and words.format(tmp=tmp) in err


def test_inpaint_takes_a_layout_like_generate(spatial_model_dir, files, capsys):
    """`latentdiff inpaint --layout`: the layout is drawn in the repainted region, the rest is kept, the record
    names it; its flags are checked as generate's."""
    tmp, image, mask = files
    (tmp / "layout.json").write_text(json.dumps([{"phrase": "a red circle", "box": [6, 4, 22, 20]}]))
    argv = ["inpaint", "a red circle", "--image", str(tmp / "img.png"), "--mask", str(tmp / "mask.png"), "--model",
            str(spatial_model_dir), "--mode", "blend", "--steps", "2", "--mask-blur", "1", "--device", "cpu"]
    code, out, err = run(capsys, *argv, "--out", str(tmp / "plain"))
    assert code == 0, err
    with Image.open(out.split()[0]) as img:
        plain = np.asarray(img.convert("RGB")).astype(int)
    code, out, err = run(capsys, *argv, "--layout", str(tmp / "layout.json"), "--layout-scale", "2",
                         "--out", str(tmp / "laid"))
    assert code == 0, err
    with Image.open(out.split()[0]) as img:
        rec = json.loads(img.info["latentdiff"])
        px = np.asarray(img.convert("RGB")).astype(int)
    assert rec["extra"]["layout"]["boxes"][0]["phrase"] == "a red circle" and "inpaint" in rec["extra"]
    ys, xs = np.nonzero(mask)
    far = np.ones(mask.shape, bool)
    far[max(ys.min() - 1, 0):ys.max() + 2, max(xs.min() - 1, 0):xs.max() + 2] = False  # the mask and its feather
    np.testing.assert_array_equal(px[far], image[far])
    assert np.abs(px - plain).max() > 0
    code, out, err = run(capsys, *argv, "--layout-scale", "2", "--out", str(tmp / "bad"))
    assert code == 2 and "--layout-scale needs --layout FILE or --segmap FILE" in err and err.count("\n") == 1
