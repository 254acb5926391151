"""Layout (ControlNet on the boxes' picture, or GLIGEN) and segmentation (ControlNet) conditioning: routes,
nested guidance, inputs, training."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_pipeline
from PIL import Image

from latentdiff.conditioning import Conditioning, Grounding, unet_model
from latentdiff.diffusion.guidance import Regional, classifier_free_guidance, nested_guidance
from latentdiff.errors import UserError
from latentdiff.layout import LayoutEntry, Spatial, read_layout, read_segmap, region_weights

# --- nested multi-condition guidance ------------------------------------------------------------------

def _toy_model():
    """ε(x, t, c) nonlinear in c, so guidance terms differ per condition and channel."""
    def model(x, t, c):
        return (torch.tanh(x * (1 + c[:, :1, None, None]) + c[:, 1:2, None, None] * x ** 2)
                + 0.1 * t[:, None, None, None])
    return model


def _counting(model):
    """``model`` and the list of batch sizes it is called with."""
    calls = []

    def counted(x, t, c):
        calls.append(x.shape[0])
        return model(x, t, c)
    return counted, calls


def _chain(b=2, k=3):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 2, generator=g) for _ in range(k + 1)]


def test_nested_guidance_one_condition_is_classifier_free_guidance():
    model, (c0, c1) = _toy_model(), _chain(k=1)
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([5.0, 7.0])
    for w in (0.0, 1.0, 3.5):
        a = nested_guidance(model, [c0, c1], [w])(x, t)
        b = classifier_free_guidance(model, c1, c0, w)(x, t)
        torch.testing.assert_close(a, b)


def test_nested_guidance_scale_one_removes_only_that_term():
    model, chain = _toy_model(), _chain(k=3)
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([5.0, 7.0])
    eps = [model(x, t, c) for c in chain]
    scales = [2.0, 3.0, 4.0]
    for i in range(3):
        s = list(scales)
        s[i] = 1.0
        expected = eps[3] + sum((s[j] - 1) * (eps[j + 1] - eps[j]) for j in range(3) if j != i)
        torch.testing.assert_close(nested_guidance(model, chain, s)(x, t), expected)
    # the InstructPix2Pix form ε(C_0) + Σ s_i Δ_i is the same thing
    ip2p = eps[0] + sum(scales[j] * (eps[j + 1] - eps[j]) for j in range(3))
    torch.testing.assert_close(nested_guidance(model, chain, scales)(x, t), ip2p)


def test_nested_guidance_all_ones_is_one_conditional_pass():
    base, (model, calls) = _toy_model(), _counting(_toy_model())
    chain = _chain(k=2)
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([5.0, 7.0])
    torch.testing.assert_close(nested_guidance(model, chain, [1.0, 1.0])(x, t), base(x, t, chain[2]))
    assert calls == [2]


def test_a_regional_condition_mixes_its_parts_eps_by_its_weights():
    base, (model, calls) = _toy_model(), _counting(_toy_model())
    c0, c1, c2, c3 = _chain(k=3)
    x, t = torch.randn(2, 4, 3, 3), torch.tensor([5.0, 7.0])
    w = torch.rand(3, 1, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    w = w / w.sum(0)
    regional = Regional([c1, c2, c3], w)
    eps = [base(x, t, c) for c in (c0, c1, c2, c3)]
    mixed = w[0] * eps[1] + w[1] * eps[2] + w[2] * eps[3]
    torch.testing.assert_close(nested_guidance(model, [c0, regional], [2.5])(x, t), eps[0] + 2.5 * (mixed - eps[0]))
    assert calls == [8]  # one batched forward: C_0 and the three parts
    # all the weight on one part is that part as a plain condition
    one = torch.zeros(3, 1, 1, 3, 3)
    one[1] = 1.0
    torch.testing.assert_close(nested_guidance(base, [c0, Regional([c1, c2, c3], one)], [2.5])(x, t),
                               nested_guidance(base, [c0, c2], [2.5])(x, t))
    with pytest.raises(ValueError, match="3 parts and 2 weight maps"):
        Regional([c1, c2, c3], w[:2])


def test_region_weights_give_each_box_its_cells_and_the_prompt_the_rest():
    w = region_weights([LayoutEntry("a", (0.0, 0.0, 0.5, 0.5)), LayoutEntry("b", (0.5, 0.25, 1.0, 0.625))], 4, 4)
    assert w.shape == (3, 4, 4)
    torch.testing.assert_close(w.sum(0), torch.ones(4, 4))
    torch.testing.assert_close(w[1], torch.tensor([[1., 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    torch.testing.assert_close(w[2], torch.tensor([[0., 0, 0, 0], [0, 0, 1, 1], [0, 0, .5, .5], [0, 0, 0, 0]]))
    # overlapping boxes share a cell in proportion to their cover; the prompt keeps nothing there
    w = region_weights([LayoutEntry("a", (0.0, 0.0, 1.0, 1.0)), LayoutEntry("b", (0.0, 0.0, 0.5, 1.0))], 1, 2)
    torch.testing.assert_close(w, torch.tensor([[[0., 0]], [[.5, 1]], [[.5, 0]]]))
    # a share of 0.5 leaves half of every covered cell to the prompt
    half = region_weights([LayoutEntry("a", (0.0, 0.0, 0.5, 1.0))], 1, 2, share=0.5)
    torch.testing.assert_close(half, torch.tensor([[[.5, 1]], [[.5, 0]]]))
    with pytest.raises(ValueError, match="share 1.5 is outside"):
        region_weights([LayoutEntry("a", (0.0, 0.0, 0.5, 1.0))], 1, 2, share=1.5)


# --- routes --------------------------------------------------------------------------------------------

def _grounding(b=2, n=3, d=32):
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(b, n, 4, generator=g).sort(-1).values
    return Grounding(boxes, torch.randn(b, n, d, generator=g), torch.ones(b, n))


def test_conditioning_cat_and_index_carry_grounding_and_control():
    c = Conditioning(context=torch.randn(2, 5, 32), grounding=_grounding(), control=torch.randn(2, 5, 8, 8))
    both = Conditioning.cat([c, c.index([1, 0])])
    assert both.batch_size == 4 and both.grounding.boxes.shape == (4, 3, 4) and both.control.shape[0] == 4
    back = both.index([3, 2])
    for a, b in ((back.grounding.embeddings, c.grounding.embeddings), (back.control, c.control),
                 (back.context, c.context)):
        torch.testing.assert_close(a, b)
    assert c.grounding.null().mask.sum() == 0


@pytest.fixture(scope="module")
def checkpoints(spatial_model_dir):
    return spatial_model_dir


def test_untrained_gated_unet_and_controlnet_leave_the_output_unchanged():
    from latentdiff.models.control import controlnet_from_unet, one_hot
    from latentdiff.models.gligen import gated_unet

    pipe = build_tiny_pipeline()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    plain = Conditioning(context=torch.randn(2, 77, 32))
    ref = unet_model(pipe.unet, pipe.schedule)(x, t, plain)
    gated = gated_unet(pipe.unet)
    out = unet_model(gated, pipe.schedule)(x, t, Conditioning(context=plain.context, grounding=_grounding()))
    torch.testing.assert_close(out, ref)
    seg = one_hot(torch.randint(0, 5, (2, 32, 32)))
    net = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    out = unet_model(pipe.unet, pipe.schedule, controlnet=net)(x, t, Conditioning(context=plain.context, control=seg))
    torch.testing.assert_close(out, ref)
    assert all(p.requires_grad == (".fuser." in n or n.startswith("position_net."))
               for n, p in gated.named_parameters())


def test_rasterise_layout_fills_each_box_with_its_phrase():
    from latentdiff.models.control import rasterise_layout

    e = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])  # (1, 3, D=2); the third slot is unused
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]]])
    pic = rasterise_layout(boxes, e, torch.tensor([[1.0, 1.0, 0.0]]), 8, 4)  # height 8, width 4
    assert pic.shape == (1, 3, 8, 4)
    # box 0 covers rows 0-3, columns 0-1; box 1 rows 2-3, columns 1-3; they share rows 2-3 of column 1
    torch.testing.assert_close(pic[0, :, 0, 0], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(pic[0, :, 3, 3], torch.tensor([0.0, 2.0, 1.0]))
    torch.testing.assert_close(pic[0, :, 2, 1], torch.tensor([0.5, 1.0, 1.0]))  # overlap: the mean
    assert pic[0, :, 4:].abs().sum() == 0 and pic[0, :, 0, 2:].abs().sum() == 0  # outside every box
    assert rasterise_layout(boxes, e, torch.zeros(1, 3), 8, 8).abs().sum() == 0  # the null layout


def test_layout_and_segmentation_controlnets_add_their_residuals():
    """An untrained layout ControlNet leaves the output unchanged; with both ControlNets the U-Net gets the
    sum of their residuals (diffusers' MultiControlNetModel)."""
    from latentdiff.conditioning import network_output
    from latentdiff.models.control import controlnet_from_unet, one_hot

    pipe = build_tiny_pipeline()
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    ctx = torch.randn(2, 77, 32)
    seg, pic = one_hot(torch.randint(0, 5, (2, 32, 32))), torch.randn(2, 33, 32, 32)
    seg_net = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    lay_net = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor, 33)
    ref = network_output(pipe.unet, None, x, t, Conditioning(context=ctx), torch.float32)
    torch.testing.assert_close(network_output(pipe.unet, None, x, t, Conditioning(context=ctx, layout_control=pic),
                                              torch.float32, lay_net), ref)
    with torch.no_grad():
        for net in (seg_net, lay_net):
            for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters()]:
                p.normal_(0, 0.1)
    both = network_output(pipe.unet, seg_net, x, t, Conditioning(context=ctx, control=seg, layout_control=pic),
                          torch.float32, lay_net)
    d1, m1 = seg_net(x, t, encoder_hidden_states=ctx, controlnet_cond=seg, return_dict=False)
    d2, m2 = lay_net(x, t, encoder_hidden_states=ctx, controlnet_cond=pic, return_dict=False)
    summed = pipe.unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=[a + b for a, b in zip(d1, d2)],
                       mid_block_additional_residual=m1 + m2, return_dict=False)[0]
    torch.testing.assert_close(both, summed)
    assert (both - ref).abs().max() > 1e-3
    with pytest.raises(ValueError, match="layout picture was given but no ControlNet"):
        network_output(pipe.unet, seg_net, x, t, Conditioning(context=ctx, layout_control=pic), torch.float32)


