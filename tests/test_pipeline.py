"""The generation pipeline on a tiny random model: determinism, seeds, conditions, and equality with
diffusers' own StableDiffusionPipeline on the same weights, scheduler, latents and guidance."""
import json
import warnings

import numpy as np
import pytest
import torch

from latentdiff.checkpoint import schedule_from_scheduler_config
from latentdiff.conditioning import Conditioning, unet_model
from latentdiff.errors import UserError
from latentdiff.models.text import PromptTruncatedWarning
from latentdiff.pipeline import Pipeline

STEPS = 4


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir, device="cpu")


def pixels(images):
    return np.stack([np.asarray(im) for im in images])


def test_load_exposes_the_documented_attributes(pipe, tiny_model_dir):
    assert pipe.vae_scale_factor == 4 and pipe.scaling_factor == 0.5
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    assert pipe.schedule.num_timesteps == 1000 and pipe.scheduler_config["_class_name"] == "DDIMScheduler"
    assert pipe.name == "tiny_model" and pipe.path == tiny_model_dir.resolve()
    ctx = pipe.encode_prompt(["a red circle", ""])
    assert ctx.shape == (2, 77, 32)


def test_generate_is_deterministic_and_records_provenance(pipe):
    a = pipe.generate("a red circle", num_images=2, steps=STEPS, seed=7)
    b = pipe.generate("a red circle", num_images=2, steps=STEPS, seed=7)
    assert [im.size for im in a] == [(32, 32)] * 2
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a)[0], pixels(a)[1])  # different seeds, different images
    rec = json.loads(a[1].info["latentdiff"])
    assert rec["seed"] == 8 and rec["prompt"] == "a red circle" and rec["sampler"] == "dpm++"
    assert rec["steps"] == STEPS and rec["guidance"] == 4.0 and (rec["height"], rec["width"]) == (32, 32)
    assert rec["model_name"] == "tiny_model" and len(rec["model_sha256"]) == 64 and rec["latentdiff_version"]


def test_an_image_does_not_depend_on_its_batch(pipe):
    batch = pipe.initial_latents([5, 6, 7], 32, 32)
    alone = pipe.initial_latents([6], 32, 32)
    assert torch.equal(batch[1:2], alone)  # the same start, exactly
    many = pixels(pipe.generate("a blue square", num_images=3, steps=STEPS, seed=5))
    one = pixels(pipe.generate("a blue square", num_images=1, steps=STEPS, seed=6))
    assert np.abs(many[1].astype(int) - one[0].astype(int)).max() <= 2


def test_ddpm_sampler_draws_per_image_noise(pipe):
    many = pixels(pipe.generate("a circle", num_images=2, steps=3, sampler="ddpm", guidance=1.0, seed=0))
    one = pixels(pipe.generate("a circle", num_images=1, steps=3, sampler="ddpm", guidance=1.0, seed=1))
    assert np.abs(many[1].astype(int) - one[0].astype(int)).max() <= 2


