"""Interop with real Stable Diffusion formats, offline, on tiny random models: diffusers folders in the
SD 1.x and 2.x layouts, single-file LDM checkpoints (CLIP and OpenCLIP text keys) through diffusers' own
from_single_file, the shipped SD configs, and the pickle guard."""
import json

import numpy as np
import pytest
import torch

from latentdiff.errors import UserError
from latentdiff.interop import (
    LDM_CLIP,
    LDM_OPEN_CLIP,
    LDM_UNET,
    SD_VARIANTS,
    detect_sd_variant,
    ldm_state_dict,
    sd_config_dir,
)
from latentdiff.pipeline import Pipeline

STEPS = 4


def pixels(images):
    return np.stack([np.asarray(im) for im in images])


def assert_same_weights(a, b):
    sa = {k.removeprefix("text_model."): v for k, v in a.state_dict().items() if not k.endswith("position_ids")}
    sb = {k.removeprefix("text_model."): v for k, v in b.state_dict().items() if not k.endswith("position_ids")}
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return Pipeline.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory):
    """A tiny SD 2.x-style model written by diffusers itself: linear attention projections, per-block head
    dims, two layers per block, a GELU (OpenCLIP-style) text encoder, v-prediction, '!' as pad token."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.models.tokenizer import load_clip_tokenizer

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=32)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"))
    tok = load_clip_tokenizer(None)
    tok.pad_token = "!"
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("sd2") / "tiny_sd2"
    sd.save_pretrained(str(folder))
    return folder


def test_sd2_style_diffusers_folder_generates_like_diffusers(sd2_dir):
    from diffusers import StableDiffusionPipeline

    pipe = Pipeline.load(sd2_dir, device="cpu")
    assert pipe.schedule.prediction == "v_prediction" and pipe.tokenizer.pad_token == "!"
    assert pipe.sampler_overrides("ddim") == {"timestep_spacing": "leading", "steps_offset": 1,
                                              "set_alpha_to_one": False}
    ours = pixels(pipe.generate("a cat", negative_prompt="blurry", num_images=2, steps=STEPS, guidance=3.0,
                                sampler="ddim", seed=4))
    sd = StableDiffusionPipeline.from_pretrained(str(sd2_dir), safety_checker=None, local_files_only=True)
    sd.set_progress_bar_config(disable=True)
    out = sd(["a cat"] * 2, negative_prompt=["blurry"] * 2, num_inference_steps=STEPS, guidance_scale=3.0,
             latents=pipe.initial_latents([4, 5], 32, 32), output_type="np").images
    theirs = (out * 255).round().astype(np.uint8)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


@pytest.mark.parametrize("sampler", ["dpm++", "euler"])
def test_make_scheduler_lets_diffusers_draw_our_images_of_a_v_prediction_model(sd2_dir, sampler):
    """Pipeline.make_scheduler is what comparisons hand a diffusers pipeline: our sampler's type and grid with
    the model's prediction type (ours converts v to ε before its scheduler; diffusers' scheduler gets v)."""
    from diffusers import StableDiffusionPipeline

    pipe = Pipeline.load(sd2_dir, device="cpu")
    ours = pixels(pipe.generate("a cat", num_images=2, steps=STEPS, guidance=3.0, sampler=sampler, seed=4))
    sd = StableDiffusionPipeline.from_pretrained(str(sd2_dir), safety_checker=None, local_files_only=True)
    sd.set_progress_bar_config(disable=True)
    sd.scheduler = pipe.make_scheduler(sampler)
    assert sd.scheduler.config.prediction_type == "v_prediction"
    out = sd(["a cat"] * 2, negative_prompt=[""] * 2, num_inference_steps=STEPS, guidance_scale=3.0,
             latents=pipe.initial_latents([4, 5], 32, 32), output_type="np").images
    theirs = (out * 255).round().astype(np.uint8)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_single_file_round_trip_through_diffusers_from_single_file(which, tiny, sd2_dir, tmp_path):
    """Export to the LDM layout; diffusers' from_single_file (given the written config folder) and
    latentdiff both load exactly the same weights, and latentdiff draws the same images."""
    from diffusers import StableDiffusionPipeline

    pipe = tiny if which == "sd1" else Pipeline.load(sd2_dir, device="cpu")
    path, config_dir = pipe.export_single_file(tmp_path / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        keys = list(fh.keys())
    prefix = LDM_CLIP if which == "sd1" else LDM_OPEN_CLIP
    assert any(k.startswith(prefix) for k in keys) and any(k.startswith(LDM_UNET + "output_blocks") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    sd = StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(pipe, name), getattr(sd, name))
    again = Pipeline.load(path, device="cpu")  # configs embedded in the file's metadata
    assert again.weights_sha256 != pipe.weights_sha256 and again.name == "model"
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(pipe, name), getattr(again, name))
    assert again.tokenizer.pad_token == pipe.tokenizer.pad_token
    kw = dict(steps=STEPS, seed=2, sampler="ddim")
    assert np.array_equal(pixels(pipe.generate("a dog", **kw)), pixels(again.generate("a dog", **kw)))


def test_ldm_keys_match_the_real_stable_diffusion_layout(tiny):
    """Keys real SD 1.x files have (2 blocks here instead of 4, one layer per block)."""
    keys = set(ldm_state_dict(tiny.unet, tiny.vae, tiny.text_encoder))
    unet = ["input_blocks.0.0.weight", "input_blocks.1.0.in_layers.0.weight", "input_blocks.2.0.op.weight",
            "input_blocks.3.1.proj_in.weight", "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
            "middle_block.2.emb_layers.1.weight", "out.2.weight", "output_blocks.1.2.conv.weight",
            "time_embed.0.weight", "output_blocks.2.0.skip_connection.weight"]
    vae = ["encoder.down.0.downsample.conv.weight", "decoder.up.2.upsample.conv.bias", "encoder.mid.attn_1.q.weight",
           "decoder.norm_out.weight", "quant_conv.weight"]
    text = ["embeddings.token_embedding.weight", "encoder.layers.1.self_attn.out_proj.bias", "final_layer_norm.weight"]
    expected = [LDM_UNET + k for k in unet] + ["first_stage_model." + k for k in vae] + [LDM_CLIP + k for k in text]
    for k in expected:
        assert k in keys, k
    sd = ldm_state_dict(tiny.unet, tiny.vae, tiny.text_encoder)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM stores 1x1 convs


def test_single_file_with_explicit_config_and_pickle_guard(tiny, tmp_path):
    ldm = ldm_state_dict(tiny.unet, tiny.vae, tiny.text_encoder)
    cfg = tmp_path / "cfg"
    from latentdiff.interop import write_config_folder

    write_config_folder(cfg, tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.scheduler_config)
    ckpt = tmp_path / "user.ckpt"
    torch.save({"state_dict": ldm, "global_step": 3}, ckpt)
    with pytest.raises(UserError, match="pickle.*--allow-unsafe-pickle"):
        Pipeline.load(ckpt, config=cfg)
    loaded = Pipeline.load(ckpt, config=cfg, allow_unsafe_pickle=True, device="cpu")
    assert_same_weights(tiny.unet, loaded.unet)
    # A file without embedded configs whose weights do not fit the detected SD 1.x configs: one clear error.
    from safetensors.torch import save_file

    save_file(ldm, str(tmp_path / "bare.safetensors"))
    with pytest.raises(UserError, match=r"bare.safetensors: cannot load with the configs in .*sd1"):
        Pipeline.load(tmp_path / "bare.safetensors")


def test_diffusers_folder_with_only_pickle_weights_is_refused(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "pkl"
    shutil.copytree(tiny_model_dir, folder)
    unet_dir = folder / "unet"
    from safetensors.torch import load_file

    weights = load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))
    torch.save(weights, unet_dir / "diffusion_pytorch_model.bin")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="diffusion_pytorch_model.bin: a pickle file"):
        Pipeline.load(folder)
    assert Pipeline.load(folder, allow_unsafe_pickle=True).unet is not None


def test_not_a_model_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="unknown model file type"):
        Pipeline.load(tmp_path / "notes.txt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="junk.safetensors: cannot read the checkpoint"):
        Pipeline.load(tmp_path / "junk.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="model_index.json: file not found"):
        Pipeline.load(tmp_path / "empty_dir")


def test_detect_sd_variant_from_the_weights():
    v1 = {LDM_UNET + "input_blocks.0.0.weight": torch.empty(0, 4, 3, 3),
          "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.empty(77, 768)}
    v2 = {LDM_UNET + "input_blocks.0.0.weight": torch.empty(0, 4, 3, 3),
          LDM_UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": torch.empty(640, 1024)}
    assert detect_sd_variant(v1) == "sd1" and detect_sd_variant(v2) == "sd2"
    with pytest.raises(UserError, match="not a Stable Diffusion"):
        detect_sd_variant({"foo": torch.empty(1)})
    xl = dict(v1, **{"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.empty(1)})
    with pytest.raises(UserError, match="xl_base"):
        detect_sd_variant(xl)


@pytest.mark.parametrize("variant, sizes", [
    ("sd1", (859_520_964, 83_653_863, 123_060_480)),
    ("sd2", (865_910_724, 83_653_863, 340_387_840)),
    ("sd2-base", (865_910_724, 83_653_863, 340_387_840)),
])
def test_shipped_sd_configs_build_the_real_architectures(variant, sizes):
    """The shipped configs instantiate (on the meta device, no memory) with SD's published parameter counts."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = sd_config_dir(variant)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder), subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder), subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder), subfolder="text_encoder"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == sizes
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and variant in SD_VARIANTS