# --- inputs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    ([{"phrase": "a red circle", "box": [0, 0, 40, 10]}], "entry 0: box [0, 0, 40, 10] is outside the 32x32 image"),
    ([{"phrase": "a", "box": [0, 0, 4, 4]}, {"phrase": "b", "box": [10, 2, 10, 8]}],
     "entry 1: box [10, 2, 10, 8]: expected x0 < x1"),
    ([{"phrase": "  ", "box": [0, 0, 4, 4]}], "entry 0: phrase '  ': expected a non-empty string"),
    ([{"phrase": "a", "box": [0, 0, 4, 4]}] * 4, "4 boxes; at most 3 are supported"),
    ([{"phrase": "a", "box": [0, 0, 4]}], "entry 0: box [0, 0, 4]: expected four numbers"),
    ({"phrase": "a"}, "expected a JSON list"),
])
def test_layout_errors_name_file_entry_and_problem(tmp_path, data, expected):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        read_layout(path, 32, 32, max_boxes=3)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and "\n" not in msg


def test_layout_invalid_json_and_normalised_boxes(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"phrase": "a red circle", "box": [1, 2, 3, 4],}]')
    with pytest.raises(UserError, match=r"bad\.json: invalid JSON: .* \(line 1, column \d+\)"):
        read_layout(path, 32, 32)
    path.write_text('[{"phrase": "a red circle", "box": [0.25, 0.5, 0.75, 1.0]}]')
    assert read_layout(path, 32, 32, normalized=True) == [LayoutEntry("a red circle", (0.25, 0.5, 0.75, 1.0))]
    path.write_text('[{"phrase": "a red circle", "box": [8, 16, 24, 32]}]')
    assert read_layout(path, 32, 32) == [LayoutEntry("a red circle", (0.25, 0.5, 0.75, 1.0))]
    with pytest.raises(UserError, match="outside \\[0, 1\\]"):
        read_layout(path, 32, 32, normalized=True)


