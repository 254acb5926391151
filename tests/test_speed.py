"""Inference speed options (latentdiff.speed, Pipeline.optimize) on tiny random models: every option draws
the images of the plain path within its precision's tolerance, bad values are one-line errors, and the
options that need a GPU (CUDA graphs) are tested where one is present."""
import json

import numpy as np
import pytest
import torch

from latentdiff.errors import UserError
from latentdiff.speed import GraphedUNet, Speed

GEN = dict(num_images=2, steps=4, seed=3, guidance=4.0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny(**kwargs):
    from conftest import build_tiny_pipeline

    return build_tiny_pipeline(**kwargs)


@pytest.fixture(scope="module")
def plain():
    """Latents and images of the plain path (float32, no options) for the prompt and seeds of GEN."""
    pipe = tiny()
    return pipe.generate_latents("a red circle", **GEN), pixels(pipe.generate("a red circle", **GEN))


def pixels(images):
    return np.stack([np.asarray(im) for im in images]).astype(int)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("options", [
    dict(channels_last=True),
    dict(attention="sdpa"),
    dict(attention="eager"),
    dict(fuse_qkv=True),
    dict(channels_last=True, attention="sdpa", fuse_qkv=True),
])
def test_float32_options_draw_the_plain_images(plain, options):
    """Layout and kernel choices change only rounding: latents within 1e-5 relative, pixels within 1/255."""
    latents, images = plain
    pipe = tiny().optimize(**options)
    assert rel(pipe.generate_latents("a red circle", **GEN), latents) < 1e-5
    assert np.abs(pixels(pipe.generate("a red circle", **GEN)) - images).max() <= 1


def test_options_really_change_the_modules():
    pipe = tiny().optimize(channels_last=True, fuse_qkv=True)
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    eager = tiny().optimize(attention="eager")
    assert {type(p).__name__ for p in eager.unet.attn_processors.values()} == {"AttnProcessor"}


@pytest.mark.parametrize("dtype, torch_dtype, tol", [("fp16", torch.float16, 4e-3), ("bf16", torch.bfloat16, 2e-2)])
def test_half_precision_stays_close_to_float32(plain, dtype, torch_dtype, tol):
    """Half precision: unit roundoff 4.9e-4 (fp16) / 3.9e-3 (bf16) per operation, compounded over the
    network and 4 steps; the sampler's state stays float32, so the error stays a few roundoffs."""
    latents, _ = plain
    pipe = tiny().optimize(dtype=dtype)
    assert pipe.dtype == torch_dtype and pipe.vae.dtype == torch_dtype and pipe.text_encoder.dtype == torch_dtype
    out = pipe.generate_latents("a red circle", **GEN)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 < rel(out, latents) < tol  # 0 < : the network really ran in half precision
    record = json.loads(pipe.generate("a red circle", num_images=1, steps=2)[0].info["latentdiff"])
    assert record["dtype"] == str(torch_dtype).removeprefix("torch.") and record["extra"]["speed"] == {"dtype": dtype}


def test_optimize_adds_options_and_is_idempotent(plain):
    latents, _ = plain
    pipe = tiny().optimize(channels_last=True, attention="sdpa")
    pipe.optimize(Speed(fuse_qkv=True)).optimize(fuse_qkv=True, channels_last=True).optimize(dtype="fp32")
    assert pipe.speed == Speed(dtype="fp32", channels_last=True, attention="sdpa", fuse_qkv=True)
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert rel(pipe.generate_latents("a red circle", **GEN), latents) < 1e-5
    processors = dict(pipe.unet.attn_processors)
    pipe.optimize(attention="sdpa")  # already in place: the modules are left as they are
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    assert Speed.fast().describe() == dict(dtype="fp16", channels_last=True, attention="sdpa", fuse_qkv=True,
                                           compile="default", cuda_graph=True)


@pytest.mark.parametrize("options, words", [
    (dict(dtype="fp8"), "speed dtype 'fp8'"),
    (dict(attention="flash3"), "speed attention 'flash3'"),
    (dict(compile="fastest"), "speed compile 'fastest'"),
    (dict(channels_last="yes"), "speed channels_last 'yes'"),
    (dict(colour=True), "unknown speed option 'colour'"),
    (dict(fuse_qkv=True, attention="eager"), "fuse_qkv needs SDPA"),
    (dict(compile_vae=True), "compile_vae needs a compile mode"),
    (dict(cuda_graph=True, compile="reduce-overhead"), "use one or the other"),
])
def test_bad_options_are_one_line_user_errors(options, words):
    pipe = tiny()
    with pytest.raises(UserError, match=words) as err:
        pipe.optimize(**options)
    assert "\n" not in str(err.value)
    assert pipe.speed is None  # nothing was applied


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cuda_graph_on_the_cpu_is_refused():
    with pytest.raises(UserError, match="cuda_graph needs a CUDA device; the pipeline is on cpu"):
        tiny().optimize(cuda_graph=True)


def test_weights_cannot_change_under_an_optimized_pipeline(tmp_path):
    pipe = tiny().optimize(channels_last=True)
    with pytest.raises(UserError, match="LoRA files after Pipeline.optimize"):
        pipe.load_loras([(tmp_path / "x.safetensors", 1.0)])
    with pytest.raises(UserError, match="layout checkpoint after Pipeline.optimize"):
        pipe.attach_layout(tmp_path)
    with pytest.raises(UserError, match="segmentation checkpoint after Pipeline.optimize"):
        pipe.attach_segmap(tmp_path)


def test_guidance_runs_one_batched_forward_per_step():
    """CFG batched: each step is one U-Net call of 2B rows (uncond + cond), whatever the options."""
    pipe = tiny().optimize(channels_last=True, fuse_qkv=True)
    batches = []
    pipe.unet.register_forward_hook(lambda mod, args, out: batches.append(args[0].shape[0]))
    pipe.generate_latents("a red circle", num_images=3, steps=5, guidance=4.0, sampler="dpm++")
    assert batches == [6] * 5


def test_graphed_unet_passes_calls_it_cannot_capture_to_the_unet():
    """Calls with extra routes (ControlNet, GLIGEN), return_dict or autograd on run the U-Net as it is
    (on any device: nothing is captured)."""
    pipe = tiny()
    graphed = GraphedUNet(pipe.unet)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, 32)
    with torch.no_grad():
        ref = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        assert torch.equal(graphed(x, t, ctx, return_dict=True).sample, ref)
        assert torch.equal(graphed(x, t, ctx, cross_attention_kwargs={"scale": 1.0})[0], ref)
    with torch.enable_grad():
        assert torch.allclose(graphed(x, t, ctx)[0], ref)
    assert graphed.graphs == {} and graphed.dtype == torch.float32