@pytest.mark.parametrize("which", ["tiny", "sd2"])
def test_direct_load_matches_from_pretrained(which, tiny_model_dir, sd2_dir):
    """The short load path (interop._direct_load) gives what from_pretrained gives: same weights, dtypes,
    buffers, config and eval mode, for each component of a latentdiff-written and a diffusers-written folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from latentdiff.interop import COMPONENT_WEIGHTS, _direct_load

    folder = tiny_model_dir if which == "tiny" else sd2_dir
    for comp, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        sub = folder / comp
        direct = _direct_load(cls, sub, sub / COMPONENT_WEIGHTS[comp][0])
        assert direct is not None, comp
        ref = cls.from_pretrained(str(sub), local_files_only=True)
        a, b = direct.state_dict(), ref.state_dict()
        assert a.keys() == b.keys(), comp
        for k in b:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (comp, k)
        assert dict(direct.config) == dict(ref.config) if comp != "text_encoder" else direct.config == ref.config
        assert not direct.training and not ref.training


def test_direct_load_leaves_renamed_keys_to_from_pretrained(tiny_model_dir, tmp_path):
    """A file whose keys are not the model's (say, an old naming the libraries convert) is not loaded the
    short way: _direct_load says None and Pipeline.load still loads it through from_pretrained."""
    import shutil

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    from latentdiff.interop import _direct_load

    folder = tmp_path / "old"
    shutil.copytree(tiny_model_dir, folder)
    file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(file))
    renamed = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
               .replace("to_out.0.", "proj_attn."): v for k, v in weights.items()}
    assert renamed.keys() != weights.keys()  # the tiny VAE has a mid-block attention with these names
    save_file(renamed, str(file))
    assert _direct_load(AutoencoderKL, folder / "vae", file) is None
    loaded = Pipeline.load(folder, device="cpu").vae
    for k, v in weights.items():
        assert torch.equal(loaded.state_dict()[k], v.float()), k


def test_state_dict_keys_without_building_it(tiny):
    from latentdiff.interop import _state_dict_keys

    for net in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert _state_dict_keys(net) == set(net.state_dict())