def test_segmap_reading_and_errors(tmp_path):
    seg = np.zeros((32, 32), np.uint8)
    seg[4:10, 4:10] = 3
    Image.fromarray(seg).save(tmp_path / "ok.png")
    pal = Image.fromarray(seg, mode="L").convert("P")
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_segmap(tmp_path / "ok.png", 32, 32), seg)
    np.testing.assert_array_equal(read_segmap(tmp_path / "pal.png", 32, 32), seg)
    cases = {"size.png": (Image.fromarray(seg[:16]), "size 32x16 differs from the image's 32x32"),
             "ids.png": (Image.fromarray(seg * 3), "unknown class ids [9]"),
             "rgb.png": (Image.fromarray(np.stack([seg] * 3, -1)), "mode RGB: expected a single-channel")}
    for name, (im, expected) in cases.items():
        im.save(tmp_path / name)
        with pytest.raises(UserError) as err:
            read_segmap(tmp_path / name, 32, 32)
        assert str(tmp_path / name) in str(err.value) and expected in str(err.value)


# --- generation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout_kind", ["layout_controlnet", "gligen"])
def test_text_layout_and_segmap_together(checkpoints, layout_kind):
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(checkpoints, device="cpu").attach_layout(checkpoints / layout_kind)
    assert (pipe.layout_controlnet is not None) == (layout_kind == "layout_controlnet")
    pipe.attach_segmap(checkpoints / "controlnet")
    seg = np.zeros((32, 32), np.uint8)
    seg[2:14, 2:14] = 1
    layout = [LayoutEntry("a red circle", (0.05, 0.05, 0.45, 0.45))]
    kw = dict(seed=3, steps=2, guidance=2.0)
    plain = np.asarray(pipe.generate("a red circle", **kw)[0]).astype(int)
    both = pipe.generate("a red circle", spatial=Spatial(layout, seg, 1.5, 1.5), **kw)[0]
    record = json.loads(both.info["latentdiff"])
    assert record["extra"]["layout"]["boxes"][0]["phrase"] == "a red circle"
    assert record["extra"]["segmap"]["classes"] == [0, 1]
    assert np.abs(np.asarray(both).astype(int) - plain).max() > 0  # the routes reach the network
    again = pipe.generate("a red circle", spatial=Spatial(layout, seg, 1.5, 1.5), **kw)[0]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(both))
    moved = [LayoutEntry("a red circle", (0.5, 0.5, 0.95, 0.95))]
    other = pipe.generate("a red circle", spatial=Spatial(moved, seg, 1.5, 1.5), **kw)[0]
    assert np.abs(np.asarray(other).astype(int) - np.asarray(both).astype(int)).max() > 0  # the box matters


@pytest.mark.parametrize("guidance", [2.0, 1.0])
def test_regional_text_draws_each_box_from_its_own_phrase(checkpoints, guidance):
    """Regional text: inside each box a share of the text branch is the box's phrase alone. With every phrase
    equal to the prompt it is the plain layout (up to float rounding); with other phrases the image changes,
    more with a larger share; the record keeps the share and gives it back."""
    from latentdiff.layout import recorded_spatial
    from latentdiff.pipeline import Pipeline
    from latentdiff.provenance import Record
    from latentdiff.request import Row

    pipe = Pipeline.load(checkpoints, device="cpu").attach_layout(checkpoints / "layout_controlnet")
    prompt = "a red circle left of a blue square"
    boxes = [(0.05, 0.3, 0.4, 0.7), (0.55, 0.25, 0.95, 0.7)]
    rows, opts = [Row(prompt, "", 3)], dict(steps=2, guidance=guidance, sampler="ddim", height=32, width=32)

    def latents(phrases, share):
        layout = [LayoutEntry(p, b) for p, b in zip(phrases, boxes)]
        return pipe.sample_rows(rows, spatial=Spatial(layout, layout_scale=2.0, regional_text=share), **opts)
    # (the batch differs in size, so its matrix products round differently: 1e-5, not 0)
    torch.testing.assert_close(latents([prompt, prompt], 1.0), latents([prompt, prompt], 0.0), atol=1e-4, rtol=1e-4)
    phrases = ["a red circle", "a blue square"]
    plain, half, whole = (latents(phrases, a) for a in (0.0, 0.5, 1.0))
    assert 1e-3 < (half - plain).abs().max() < (whole - plain).abs().max()  # the phrases reach the boxes
    spatial = Spatial([LayoutEntry(p, b) for p, b in zip(phrases, boxes)], regional_text=0.5)
    image = pipe.generate(prompt, seed=3, steps=2, guidance=guidance, spatial=spatial)[0]
    record = Record.from_json(image.info["latentdiff"])
    assert record.extra["layout"]["regional_text"] == 0.5
    again = pipe.generate(prompt, seed=3, steps=2, guidance=guidance, spatial=recorded_spatial(record))[0]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(image))
    no_share = pipe.generate(prompt, seed=3, steps=2, guidance=guidance, spatial=replace(spatial, regional_text=0.0))[0]
    assert "regional_text" not in json.loads(no_share.info["latentdiff"])["extra"]["layout"]


