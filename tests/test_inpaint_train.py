"""Training the inpainting model: the mask mix, object captions, box mapping, and a tiny end-to-end run
whose result diffusers' StableDiffusionInpaintPipeline loads."""
import json

import numpy as np
import pytest
import torch

from latentdiff.data.latents import square_box
from latentdiff.data.shapes import SIZE_THRESHOLD, position_of
from latentdiff.eval.scorer import parse_caption
from latentdiff.train.inpaint import (
    MASK_KINDS,
    Example,
    InpaintTrainConfig,
    MaskMix,
    box_mask,
    draw_caption,
    draw_mask,
    object_captions,
)


def test_masks_are_drawn_at_the_configured_rates_and_cover_the_object():
    mix = MaskMix(box=0.4, stroke=0.1, rect=0.2, whole=0.3, box_dilate=2)
    ex = Example("a red circle and a blue square", boxes=[(4, 6, 16, 18), (30, 30, 52, 52)],
                 object_captions=[["a red circle"], ["a blue square"]])
    rng = np.random.default_rng(0)
    n = 4000
    kinds = []
    for _ in range(n):
        kind, mask, obj = draw_mask(ex, mix, 64, rng)
        kinds.append(kind)
        assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        if kind == "box":
            x0, y0, x1, y1 = ex.boxes[obj]
            assert (mask[y0 - 2:y1 + 2, x0 - 2:x1 + 2] == 255).all()
            assert (mask > 0).sum() == (y1 - y0 + 4) * (x1 - x0 + 4)
        elif kind == "whole":
            assert (mask == 255).all()
        else:
            assert 0 < (mask > 0).mean() < 1
    for k, p in zip(MASK_KINDS, mix.probabilities()):
        rate = kinds.count(k) / n
        assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5, (k, rate, p)
    # an image without boxes gets a rectangle instead of a box
    plain = [draw_mask(Example("a red circle"), MaskMix(box=1, stroke=0, rect=0, whole=0), 64, rng)[0]
             for _ in range(20)]
    assert set(plain) == {"rect"}


def test_object_captions_read_size_and_position_off_the_box():
    forms = object_captions("a red circle", (40, 2, 63, 25))  # a large circle at the top right
    assert forms == ["a red circle", "a large red circle", "a red circle in the top right",
                     "a large red circle in the top right"]
    spec = parse_caption(forms[-1]).objects[0]
    assert (spec.colour, spec.shape, spec.size, spec.position) == ("red", "circle", "large", position_of(51.5, 13.5))
    assert object_captions("a blue square", (28, 28, 40, 40))[1] == "a small blue square"
    assert 40 - 28 < SIZE_THRESHOLD
    assert object_captions("a dog on a sofa", (0, 0, 5, 5)) == ["a dog on a sofa"]
    rng = np.random.default_rng(1)
    ex = Example("full caption", boxes=[(0, 0, 4, 4)], object_captions=[["only the object"]])
    picks = [draw_caption(ex, 0, MaskMix(object_caption=0.5), rng) for _ in range(400)]
    assert 0.4 < picks.count("only the object") / 400 < 0.6
    assert {draw_caption(ex, None, MaskMix(object_caption=1.0), rng) for _ in range(20)} == {"full caption"}


def test_boxes_follow_the_centre_crop_and_resize_of_the_training_images():
    assert square_box((10, 20, 30, 40), 64, 64, 32) == (5, 10, 15, 20)
    assert square_box((26, 0, 46, 20), 84, 64, 64) == (16, 0, 36, 20)  # 10 px cropped on each side
    m = box_mask((5.5, 10, 15, 20.2), 32, 1)
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (9, 21, 4, 15)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A tiny inpainting fine-tune: 4 steps on 40 shapes images, from the tiny random model."""
    from latentdiff.config import from_dict
    from latentdiff.train.inpaint import train_inpaint

    tmp = tmp_path_factory.mktemp("inpaint_run")
    cfg = from_dict(InpaintTrainConfig, {
        "out": str(tmp / "run"), "base_model": str(tiny_model_dir), "device": "cpu", "validation_cases": 2,
        "validation_steps": 2,
        "data": {"folder": str(tmp / "data"), "shapes_num": 40, "holdout": 4},
        "loop": {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 2,
                 "log_every": 1, "validate_every": 0},
    })
    return cfg, train_inpaint(cfg)


def test_a_tiny_run_writes_a_model_diffusers_and_latentdiff_load(trained, tiny_model_dir):
    from diffusers import StableDiffusionInpaintPipeline
    from safetensors.torch import load_file

    from latentdiff.pipeline import Pipeline

    cfg, model = trained
    sd = StableDiffusionInpaintPipeline.from_pretrained(str(model), safety_checker=None, local_files_only=True)
    assert sd.unet.config.in_channels == 9
    pipe = Pipeline.load(model, device="cpu")
    assert pipe.is_inpainting and json.loads((model / "latentdiff.json").read_text())["recipe"]["loop"]["steps"] == 4
    w = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"]
    assert w[:, 4:].abs().max() > 0  # the new input channels, zero at the start, have learnt
    base = load_file(str(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"]
    assert not torch.equal(w[:, :4], base)
    run = model.parent
    assert (run / "inpaint" / "val" / "step0000004.png").is_file()
    log = [json.loads(line) for line in (run / "inpaint" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)


def test_a_finished_run_resumes_to_the_same_model_and_refuses_without_resume(trained):
    from latentdiff.errors import UserError
    from latentdiff.train.inpaint import train_inpaint

    cfg, model = trained
    before = (model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="--resume"):
        train_inpaint(cfg)
    assert train_inpaint(cfg, resume=True) == model
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_a_base_that_is_already_an_inpainting_model_trains_on_from_its_weights(trained, tmp_path):
    """An inpainting base keeps its U-Net (no second widening): with lr 0 the run's model is the base's."""
    import dataclasses

    from safetensors.torch import load_file

    from latentdiff.train.inpaint import train_inpaint

    cfg, model = trained
    again = train_inpaint(dataclasses.replace(cfg, base_model=str(model), out=str(tmp_path / "again"),
                                              loop=dataclasses.replace(cfg.loop, lr=0.0, steps=2)))
    before = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(again / "unet" / "diffusion_pytorch_model.safetensors"))
    assert after.keys() == before.keys() and after["conv_in.weight"].shape[1] == 9
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert json.loads((again / "latentdiff.json").read_text())["base_model"] == str(model)


def test_the_other_derived_recipes_refuse_an_inpainting_base(trained, tmp_path):
    from types import SimpleNamespace

    from latentdiff.errors import UserError
    from latentdiff.train.run import derived_run

    _, model = trained
    cfg = SimpleNamespace(base_model=str(model), device="cpu", out=str(tmp_path / "layout"))
    with pytest.raises(UserError, match="is an inpainting model.*start from a text-to-image model"):
        derived_run(cfg, "no")
    assert not (tmp_path / "layout").exists()


@pytest.mark.parametrize("flag", ["--model", "--base-model"])
def test_the_base_model_flag_matches_the_other_trainers(flag, tmp_path):
    """train-spatial and train-classifier take --model; train-inpaint takes it too (--base-model stays)."""
    from latentdiff.cli import build_parser

    args = build_parser().parse_args(["train-inpaint", "configs/inpaint.yaml", flag, str(tmp_path)])
    assert args.base_model == str(tmp_path)
