"""`latentdiff generate "" --classifier-guidance CLASS` on a tiny model and a tiny random classifier."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.cli import main
from latentdiff.models.classifier import ClassifierConfig, build_classifier, save_classifier


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = build_classifier(ClassifierConfig(block_out_channels=(8, 16), norm_num_groups=4), in_channels=4,
                           sample_size=8, num_train_timesteps=1000, shapes=("circle", "square", "triangle"),
                           colours=("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white"))
    return save_classifier(net, tmp_path_factory.mktemp("clf") / "classifier", {"model": "tiny"})


def _gen(capsys, model, out, *flags):
    code = main(["generate", "", "--model", str(model), "--steps", "3", "--sampler", "ddim", "--out", str(out),
                 "--device", "cpu", *flags])
    captured = capsys.readouterr()
    return code, captured.out.split(), captured.err


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_classifier_guidance_changes_images_records_itself_and_replays(tiny_model_dir, tiny_classifier_dir, tmp_path,
                                                                       capsys):
    code, plain, _ = _gen(capsys, tiny_model_dir, tmp_path / "plain", "--guidance", "1")
    assert code == 0
    code, zero, _ = _gen(capsys, tiny_model_dir, tmp_path / "zero", "--classifier-guidance", "circle",
                         "--classifier", str(tiny_classifier_dir), "--classifier-scale", "0")
    assert code == 0 and np.array_equal(_pixels(plain[0]), _pixels(zero[0]))  # s = 0 is no guidance
    code, guided, err = _gen(capsys, tiny_model_dir, tmp_path / "cg", "--classifier-guidance", "circle",
                             "--classifier", str(tiny_classifier_dir), "--classifier-scale", "3000")
    assert code == 0, err
    assert not np.array_equal(_pixels(plain[0]), _pixels(guided[0]))
    with Image.open(guided[0]) as im:
        rec = json.loads(im.text["latentdiff"])
    assert rec["guidance"] == 1.0  # empty prompt: classifier-free guidance would be the identity
    assert rec["extra"]["classifier_guidance"] == {"class": "circle", "scale": 3000.0,
                                                   "classifier_path": str(tiny_classifier_dir.resolve())}
    assert main(["replay", guided[0], "--out", str(tmp_path / "replay")]) == 0
    assert "identical to" in capsys.readouterr().out


@pytest.mark.parametrize("flags,words", [
    (["--classifier-guidance", "hexagon"], "the classifier knows circle, square, triangle, red"),
    (["--classifier-scale", "2"], "--classifier-scale and --classifier need --classifier-guidance CLASS"),
    (["--classifier-guidance", "circle", "--classifier-scale", "x"], "--classifier-scale 'x': expected a number"),
])
def test_classifier_flag_errors_are_one_line(tiny_model_dir, tiny_classifier_dir, tmp_path, capsys, flags, words):
    if "--classifier-scale" not in flags or "--classifier-guidance" in flags:
        flags = flags + ["--classifier", str(tiny_classifier_dir)]
    code, _, err = _gen(capsys, tiny_model_dir, tmp_path, *flags)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_missing_classifier_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    code, _, err = _gen(capsys, tiny_model_dir, tmp_path, "--classifier-guidance", "circle")
    assert code == 2 and "this model has no classifier/ folder; pass --classifier DIR" in err