def test_a_controlnet_attached_as_the_wrong_condition_is_refused(checkpoints):
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(checkpoints, device="cpu")
    with pytest.raises(UserError, match="is a layout ControlNet; pass it as the layout checkpoint"):
        pipe.attach_segmap(checkpoints / "layout_controlnet")
    with pytest.raises(UserError, match="not a layout \\(GLIGEN\\) checkpoint"):
        pipe.attach_layout(checkpoints / "controlnet")


def test_cli_layout_and_segmap(checkpoints, tmp_path, capsys):
    from latentdiff.cli import main

    (tmp_path / "layout.json").write_text('[{"phrase": "a red circle", "box": [2, 2, 14, 14]}]')
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "seg.png")
    base = ["generate", "a red circle", "--model", str(checkpoints), "--steps", "2", "--device", "cpu",
            "--out", str(tmp_path / "out")]
    assert main(base + ["--layout", str(tmp_path / "layout.json"), "--segmap", str(tmp_path / "seg.png"),
                        "--layout-scale", "2", "--segmap-scale", "1.5"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    (tmp_path / "far.json").write_text('[{"phrase": "a red circle", "box": [2, 2, 40, 14]}]')
    capsys.readouterr()
    assert main(base + ["--layout", str(tmp_path / "far.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "far.json: entry 0: box [2, 2, 40, 14] is outside the 32x32 image" in err
    assert main(base + ["--segmap-scale", "2"]) == 2
    assert "--segmap-scale needs --segmap FILE" in capsys.readouterr().err


def test_cli_without_checkpoint_names_the_missing_folder(tiny_model_dir, tmp_path, capsys):
    from latentdiff.cli import main

    (tmp_path / "layout.json").write_text('[{"phrase": "a red circle", "box": [2, 2, 14, 14]}]')
    assert main(["generate", "x", "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(tmp_path),
                 "--layout", str(tmp_path / "layout.json")]) == 2
    assert "has no layout_controlnet/ or gligen/ checkpoint; pass --layout-model DIR" in capsys.readouterr().err


# --- training ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_records(tmp_path_factory):
    from latentdiff.data.folder import load_folder
    from latentdiff.data.shapes import write_dataset

    folder = tmp_path_factory.mktemp("shapes")
    write_dataset(folder, 24, seed=0, workers=1)
    return load_folder(folder)


def _stage(condition, records, dropout=0.1, method="gligen", binder=False):
    from latentdiff.data.latents import load_images
    from latentdiff.train.config import LoopConfig
    from latentdiff.train.finetune import caption_token_ids
    from latentdiff.train.spatial import SpatialStage, SpatialTrainConfig, build_model
    from latentdiff.train.stages import vae_latent_stats

    base = build_tiny_pipeline()
    cfg = SpatialTrainConfig(condition=condition, spatial_dropout=dropout, validation_cases=0, method=method,
                             binder=binder,
                             loop=LoopConfig(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=2, log_every=1))
    mean, std = vae_latent_stats(base.vae, load_images(records, 32, False), torch.device("cpu"))
    tokens, null = caption_token_ids(base, [r.text for r in records], lambda _: None)
    return base, cfg, SpatialStage(cfg, base, build_model(condition, base, method=method, binder=binder), mean, std,
                                   tokens, null, records, 32, torch.device("cpu"))


CASES = [("layout", "gligen"), ("layout", "controlnet"), ("segmap", "gligen")]  # (condition, layout method)


@pytest.mark.parametrize("condition, method", CASES)
def test_spatial_dropout_rate_is_what_was_asked(shapes_records, condition, method):
    _, _, stage = _stage(condition, shapes_records, dropout=0.3, method=method)
    gen = torch.Generator().manual_seed(0)
    dropped = []
    for _ in range(40):
        c = stage.condition(torch.arange(24), gen)
        if method == "controlnet":
            assert c.grounding is None and c.control is None
            dropped.append(c.layout_control.flatten(1).abs().sum(1) == 0)
        elif condition == "layout":
            dropped.append(c.grounding.mask.sum(1) == 0)
        else:
            dropped.append(c.control.flatten(1).sum(1) == 0)
    rate = torch.cat(dropped).float().mean().item()
    assert abs(rate - 0.3) < 0.05  # 960 draws: 4.5 standard deviations


@pytest.mark.parametrize("condition, method", CASES)
def test_training_moves_only_the_new_layers_and_saves_them(shapes_records, condition, method, tmp_path):
    from accelerate import Accelerator

    from latentdiff.train.loop import run_stage

    base, cfg, stage = _stage(condition, shapes_records, method=method)
    frozen = {k: v.clone() for k, v in base.unet.state_dict().items()}
    new = {k: v.clone() for k, v in stage.model.named_parameters() if v.requires_grad}
    result = run_stage(stage, cfg.loop, tmp_path / condition, 0, Accelerator(cpu=True), False, {})
    unet = stage.model.unet
    for k, v in unet.state_dict().items():
        if k in frozen:
            torch.testing.assert_close(v, frozen[k])
    moved = [k for k, v in stage.model.named_parameters() if k in new and not torch.equal(v, new[k])]
    assert moved
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.from_components(base.unet, base.vae, base.text_encoder, base.tokenizer, base.schedule)
    assert result.name == {"gligen": "gligen", "controlnet": "layout_controlnet"}[method] if condition == "layout" \
        else result.name == "controlnet"
    (pipe.attach_layout if condition == "layout" else pipe.attach_segmap)(result)
    assert (pipe.layout_controlnet is not None) == (method == "controlnet")


def test_the_default_model_ships_its_checkpoints_and_picks_them_up(tmp_path, capsys):
    """`--layout` / `--segmap` alone use the default model's own layout_controlnet/ and controlnet/, the
    layout at the checkpoint's own guidance scale; gligen/ ships too, for --layout-model."""
    from latentdiff.checkpoint import DEFAULT_MODEL_DIR
    from latentdiff.cli import main

    assert (DEFAULT_MODEL_DIR / "gligen" / "config.json").is_file()
    marker = json.loads((DEFAULT_MODEL_DIR / "layout_controlnet" / "condition.json").read_text())
    assert marker["condition"] == "layout" and marker["layout_scale"] == 3.0
    assert (DEFAULT_MODEL_DIR / "controlnet" / "config.json").is_file()
    (tmp_path / "layout.json").write_text('[{"phrase": "a red circle", "box": [4, 4, 28, 28]}]')
    seg = np.zeros((64, 64), np.uint8)
    seg[4:28, 4:28] = 1
    Image.fromarray(seg).save(tmp_path / "seg.png")
    assert main(["generate", "a red circle", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "out"),
                 "--layout", str(tmp_path / "layout.json"), "--segmap", str(tmp_path / "seg.png")]) == 0
    png = capsys.readouterr().out.strip().splitlines()[-1]
    with Image.open(png) as im:
        record = json.loads(im.text["latentdiff"])
    assert record["extra"]["layout"]["boxes"][0]["phrase"] == "a red circle"
    assert record["extra"]["segmap"]["classes"] == [0, 1]
    paths = record["extra"]["spatial_checkpoints"]
    assert record["extra"]["layout"]["scale"] == 3.0
    assert paths == {"layout": str((DEFAULT_MODEL_DIR / "layout_controlnet").resolve()),
                     "segmap": str((DEFAULT_MODEL_DIR / "controlnet").resolve())}
    from latentdiff.pipeline import Pipeline

    model_guidance = Pipeline.load(DEFAULT_MODEL_DIR, device="cpu").defaults["guidance"]
    assert marker["region_guidance"] == 2.0 and record["guidance"] == model_guidance  # a layout file: the model's
    assert marker["regional_text"] == 0.5 and record["extra"]["layout"]["regional_text"] == 0.5
    # the map alone: the prompt's circle is bound to the map's circle, at the checkpoint's region guidance
    assert main(["generate", "a red circle", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "out2"),
                 "--segmap", str(tmp_path / "seg.png")]) == 0
    with Image.open(capsys.readouterr().out.strip().splitlines()[-1]) as im:
        record = json.loads(im.text["latentdiff"])
    assert record["extra"]["layout"] == {"boxes": [{"phrase": "a red circle",
                                                    "box": [4 / 64, 4 / 64, 28 / 64, 28 / 64]}],
                                         "scale": 3.0, "region_phrases": True, "regional_text": 0.5}
    assert record["guidance"] == 2.0


def test_gate_init_opens_the_gates_and_the_layout_then_changes_the_output():
    """gate_init sets every gate α of the gated U-Net (0 = GLIGEN's closed start, where the output equals the
    base U-Net's); with open gates the same grounding changes the prediction. Only layout has gates."""
    from latentdiff.errors import ConfigError
    from latentdiff.train.spatial import SpatialTrainConfig, build_model

    pipe = build_tiny_pipeline()
    def alphas(m):
        return {k: v.item() for k, v in m.unet.named_parameters() if k.endswith(("alpha_attn", "alpha_dense"))}

    closed, opened = build_model("layout", pipe), build_model("layout", pipe, gate_init=0.25)
    assert alphas(closed) and set(alphas(closed).values()) == {0.0}
    assert set(alphas(opened).values()) == {0.25}
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    plain = Conditioning(context=torch.randn(2, 77, 32))
    grounded = Conditioning(context=plain.context, grounding=_grounding())
    with torch.no_grad():
        ref = unet_model(pipe.unet, pipe.schedule)(x, t, plain)
        torch.testing.assert_close(unet_model(closed.unet, pipe.schedule)(x, t, grounded), ref)
        assert (unet_model(opened.unet, pipe.schedule)(x, t, grounded) - ref).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="gate_init"):
        SpatialTrainConfig(condition="segmap", gate_init=0.25)
    with pytest.raises(ConfigError, match="gate_init"):
        SpatialTrainConfig(condition="layout", method="controlnet", gate_init=0.25)


def test_layout_method_is_checked():
    from latentdiff.errors import ConfigError
    from latentdiff.train.spatial import SpatialTrainConfig

    with pytest.raises(ConfigError, match="method: expected one of gligen, controlnet, got 'boxes'"):
        SpatialTrainConfig(condition="layout", method="boxes")
    with pytest.raises(ConfigError, match="method: 'controlnet' is a layout method"):
        SpatialTrainConfig(condition="segmap", method="controlnet")
    with pytest.raises(ConfigError, match="layout_scale: only a layout ControlNet"):
        SpatialTrainConfig(condition="layout", layout_scale=3.0)


def test_the_layout_checkpoint_sets_the_default_layout_scale(checkpoints, tmp_path, capsys):
    """A layout ControlNet's condition.json names its guidance scale; generate uses it unless --layout-scale."""
    import shutil

    from latentdiff.cli import main

    model = tmp_path / "model"
    shutil.copytree(checkpoints, model)
    marker = model / "layout_controlnet" / "condition.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "layout_scale": 2.5}))
    (tmp_path / "layout.json").write_text('[{"phrase": "a red circle", "box": [2, 2, 14, 14]}]')
    base = ["generate", "a red circle", "--model", str(model), "--steps", "2", "--device", "cpu",
            "--layout", str(tmp_path / "layout.json")]
    scales = []
    for extra in ([], ["--layout-scale", "1"]):
        capsys.readouterr()
        assert main(base + ["--out", str(tmp_path / f"out{len(extra)}")] + extra) == 0
        with Image.open(capsys.readouterr().out.strip().splitlines()[-1]) as im:
            scales.append(json.loads(im.text["latentdiff"])["extra"]["layout"]["scale"])
    assert scales == [2.5, 1.0]


def test_a_later_phase_starts_from_the_earlier_controlnet(tmp_path):
    """``init`` loads an earlier phase's ControlNet (layout or segmap) instead of copying the U-Net: the
    weights are the saved ones, in fp32, trainable; a folder taking other input channels, a missing folder
    and GLIGEN with init are config errors."""
    from latentdiff.errors import ConfigError
    from latentdiff.models.control import controlnet_from_unet, save_layout_controlnet
    from latentdiff.train.spatial import SpatialTrainConfig, build_model

    pipe = build_tiny_pipeline()
    lay = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor, 33)
    seg = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    with torch.no_grad():
        for net in (lay, seg):
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
    save_layout_controlnet(lay.half(), tmp_path / "layout_controlnet", 4, {})
    seg.save_pretrained(str(tmp_path / "controlnet"), safe_serialization=True)
    for condition, folder, ref in (("layout", "layout_controlnet", lay), ("segmap", "controlnet", seg)):
        model = build_model(condition, pipe, method="controlnet" if condition == "layout" else "gligen",
                            init=str(tmp_path / folder))
        net = model.layout_controlnet if condition == "layout" else model.controlnet
        assert net.dtype == torch.float32 and all(p.requires_grad for p in net.parameters())
        for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b.float(), msg=k)
        assert not any(p.requires_grad for p in model.unet.parameters())
    with pytest.raises(ConfigError, match="init: .*controlnet takes 33 input channels, this condition needs"):
        build_model("segmap", pipe, init=str(tmp_path / "layout_controlnet"))
    with pytest.raises(ConfigError, match="init: .*nowhere is not a folder"):
        build_model("segmap", pipe, init=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="init: only a ControlNet"):
        SpatialTrainConfig(condition="layout", init=str(tmp_path / "layout_controlnet"))