@pytest.mark.slow
def test_compiled_unet_and_vae_draw_the_plain_images(plain, tmp_path):
    """torch.compile (inductor, CPU here: ~10 s with a warm cache, ~100 s cold) compiles in place: the same
    images within float32 rounding, and the model still saves with its usual keys."""
    latents, images = plain
    pipe = tiny().optimize(compile="default", compile_vae=True)
    assert rel(pipe.generate_latents("a red circle", **GEN), latents) < 1e-4
    assert np.abs(pixels(pipe.generate("a red circle", **GEN)) - images).max() <= 1
    # another batch size after repeat calls ran without guard checks: its own graph, not the first one's
    one = {**GEN, "num_images": 1}
    assert rel(pipe.generate_latents("a red circle", **one), tiny().generate_latents("a red circle", **one)) < 1e-4
    assert rel(pipe.generate_latents("a red circle", **GEN), latents) < 1e-4
    assert not any(k.startswith("_orig_mod") for k in pipe.unet.state_dict())
    with pytest.raises(UserError, match="already compiled with mode 'default'"):
        pipe.optimize(compile="max-autotune")


# --- CUDA -------------------------------------------------------------------------------------------------

def cuda_tiny():
    """The tiny model on the GPU, with a byte-level tokenizer (the GPU image has no open_clip)."""
    import tempfile
    from pathlib import Path

    from latentdiff.models.tokenizer import byte_level_clip_tokenizer

    tok = byte_level_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    return tiny(tokenizer=tok).to("cuda")