def test_empty_prompt_is_unconditional_and_guidance_has_no_effect(pipe):
    a = pixels(pipe.generate("", steps=STEPS, guidance=1.0, seed=3))
    b = pixels(pipe.generate("", steps=STEPS, guidance=7.0, seed=3))  # cond == uncond: guidance is a no-op
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_long_prompt_is_truncated_with_a_warning_naming_the_dropped_words(pipe):
    prompt = " ".join(["circle"] * 75) + " zebra giraffe"
    with pytest.warns(PromptTruncatedWarning, match="zebra giraffe"):
        ctx = pipe.encode_prompt([prompt])
    assert ctx.shape == (1, 77, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        pipe.encode_prompt(["a short prompt"])


@pytest.mark.parametrize("kwargs, words", [
    (dict(sampler="heun"), "unknown sampler 'heun'"),
    (dict(steps=0), "steps 0"),
    (dict(guidance="x"), "guidance 'x'"),
    (dict(height=30), "height 30"),
    (dict(num_images=0), "num_images 0"),
])
def test_bad_options_are_user_errors(pipe, kwargs, words):
    with pytest.raises(UserError, match=words):
        pipe.generate("a", **kwargs)


def test_default_model_missing_is_a_user_error(monkeypatch, tmp_path):
    import latentdiff.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(UserError, match="no default model is installed.*--model"):
        Pipeline.load(None)
    with pytest.raises(UserError, match="model not found"):
        Pipeline.load(tmp_path / "missing")


def test_save_and_load_round_trip_is_bit_identical(pipe, tmp_path):
    pipe.save(tmp_path / "copy")
    again = Pipeline.load(tmp_path / "copy", device="cpu")
    a = pixels(pipe.generate("a green star", steps=STEPS, seed=1, sampler="euler"))
    b = pixels(again.generate("a green star", steps=STEPS, seed=1, sampler="euler"))
    assert np.array_equal(a, b)
    assert again.weights_sha256 == pipe.weights_sha256  # the hash covers only the weights, not the path


def test_from_components_pipeline_defaults_to_a_matching_ddim_config():
    from conftest import build_tiny_pipeline

    p = build_tiny_pipeline()
    sched = schedule_from_scheduler_config(p.scheduler_config)
    assert torch.equal(sched.betas, p.schedule.betas) and sched.prediction == p.schedule.prediction
    assert p.sampler_overrides("ddim") == {"timestep_spacing": "trailing", "steps_offset": 1, "set_alpha_to_one": True}
    assert p.weights_sha256 == "unsaved"


def test_conditioning_batches_every_route():
    a = Conditioning(torch.zeros(2, 77, 8), torch.zeros(2, 3, 4, 4))
    b = Conditioning(torch.ones(1, 77, 8), torch.ones(1, 3, 4, 4))
    c = Conditioning.cat([a, b])
    assert c.batch_size == 3 and c.concat.shape == (3, 3, 4, 4) and c.concat[2].eq(1).all()
    assert Conditioning.cat([Conditioning(torch.zeros(1, 2, 3))] * 2).concat is None
    with pytest.raises(ValueError, match="concat"):
        Conditioning.cat([a, Conditioning(torch.zeros(1, 77, 8))])
    assert c.index([2, 2, 0]).context[:2].eq(1).all()


def test_unet_model_routes_concat_channels_and_converts_v_prediction(pipe):
    seen = {}

    class FakeUNet(torch.nn.Module):
        dtype = torch.float32

        def forward(self, x, t, encoder_hidden_states, return_dict=False):
            seen["channels"], seen["ctx"] = x.shape[1], encoder_hidden_states.shape
            return (torch.zeros(x.shape[0], 4, *x.shape[2:]),)

    cond = Conditioning(torch.zeros(2, 77, 8), concat=torch.zeros(2, 5, 4, 4))
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 500])
    eps = unet_model(FakeUNet(), pipe.schedule, prediction="v_prediction")(x, t, cond)
    assert seen == {"channels": 9, "ctx": (2, 77, 8)}
    ab = pipe.schedule.alphas_bar[t].view(-1, 1, 1, 1)
    assert torch.allclose(eps, (1 - ab).sqrt() * x)  # v = 0  =>  ε = √(1−ᾱ) x_t


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "euler"])
def test_same_images_as_diffusers_stable_diffusion_pipeline(pipe, tiny_model_dir, sd_pipe, sampler):
    """diffusers loads our folder; with its own scheduler (from our saved config), the same seed's latents,
    steps and guidance, its images equal ours within 2/255."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    base = sd_pipe.scheduler.config
    assert isinstance(sd_pipe.scheduler, DDIMScheduler)
    sd_pipe.scheduler = {
        "ddim": DDIMScheduler.from_config(base),
        "dpm++": DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2),
        "euler": EulerDiscreteScheduler.from_config(base),
    }[sampler]
    prompt, seeds = "a red circle above a blue square", [11, 12]
    ours = pixels(pipe.generate(prompt, num_images=2, steps=6, guidance=5.0, sampler=sampler, seed=11))
    out = sd_pipe([prompt] * 2, negative_prompt=["", ""], num_inference_steps=6, guidance_scale=5.0,
                  latents=pipe.initial_latents(seeds, 32, 32), output_type="np").images
    theirs = (out * 255).round().astype(np.uint8)
    assert ours.shape == theirs.shape and ours.std() > 5
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2
    sd_pipe.scheduler = DDIMScheduler.from_config(base)


@pytest.fixture(scope="module")
def sd_pipe(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None, local_files_only=True)
    sd.set_progress_bar_config(disable=True)
    return sd


def test_cpu_benchmark_script_runs_on_a_tiny_model(tiny_model_dir):
    """bench/cpu_generate.py times latentdiff (plain and fast path) and diffusers on the same work (here: 1 step,
    1 repeat)."""
    import argparse

    from conftest import load_script

    bench = load_script("bench/cpu_generate.py")
    args = argparse.Namespace(model=str(tiny_model_dir), prompt="a red circle", num_images=2, sampler="dpm++",
                              steps=1, guidance=4.0, seed=0, repeats=1, speed="bf16,eager")
    result = bench.bench(args)
    assert result["max_pixel_diff"] == 0 and result["images"] == 2
    assert result["latentdiff_s"] > 0 and result["diffusers_s"] > 0 and result["fast_s"] > 0
    assert result["fast_speed"] == {"dtype": "bf16", "attention": "eager"} and result["fast_max_pixel_diff"] > 0
    from latentdiff.speed import cpu_model_name

    assert cpu_model_name()