def test_run_cases_reports_each_case_and_agrees_with_its_totals(checkpoints, shapes_records):
    """The per-case lines (bench/spatial_eval.py --cases) hold every box's and every captioned object's
    verdict, and they add up to the run's metrics."""
    from latentdiff.eval.spatial import run_cases
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(checkpoints, device="cpu").attach_layout(checkpoints / "layout_controlnet")
    pipe.attach_segmap(checkpoints / "controlnet")
    records = [r for r in shapes_records if r.boxes][:3]
    cases = []
    metrics, tiles = run_cases(pipe, records, "layout", 32, steps=2, both=True, cases=cases)
    assert [c["caption"] for c in cases] == [r.text for r in records] and len(tiles) == 6
    boxes = [b for c in cases for b in c["boxes"]]
    assert [b["phrase"] for b in boxes] == [b.phrase for r in records for b in r.boxes]
    assert metrics["boxes"] == len(boxes)
    assert metrics["box_accuracy"] == pytest.approx(np.mean([b["ok"] for b in boxes]))
    assert metrics["mean_iou"] == pytest.approx(np.mean([b["iou"] for b in boxes]), abs=1e-3)
    assert metrics["colour_accuracy"] == pytest.approx(np.mean([c["colour"] for c in cases]))
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean([c["pixel_accuracy"] for c in cases]), abs=1e-4)
    for c, r in zip(cases, records):
        assert len(c["objects"]) == len(r.boxes)
        assert c["colour"] == all(o["colour"] for o in c["objects"])
    _, tiles = run_cases(pipe, records[:1], "segmap", 32, steps=2, text_only=True)  # the caption alone
    plain = pipe.generate(records[0].text, seed=0, steps=2, height=32, width=32)[0]
    np.testing.assert_array_equal(tiles[1], np.asarray(plain))