@needs_cuda
@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_cuda_graph_draws_the_plain_images(guidance):
    """Replaying captured forwards gives the eager path's images, for two batch shapes (one graph each);
    at guidance 1 the sampler keeps the U-Net's output across steps, so it must not alias the graph's buffer."""
    opts = dict(steps=6, seed=5, guidance=guidance, sampler="dpm++")
    ref = {n: cuda_tiny().generate_latents("a red circle", num_images=n, **opts) for n in (1, 3)}
    pipe = cuda_tiny().optimize(cuda_graph=True)
    assert isinstance(pipe._unet_call, GraphedUNet)
    for n in (1, 3, 1):
        assert rel(pipe.generate_latents("a red circle", num_images=n, **opts), ref[n]) < 1e-5
    assert len(pipe._unet_call.graphs) == 2


@needs_cuda
def test_cuda_graph_follows_a_move_of_the_weights():
    """Moving the weights drops the old graphs (they read the old addresses, which the allocator may hand
    back to the weights of a later move: fp32 → fp16 → fp32 must not replay a stale graph)."""
    pipe = cuda_tiny().optimize(cuda_graph=True)
    a = pipe.generate_latents("a red circle", steps=3)
    pipe.to(dtype=torch.float16)
    b = pipe.generate_latents("a red circle", steps=3)
    assert len(pipe._unet_call.graphs) == 1 and 0 < rel(b, a) < 4e-3
    pipe.to(dtype=torch.float32)
    assert rel(pipe.generate_latents("a red circle", steps=3), a) < 1e-5


@needs_cuda
def test_cuda_sampling_loop_makes_no_host_sync_per_step():
    """With the sync debug mode set to error, the sampler over a graphed U-Net runs all its steps: no
    .item()/.cpu()/nonzero on device tensors inside the loop."""
    from latentdiff.conditioning import unet_model
    from latentdiff.diffusion.guidance import classifier_free_guidance
    from latentdiff.diffusion.sampling import sample

    pipe = cuda_tiny().optimize(cuda_graph=True)
    cond, uncond = pipe.conditioning(["a red circle"]), pipe.conditioning([""])
    denoiser = classifier_free_guidance(unet_model(pipe._unet_call, pipe.schedule, dtype=pipe.dtype), cond, uncond, 4.0)
    x_T = pipe.initial_latents([0], 32, 32)
    overrides = pipe.sampler_overrides("dpm++")
    with torch.inference_mode():
        sample(denoiser, pipe.schedule, x_T, sampler="dpm++", steps=2, scheduler_config=overrides)  # capture
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = sample(denoiser, pipe.schedule, x_T, sampler="dpm++", steps=8, scheduler_config=overrides)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


def test_cpu_bf16_kind_reads_the_flags_and_falls_back():
    from latentdiff.speed import cpu_bf16_kind

    assert cpu_bf16_kind(frozenset({"avx2", "fma"})) is None  # an AVX2-only CPU: no native bf16
    assert cpu_bf16_kind(frozenset({"avx512f", "avx512_bf16"})) == "avx512"
    assert cpu_bf16_kind(frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})) == "amx"


