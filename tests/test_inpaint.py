"""Inpainting on tiny random models: the 9-channel U-Net, both modes, exact pixels outside the feather,
mask formats and checks, padding, and equality with diffusers' StableDiffusionInpaintPipeline."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.errors import UserError
from latentdiff.inpaint import (
    DEFAULT_MASK_BLUR,
    InpaintBatch,
    binarize,
    feather,
    latent_mask,
    load_inputs,
    prepare_batch,
)
from latentdiff.models.inpaint import inpainting_unet
from latentdiff.pipeline import Pipeline
from latentdiff.request import Row

STEPS = 3


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def inpaint_dir(tiny_inpaint_dir):
    return tiny_inpaint_dir


@pytest.fixture(scope="module")
def ipipe(inpaint_dir):
    return Pipeline.load(inpaint_dir, device="cpu")


def scene(h=32, w=32, seed=0):
    """A random image and a rectangular mask (255 = repaint) of h × w."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:h // 2 + 2, w // 4:w // 2 + 3] = 255
    return image, mask


def far_from(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels further than ``width`` px (Euclidean) from every masked pixel."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    d2 = ((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2).min(-1)
    return d2 > width * width


# --- the inpainting U-Net -------------------------------------------------------------------------

def test_inpainting_unet_starts_as_the_text_to_image_unet(pipe):
    unet9 = inpainting_unet(pipe.unet).eval()
    assert unet9.config.in_channels == 9 and pipe.unet.config.in_channels == 4
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    extra = torch.randn(2, 5, 8, 8, generator=g)  # any mask and masked latents
    t = torch.tensor([10, 700])
    with torch.no_grad():
        a = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        b = unet9(torch.cat([x, extra], 1), t, encoder_hidden_states=ctx).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_diffusers_inpaint_pipeline_loads_the_model_and_draws_what_we_draw(ipipe, inpaint_dir):
    """Done-when 4: StableDiffusionInpaintPipeline loads the saved folder; on the same latents, scheduler,
    guidance and masked-image latents its result is ours (mask on the 4-px grid, where diffusers'
    nearest-neighbour resize and our max-pool agree)."""
    from diffusers import StableDiffusionInpaintPipeline

    assert json.loads((inpaint_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    sd = StableDiffusionInpaintPipeline.from_pretrained(str(inpaint_dir), safety_checker=None, local_files_only=True)
    sd.set_progress_bar_config(disable=True)
    assert sd.unet.config.in_channels == 9
    image, mask = scene()
    mask[:] = 0
    mask[8:20, 4:16] = 255
    inputs = load_inputs(image, mask, 4)
    one = prepare_batch(ipipe, inputs, "model")
    rows = [Row("a red circle", "", 3), Row("a red circle", "", 4)]
    ours = ipipe.sample_rows(rows, steps=5, guidance=4.0, sampler="ddim", height=32, width=32,
                             inpaint=one.repeat(2))
    theirs = sd(["a red circle"] * 2, image=Image.fromarray(image), mask_image=Image.fromarray(mask),
                masked_image_latents=one.concat[:, 1:].expand(2, -1, -1, -1), height=32, width=32,
                num_inference_steps=5, guidance_scale=4.0, latents=ipipe.initial_latents([3, 4], 32, 32),
                output_type="latent").images
    assert ours.std() > 0.1
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)


def test_generate_with_an_inpainting_model_repaints_the_whole_image(ipipe):
    image, _ = scene()
    full = np.full(image.shape[:2], 255, np.uint8)
    a = np.asarray(ipipe.generate("a blue square", steps=STEPS, seed=2)[0])
    b = np.asarray(ipipe.inpaint("a blue square", image, full, steps=STEPS, seed=2)[0])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


# --- exactness outside the mask -------------------------------------------------------------------

@pytest.mark.parametrize("which,mode,sampler", [("t2i", "blend", "dpm++"), ("t2i", "blend", "ddpm"),
                                                ("inpaint", "model", "euler"), ("inpaint", "blend", "ddim")])
def test_outside_the_feather_the_output_is_the_input(pipe, ipipe, which, mode, sampler):
    """Done-when 2: beyond the feather width the output equals the input within 2/255 (here: exactly),
    while inside the mask the model really drew something else."""
    model = pipe if which == "t2i" else ipipe
    image, mask = scene(seed=1)
    out = np.asarray(model.inpaint("a red circle", image, mask, mode=mode, sampler=sampler, steps=STEPS,
                                   seed=1, mask_blur=DEFAULT_MASK_BLUR)[0]).astype(int)
    far = far_from(mask, DEFAULT_MASK_BLUR)
    assert np.abs(out[far] - image[far]).max() <= 2
    inside = mask > 0
    assert np.abs(out[inside] - image[inside]).mean() > 20


def test_blend_mode_ends_on_the_known_latents(pipe):
    image, mask = scene(seed=2)
    one = prepare_batch(pipe, load_inputs(image, mask, 4), "blend")
    z = pipe.sample_rows([Row("a circle", "", 0)], steps=STEPS, guidance=3.0, sampler="dpm++", height=32,
                         width=32, inpaint=one)
    keep = one.mask.expand_as(z) == 0
    assert keep.any() and torch.equal(z[keep], one.known[keep])
    assert not torch.allclose(z[~keep], one.known[~keep], atol=0.1)


# --- masks ---------------------------------------------------------------------------------------

def test_feather_is_the_mask_inside_and_zero_beyond_its_width():
    m = np.zeros((24, 24), np.float32)
    m[8:14, 6:12] = 1.0
    m[16, 16] = 0.4  # a soft pixel
    for width in (0, 1, 3, 6):
        a = feather(m, width)
        assert (a >= m - 1e-6).all() and a.max() <= 1.0
        assert (a[m == 1.0] == 1.0).all()
        assert (a[far_from(m > 0, width)] == 0).all()
        if width:  # a soft fall-off: every pixel at distance 1 from the hard mask is strictly between 0 and 1
            ring = (~far_from(m[:15] == 1, 1)) & (m[:15] == 0)
            assert ((a[:15][ring] > 0) & (a[:15][ring] < 1)).all()
    assert np.array_equal(feather(m, 0), m)


def test_l_rgb_and_rgba_masks_and_the_alpha_option_agree(tmp_path):
    image, mask = scene()
    soft = mask.copy()
    soft[0, :4] = 100  # soft values survive as they are
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(soft, "L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([soft] * 3, -1), "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([np.stack([soft] * 3, -1), np.full_like(soft, 255)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([image, 255 - soft]), "RGBA").save(tmp_path / "cut.png")  # transparent = repaint
    masks = [load_inputs(tmp_path / "img.png", tmp_path / n, 4).mask for n in ("l.png", "rgb.png", "rgba.png")]
    alpha = load_inputs(tmp_path / "cut.png", None, 4, mask_from_alpha=True)
    assert np.allclose(masks[0], soft / 255.0)
    for m in masks[1:] + [alpha.mask]:
        assert np.allclose(m, masks[0], atol=1 / 255)
    assert np.array_equal(alpha.image, image)
    # a transparent pixel of an RGBA mask counts as keep
    Image.fromarray(np.dstack([np.full((32, 32, 3), 255, np.uint8), 255 - mask]), "RGBA").save(tmp_path / "t.png")
    assert np.allclose(load_inputs(tmp_path / "img.png", tmp_path / "t.png", 4).mask, 1 - mask / 255.0)


@pytest.mark.parametrize("make, words", [
    (lambda p: (p / "img.png", p / "small.png"), "size 16x32 differs from --image"),
    (lambda p: (p / "img.png", None), "no mask"),
    (lambda p: (p / "img.png", p / "missing.png"), "missing.png: file not found"),
    (lambda p: (p / "img.png", p / "img.png", True), "not both"),
    (lambda p: (p / "img.png", None, True), "has no alpha channel"),
    (lambda p: (p / "img.png", p / "cmyk.jpg"), "image mode 'CMYK'"),
])
def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, make, words):
    image, _ = scene()
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((32, 16), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(image).convert("CMYK").save(tmp_path / "cmyk.jpg")
    args = make(tmp_path)
    with pytest.raises(UserError, match=words) as err:
        load_inputs(args[0], args[1], 4, mask_from_alpha=len(args) > 2)
    assert "\n" not in str(err.value)


def test_odd_sizes_are_padded_and_cropped_back(pipe):
    image, mask = scene(30, 27, seed=4)
    inputs = load_inputs(image, mask, 4)
    assert inputs.image.shape == (32, 28, 3) and inputs.mask.shape == (32, 28)
    assert (inputs.mask[30:] == 0).all() and (inputs.mask[:, 27:] == 0).all()  # padding is known
    assert np.array_equal(inputs.image[:30, :27], image)
    out = pipe.inpaint("a square", image, mask, steps=STEPS, seed=0, mode="blend")[0]
    assert out.size == (27, 30)
    far = far_from(mask, DEFAULT_MASK_BLUR)
    assert np.abs(np.asarray(out).astype(int)[far] - image[far]).max() <= 2


def test_a_soft_mask_is_thresholded_for_the_unet_and_kept_soft_for_the_composite(ipipe):
    image, _ = scene()

    def soft_mask(value):
        m = np.zeros((32, 32), np.uint8)
        m[8:16, 8:16] = 255
        m[16:24, 8:16] = 140  # ≥ 0.5: repainted
        m[8:16, 16:24] = value  # < 0.5: kept by the U-Net, blended by value/255 in the composite
        return m

    one = prepare_batch(ipipe, load_inputs(image, soft_mask(120), 4), "model")
    lat = one.concat[0, 0]  # (8, 8) latent mask
    assert set(lat.unique().tolist()) == {0.0, 1.0}
    assert lat[2:4, 2:4].eq(1).all() and lat[4:6, 2:4].eq(1).all() and lat[2:4, 4:6].eq(0).all()
    # 120 and 60 give the U-Net the same binary mask, hence the same drawing; the composite then moves the
    # input towards it by 120/255 and 60/255: twice as far with 120 (up to rounding).
    a, b = (np.asarray(ipipe.inpaint("a circle", image, soft_mask(v), steps=STEPS, mask_blur=0)[0]).astype(float)
            for v in (120, 60))
    da, db = a[8:16, 16:24] - image[8:16, 16:24], b[8:16, 16:24] - image[8:16, 16:24]
    assert np.abs(da).mean() > 5
    assert np.abs(da - 2 * db).max() <= 2.5


def test_latent_mask_covers_every_masked_pixel():
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 5, 9] = 1  # one pixel
    lat = latent_mask(binarize(m), 4)
    assert lat.shape == (1, 1, 4, 4) and lat[0, 0, 1, 2] == 1 and lat.sum() == 1


# --- choices and errors ---------------------------------------------------------------------------

def test_modes_and_option_checks(pipe, ipipe):
    image, mask = scene()
    with pytest.raises(UserError, match="--mode model needs an inpainting model"):
        pipe.inpaint("x", image, mask, mode="model", steps=STEPS)
    with pytest.raises(UserError, match="--mode 'paint'"):
        pipe.inpaint("x", image, mask, mode="paint", steps=STEPS)
    with pytest.raises(UserError, match="RePaint resampling is for --mode blend with --sampler ddpm"):
        pipe.inpaint("x", image, mask, mode="blend", sampler="ddim", resample=3, steps=STEPS)
    with pytest.raises(UserError, match="--strength 1.5"):
        pipe.inpaint("x", image, mask, strength=1.5, steps=STEPS)
    with pytest.raises(UserError, match="runs no step"):
        pipe.inpaint("x", image, mask, strength=0.1, steps=5)
    rec = json.loads(ipipe.inpaint("x", image, mask, steps=STEPS)[0].info["latentdiff"])
    assert rec["extra"]["inpaint"]["mode"] == "model"
    rec = json.loads(pipe.inpaint("x", image, mask, steps=4, sampler="ddpm", resample=2, strength=0.5)[0]
                     .info["latentdiff"])
    assert rec["extra"]["inpaint"]["mode"] == "blend" and rec["extra"]["inpaint"]["resample"] == 2


@pytest.mark.parametrize("mode, layout_kind", [("blend", "gligen"), ("blend", "layout_controlnet"),
                                              ("model", "layout_controlnet")])
def test_inpainting_takes_a_layout_and_a_map_in_the_same_call(spatial_model_dir, inpaint_dir, mode, layout_kind):
    """Inpainting is a conditioner like the others: with a layout (and a map) in the same call the known pixels
    are kept, the layout reaches the network (the result differs from inpainting without it, and moving the
    box changes it) and the record names both."""
    from latentdiff.layout import LayoutEntry, Spatial

    pipe = Pipeline.load(spatial_model_dir if mode == "blend" else inpaint_dir, device="cpu")
    pipe.attach_layout(spatial_model_dir / layout_kind)
    image, mask = scene()
    kw = dict(mode=mode, steps=STEPS, seed=2, mask_blur=1, guidance=2.0)
    plain = np.asarray(pipe.inpaint("a red circle", image, mask, **kw)[0]).astype(int)
    spatial = Spatial([LayoutEntry("a red circle", (0.2, 0.2, 0.6, 0.6))], layout_scale=2.0)
    out = pipe.inpaint("a red circle", image, mask, spatial=spatial, **kw)[0]
    got = np.asarray(out).astype(int)
    keep = far_from(mask, 1)
    np.testing.assert_array_equal(got[keep], image[keep])
    assert np.abs(got - plain)[~keep].max() > 0  # the layout was used
    rec = json.loads(out.info["latentdiff"])["extra"]
    assert rec["layout"]["boxes"][0]["phrase"] == "a red circle" and rec["inpaint"]["mode"] == mode
    moved = Spatial([LayoutEntry("a red circle", (0.5, 0.5, 0.9, 0.9))], layout_scale=2.0)
    assert np.abs(np.asarray(pipe.inpaint("a red circle", image, mask, spatial=moved, **kw)[0]).astype(int)
                  - got).max() > 0
    if mode == "model":  # and a segmentation map on top
        pipe.attach_segmap(spatial_model_dir / "controlnet")
        seg = np.zeros((32, 32), np.uint8)
        seg[6:20, 6:20] = 1
        both = pipe.inpaint("a red circle", image, mask, spatial=Spatial(spatial.layout, seg, 2.0, 2.0), **kw)[0]
        np.testing.assert_array_equal(np.asarray(both).astype(int)[keep], image[keep])
        assert json.loads(both.info["latentdiff"])["extra"]["segmap"]["classes"] == [0, 1]
        assert np.abs(np.asarray(both).astype(int) - got).max() > 0


def test_replay_refuses_an_inpainted_image(pipe):
    from latentdiff.provenance import Record

    image, mask = scene()
    rec = Record.from_json(pipe.inpaint("x", image, mask, steps=STEPS)[0].info["latentdiff"])
    with pytest.raises(UserError, match="inpainted image"):
        pipe.replay(rec)


def test_batches_of_different_images_equal_one_at_a_time(pipe):
    (a, ma), (b, mb) = scene(seed=5), scene(seed=6)
    ones = [prepare_batch(pipe, load_inputs(x, m, 4), "blend") for x, m in ((a, ma), (b, mb))]
    rows = [Row("a circle", "", 0), Row("a square", "", 1)]
    kw = dict(steps=STEPS, guidance=3.0, sampler="ddim", height=32, width=32)
    both = pipe.sample_rows(rows, inpaint=InpaintBatch.cat(ones), **kw)
    single = torch.cat([pipe.sample_rows([r], inpaint=o, **kw) for r, o in zip(rows, ones)])
    assert torch.allclose(both, single, atol=1e-4)


def test_exports_of_an_inpainting_model_load_back(ipipe, inpaint_dir, tmp_path, capsys):
    """`make inpaint-model` ships the model as an fp16 diffusers export; single-file exports load too."""
    from diffusers import StableDiffusionInpaintPipeline

    from latentdiff.cli import main

    assert main(["export", "--model", str(inpaint_dir), "--format", "diffusers", "--dtype", "fp16",
                 "--out", str(tmp_path / "fp16")]) == 0
    assert main(["export", "--model", str(inpaint_dir), "--format", "single-file",
                 "--out", str(tmp_path / "one.safetensors")]) == 0
    assert capsys.readouterr().out.count("StableDiffusionInpaintPipeline.from_") == 2
    sd = StableDiffusionInpaintPipeline.from_pretrained(str(tmp_path / "fp16"), safety_checker=None,
                                                        local_files_only=True)
    assert sd.unet.config.in_channels == 9
    image, mask = scene()
    want = np.asarray(ipipe.inpaint("a circle", image, mask, steps=STEPS)[0]).astype(int)
    for path in (tmp_path / "fp16", tmp_path / "one.safetensors"):
        pipe = Pipeline.load(path, device="cpu")
        assert pipe.is_inpainting
        got = np.asarray(pipe.inpaint("a circle", image, mask, steps=STEPS)[0]).astype(int)
        assert np.abs(got - want).max() <= (2 if path.name == "fp16" else 0)  # fp16 weights round (measured 1)


def test_the_shipped_inpainting_model_loads_in_diffusers_and_is_the_default(tmp_path, capsys):
    """Done-when 4 on the shipped model: diffusers' StableDiffusionInpaintPipeline loads it (9-channel
    U-Net), and `latentdiff inpaint` without --model uses it in mode auto."""
    from diffusers import StableDiffusionInpaintPipeline

    from latentdiff.cli import main
    from latentdiff.inpaint import INPAINT_MODEL_DIR

    sd = StableDiffusionInpaintPipeline.from_pretrained(str(INPAINT_MODEL_DIR), safety_checker=None,
                                                        local_files_only=True)
    assert sd.unet.config.in_channels == 9
    scene = np.zeros((64, 64, 3), np.uint8)
    scene[8:24, 8:24] = (220, 40, 40)
    mask = np.zeros((64, 64), np.uint8)
    mask[6:26, 6:26] = 255
    Image.fromarray(scene).save(tmp_path / "scene.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["inpaint", "a small blue square in the top left", "--image", str(tmp_path / "scene.png"),
                 "--mask", str(tmp_path / "mask.png"), "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "out")]) == 0
    png = capsys.readouterr().out.strip().splitlines()[-1]
    with Image.open(png) as im:
        record = json.loads(im.text["latentdiff"])
        out = np.asarray(im.convert("RGB"))
    assert record["extra"]["inpaint"]["mode"] == "model"
    assert np.array_equal(out[40:, 40:], scene[40:, 40:])  # far from the mask: the input, exactly