@pytest.mark.parametrize("layout_kind", ["layout_controlnet", "gligen"])
def test_replay_redraws_layout_and_segmap_images(checkpoints, tmp_path, capsys, layout_kind):
    """`latentdiff replay` redraws an image made with --layout and --segmap bit-identically: boxes and
    scales from the record, the map given back with --segmap (checked against the recorded SHA-256), the
    checkpoints from the recorded folders or, when those moved, from the model folder's own."""
    import shutil

    from latentdiff.cli import main

    model = tmp_path / "model"
    shutil.copytree(checkpoints, model)
    (tmp_path / "layout.json").write_text('[{"phrase": "a red circle", "box": [2, 2, 14, 14]}, '
                                          '{"phrase": "a blue square", "box": [16, 18, 30, 30]}]')
    seg = np.zeros((32, 32), np.uint8)
    seg[2:14, 2:14] = 1
    Image.fromarray(seg).save(tmp_path / "seg.png")
    seg[20:28, 20:28] = 2
    Image.fromarray(seg).save(tmp_path / "other.png")
    assert main(["generate", "a red circle and a blue square", "--model", str(model), "--steps", "2",
                 "--device", "cpu", "--out", str(tmp_path / "out"), "--layout", str(tmp_path / "layout.json"),
                 "--layout-model", str(model / layout_kind), "--layout-scale", "2", "--segmap",
                 str(tmp_path / "seg.png"), "--segmap-scale", "1.5", "--num-images", "2"]) == 0
    png = Path(capsys.readouterr().out.split()[1])
    replay = ["replay", str(png), "--out", str(tmp_path / "replay")]
    assert main(replay + ["--segmap", str(tmp_path / "seg.png")]) == 0
    out = capsys.readouterr().out
    assert f"identical to {png}" in out
    with Image.open(out.split()[0]) as again:
        record = json.loads(again.text["latentdiff"])
    assert record["extra"]["layout"]["scale"] == 2.0 and record["extra"]["segmap"]["scale"] == 1.5
    assert record["extra"]["spatial_checkpoints"]["layout"] == str((model / layout_kind).resolve())

    assert main(replay) == 2  # the map is needed
    assert "was made with a segmentation map; pass it with --segmap PNG" in capsys.readouterr().err
    assert main(replay + ["--segmap", str(tmp_path / "other.png")]) == 2
    assert "--segmap: the map has sha256" in capsys.readouterr().err

    moved = tmp_path / "moved"
    model.rename(moved)  # the recorded folders are gone: the model's own same-named folders are used
    assert main(replay + ["--model", str(moved), "--segmap", str(tmp_path / "seg.png")]) == 0
    assert "identical to" in capsys.readouterr().out
    shutil.rmtree(moved / layout_kind)
    assert main(replay + ["--model", str(moved), "--segmap", str(tmp_path / "seg.png")]) == 2
    err = capsys.readouterr().err
    assert f"made with the layout checkpoint {model / layout_kind}" in err and "pass --layout-model DIR" in err