@pytest.mark.parametrize("kind, expected", [(None, "no"), ("avx512", "bf16"), ("amx", "bf16")])
def test_training_precision_auto_follows_the_cpu(monkeypatch, kind, expected):
    """mixed_precision: auto trains in bf16 only on a CPU that computes it natively, else in fp32."""
    from accelerate.state import AcceleratorState

    import latentdiff.speed as speed
    from latentdiff.train.run import make_accelerator

    monkeypatch.setattr(speed, "cpu_bf16_kind", lambda flags=None: kind)
    try:
        for precision, want in (("auto", expected), ("no", "no")):
            AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process
            assert make_accelerator("cpu", precision).mixed_precision == want
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_classic_attention_replaces_sdpa_and_keeps_the_output():
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from latentdiff.speed import classic_attention

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=8, norm_num_groups=8).eval()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.randn(1, 5, 16)
    ref = unet(x, t, encoder_hidden_states=ctx).sample
    assert classic_attention(unet) > 0
    assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())
    assert classic_attention(unet) == 0  # already classic: nothing to change
    torch.testing.assert_close(unet(x, t, encoder_hidden_states=ctx).sample, ref, atol=1e-5, rtol=1e-4)


def test_a_cpu_compile_freezes_weights_and_uses_the_cpp_wrapper(monkeypatch):
    """On the CPU, compile goes to inductor with weight freezing and the C++ wrapper (what measured fastest on
    an AMX Xeon), max-autotune modes adding its GEMM templates; the module is compiled in place, once."""
    import torch._inductor.config as inductor_config
    import torch.nn as nn

    from latentdiff.speed import _compile

    seen = []

    def fake_compile(self, **kw):  # what the compiled call sees of inductor's config when it runs
        assert kw == {"dynamic": False}
        self._compiled_call_impl = lambda *a: seen.append(
            (inductor_config.freezing, inductor_config.cpp_wrapper, inductor_config.max_autotune))

    monkeypatch.setattr(nn.Module, "compile", fake_compile)
    for mode, autotune in (("default", False), ("max-autotune", True), ("max-autotune-no-cudagraphs", True)):
        layer = nn.Linear(2, 2)
        _compile(layer, mode)
        layer(torch.zeros(2))
        assert seen[-1] == (True, True, autotune)
        assert not inductor_config.freezing  # only inside the module's calls


def test_a_cpu_compiled_call_skips_guard_checks_only_for_inputs_it_has_run_before(monkeypatch):
    """The first call of each kind of input (shapes, dtypes, grad mode, ...) runs with dynamo's guards checked
    and inductor's settings in force (it may compile); a repeat runs with the guard checks skipped."""
    import torch._dynamo.eval_frame as eval_frame
    import torch._inductor.config as inductor_config
    import torch.nn as nn

    from latentdiff.speed import _compile

    seen = []

    def fake_compile(self, **kw):
        self._compiled_call_impl = lambda x, t=None: seen.append(
            (eval_frame._is_skip_guard_eval_unsafe_stance(), inductor_config.freezing))

    monkeypatch.setattr(nn.Module, "compile", fake_compile)
    layer = nn.Linear(2, 2).eval()
    _compile(layer, "default")
    checked, skipped = (False, True), (True, False)
    with torch.no_grad():
        layer(torch.zeros(2, 2))
        layer(torch.ones(2, 2))  # same kind: values do not matter
        layer(torch.zeros(4, 2))  # a new shape
        layer(torch.zeros(2, 2, dtype=torch.float64))  # a new dtype
        layer(torch.zeros(2, 2).t())  # a new stride
        layer(torch.zeros(2, 2), t=3)
        layer(torch.zeros(2, 2), t=4)  # a plain argument keys by value
        layer(torch.zeros(4, 2))
    layer(torch.zeros(2, 2))  # grad mode on
    layer.train()
    with torch.no_grad():
        layer(torch.zeros(2, 2))  # the module in training mode
    assert seen == [checked, skipped, checked, checked, checked, checked, checked, skipped, checked, checked]
    assert not eval_frame._is_skip_guard_eval_unsafe_stance()  # only inside the repeats