def test_replay_refuses_a_map_for_an_image_made_without_one(checkpoints, tmp_path, capsys):
    from latentdiff.cli import main

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "seg.png")
    assert main(["generate", "a red circle", "--model", str(checkpoints), "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "out")]) == 0
    png = capsys.readouterr().out.split()[0]
    assert main(["replay", png, "--out", str(tmp_path), "--segmap", str(tmp_path / "seg.png")]) == 2
    assert "was made without a segmentation map; leave out --segmap" in capsys.readouterr().err
    assert main(["replay", png, "--out", str(tmp_path), "--layout-model", str(checkpoints / "gligen")]) == 2
    assert "--layout-model: " in capsys.readouterr().err


def _nonzero_controlnet(pipe, channels=5):
    from latentdiff.models.control import controlnet_from_unet

    torch.manual_seed(0)
    net = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor, channels)
    with torch.no_grad():  # non-zero zero-convolutions, so the picture reaches the output
        for p in [*net.controlnet_down_blocks.parameters(), *net.controlnet_mid_block.parameters(),
                  *net.controlnet_cond_embedding.conv_out.parameters()]:
            p.normal_(0, 0.1)
    return net


def test_region_binder_starts_with_no_effect_reads_the_caption_and_round_trips(tmp_path):
    """A ControlNet given a region binder computes the same residuals as before (its new input channels
    have zero weights); once those weights are non-zero the caption reaches the picture, only on object
    pixels; saved and loaded back it gives the same output and still takes the one-hot map (5 channels)."""
    from latentdiff.models.control import (
        RegionBinder,
        control_picture,
        input_channels,
        load_controlnet,
        one_hot,
        save_segmap_controlnet,
        with_binder,
    )

    pipe = build_tiny_pipeline()
    net = _nonzero_controlnet(pipe).eval()
    bound = with_binder(net, 32).eval()
    assert input_channels(bound) == 5 and bound.config.conditioning_channels == 5 + bound.region_binder.out_channels
    seg = torch.zeros(2, 32, 32, dtype=torch.long)
    seg[:, 4:14, 4:14], seg[:, 18:30, 18:30] = 1, 2
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    ctx, other = torch.randn(2, 77, 32), torch.randn(2, 77, 32)
    m = one_hot(seg)

    def run(n, context):
        with torch.no_grad():
            return unet_model(pipe.unet, pipe.schedule, controlnet=n)(x, t, Conditioning(context=context, control=m))
    torch.testing.assert_close(run(bound, ctx), run(net, ctx))
    with torch.no_grad():
        bound.controlnet_cond_embedding.conv_in.weight[:, 5:].normal_(0, 0.1)
    feats = bound.region_binder(m, ctx)  # (B, 128, H, W)
    assert feats[:, :, 0, 0].abs().max() == 0 and feats[:, :, 8, 8].abs().max() > 0  # objects only
    assert (bound.region_binder(torch.zeros_like(m), ctx) == 0).all()  # the null map stays null
    assert control_picture(bound, m, ctx).shape[1] == 5 + 128 and control_picture(net, m, ctx) is m
    assert (run(bound, ctx) - run(bound, other)).abs().max() > 1e-4  # the caption now reaches the picture
    save_segmap_controlnet(bound, tmp_path / "controlnet")
    loaded = load_controlnet(tmp_path / "controlnet")
    assert isinstance(loaded.region_binder, RegionBinder) and input_channels(loaded) == 5
    torch.testing.assert_close(run(loaded, ctx), run(bound, ctx))
    save_segmap_controlnet(loaded, tmp_path / "again")  # a loaded network records its folder: not saved
    assert "_name_or_path" not in json.loads((tmp_path / "again" / "config.json").read_text())
    torch.testing.assert_close(run(load_controlnet(tmp_path / "again"), ctx), run(bound, ctx))


def test_training_a_segmap_controlnet_with_a_region_binder(shapes_records, tmp_path):
    from accelerate import Accelerator

    from latentdiff.errors import ConfigError
    from latentdiff.pipeline import Pipeline
    from latentdiff.train.loop import run_stage
    from latentdiff.train.spatial import SpatialTrainConfig

    base, cfg, stage = _stage("segmap", shapes_records, binder=True)
    assert stage.model.controlnet.region_binder.key.weight.requires_grad
    result = run_stage(stage, cfg.loop, tmp_path / "segmap", 0, Accelerator(cpu=True), False, {})
    assert (result / "binder.json").is_file()
    pipe = Pipeline.from_components(base.unet, base.vae, base.text_encoder, base.tokenizer, base.schedule)
    pipe.attach_segmap(result)
    assert pipe.controlnet.region_binder is not None
    seg = np.zeros((32, 32), np.uint8)
    seg[4:14, 4:14] = 1
    from latentdiff.layout import Spatial

    assert pipe.generate("a red circle", steps=2, spatial=Spatial(segmap=seg))[0].size == (32, 32)
    with pytest.raises(ConfigError, match="binder: only the segmentation map"):
        SpatialTrainConfig(condition="layout", binder=True)


def test_train_spatial_init_flag_is_checked_before_any_work(tmp_path, capsys):
    from latentdiff.cli import build_parser, main

    args = build_parser().parse_args(["train-spatial", "configs/segmap_binder.yaml", "--init", "x/controlnet"])
    assert args.init == "x/controlnet"
    assert main(["train-spatial", "configs/segmap_binder.yaml", "--init", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "run")]) == 2
    assert f"init: {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_validation_figures_are_kept_beside_their_pictures(shapes_records, tmp_path, capsys):
    """Every validation of a run (mid-run and final) writes val/stepNNNNNNN.json with its figures next to
    the grid, and prints them."""
    from accelerate import Accelerator

    from latentdiff.data.latents import load_images
    from latentdiff.train.config import LoopConfig
    from latentdiff.train.finetune import caption_token_ids
    from latentdiff.train.loop import run_stage
    from latentdiff.train.spatial import SpatialStage, SpatialTrainConfig, build_model
    from latentdiff.train.stages import vae_latent_stats

    base = build_tiny_pipeline()
    records = [r for r in shapes_records if r.boxes]
    cfg = SpatialTrainConfig(condition="segmap", validation_cases=2, validation_steps=2,
                             loop=LoopConfig(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=2, log_every=1,
                                             validate_every=1))
    mean, std = vae_latent_stats(base.vae, load_images(records, 32, False), torch.device("cpu"))
    tokens, null = caption_token_ids(base, [r.text for r in records], lambda _: None)
    stage = SpatialStage(cfg, base, build_model("segmap", base), mean, std, tokens, null, records, 32,
                         torch.device("cpu"), records[:2])
    run_stage(stage, cfg.loop, tmp_path / "segmap", 0, Accelerator(cpu=True), False, {})
    for step in (1, 2):
        figures = json.loads((tmp_path / "segmap" / "val" / f"step{step:07d}.json").read_text())
        assert figures["step"] == step and 0 <= figures["pixel_accuracy"] <= 1 and figures["cases"] == 2
        assert (tmp_path / "segmap" / "val" / f"step{step:07d}.png").is_file()
    final = json.loads((tmp_path / "segmap" / "metrics.json").read_text())
    assert final["pixel_accuracy"] == figures["pixel_accuracy"]
    assert "validation at step 1: cases 2, pixel_accuracy" in capsys.readouterr().out


def test_a_kept_checkpoints_ema_weights_make_a_condition_folder(checkpoints, tmp_path, capsys):
    """scripts/condition_from_checkpoint.py: the final folder's files with the checkpoint's EMA weights, every
    other file as it was; a missing step, an unfinished run or a foreign checkpoint is a one-line error."""
    import shutil

    from conftest import load_script
    from safetensors.torch import load_file, save_file

    script = load_script("scripts/condition_from_checkpoint.py")
    stage = tmp_path / "run" / "layout"
    shutil.copytree(checkpoints / "layout_controlnet", stage / "final" / "layout_controlnet")
    weights = load_file(str(stage / "final" / "layout_controlnet" / script.WEIGHTS))
    ema = {f"layout_controlnet.{k}": v.float() + 1 for k, v in weights.items()}
    (stage / "checkpoints" / "ckpt-0001000").mkdir(parents=True)
    save_file(ema, str(stage / "checkpoints" / "ckpt-0001000" / "ema.safetensors"))
    assert script.main([str(stage), "--step", "1000", "--out", str(tmp_path / "s1000")]) == 0
    got = load_file(str(tmp_path / "s1000" / script.WEIGHTS))
    assert set(got) == set(weights) and all(torch.equal(got[k], (weights[k].float() + 1).to(weights[k].dtype))
                                            for k in weights)
    assert (tmp_path / "s1000" / "condition.json").read_text() == \
        (stage / "final" / "layout_controlnet" / "condition.json").read_text()
    capsys.readouterr()
    assert script.main([str(stage), "--step", "2000", "--out", str(tmp_path / "s2000")]) == 2
    assert "kept: ckpt-0001000" in capsys.readouterr().err
    save_file({**ema, "controlnet.region_binder.w": torch.zeros(1)},
              str(stage / "checkpoints" / "ckpt-0001000" / "ema.safetensors"))
    assert script.main([str(stage), "--step", "1000", "--out", str(tmp_path / "other")]) == 2
    assert "are not layout_controlnet's" in capsys.readouterr().err
    assert script.main([str(tmp_path / "nothing"), "--step", "1000", "--out", str(tmp_path / "x")]) == 2
    assert "run the training to its end first" in capsys.readouterr().err
