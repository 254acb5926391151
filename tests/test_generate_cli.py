"""`latentdiff generate`, `replay` and `export` on a tiny model: PNGs with provenance, bit-identical replay,
one-line errors with exit status 2."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def generated(tiny_model_dir, tmp_path_factory):
    """Two images written by the CLI (module-scoped: generation is the slow part)."""
    out = tmp_path_factory.mktemp("gen")
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--num-images", "2", "--steps", "3",
                 "--seed", "5", "--sampler", "ddim", "--guidance", "3", "--negative-prompt", "blue",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out


def test_generate_writes_pngs_with_their_provenance(generated, tiny_model_dir):
    paths = sorted(generated.glob("*.png"))
    assert [p.name for p in paths] == ["a-red-circle_5.png", "a-red-circle_6.png"]
    with Image.open(paths[1]) as img:
        assert img.size == (32, 32)
        rec = json.loads(img.text["latentdiff"])
    assert rec["prompt"] == "a red circle" and rec["negative_prompt"] == "blue" and rec["seed"] == 6
    assert (rec["sampler"], rec["steps"], rec["guidance"], rec["height"], rec["width"]) == ("ddim", 3, 3.0, 32, 32)
    assert rec["model_name"] == "tiny_model" and rec["model_path"] == str(tiny_model_dir.resolve())
    assert len(rec["model_sha256"]) == 64 and rec["latentdiff_version"]


def test_generate_prints_the_paths(tiny_model_dir, tmp_path, capsys):
    code, out, err = run(capsys, "generate", "", "--model", str(tiny_model_dir), "--steps", "2",
                         "--out", str(tmp_path), "--sampler", "euler")
    assert code == 0 and out.split() == [str(tmp_path / "unconditional_0.png")]
    code, out, _ = run(capsys, "generate", "", "--model", str(tiny_model_dir), "--steps", "2",
                       "--out", str(tmp_path), "--sampler", "euler")
    assert out.split() == [str(tmp_path / "unconditional_0_1.png")]  # never overwrites


def test_replay_is_bit_identical(generated, tmp_path, capsys):
    code, out, err = run(capsys, "replay", str(generated / "a-red-circle_6.png"), "--out", str(tmp_path))
    assert code == 0, err
    assert f"identical to {generated / 'a-red-circle_6.png'}" in out
    with Image.open(generated / "a-red-circle_6.png") as a, Image.open(tmp_path / "a-red-circle_6_replay.png") as b:
        assert a.tobytes() == b.tobytes()


def test_replay_errors(generated, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, _, err = run(capsys, "replay", str(plain), "--out", str(tmp_path))
    assert code == 2 and "no latentdiff record" in err and err.count("\n") == 1
    # a record whose model has moved
    with Image.open(generated / "a-red-circle_5.png") as img:
        rec = json.loads(img.text["latentdiff"])
        rec["model_path"] = str(tmp_path / "gone")
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("latentdiff", json.dumps(rec))
        img.save(tmp_path / "moved.png", pnginfo=info)
    code, _, err = run(capsys, "replay", str(tmp_path / "moved.png"), "--out", str(tmp_path))
    assert code == 2 and "model 'tiny_model' not found at" in err and "--model" in err


def test_long_prompt_warns_with_the_dropped_words(tiny_model_dir, tmp_path, capsys):
    prompt = "circle " * 80 + "zebra"
    code, out, err = run(capsys, "generate", prompt, "--model", str(tiny_model_dir), "--steps", "1",
                         "--out", str(tmp_path))
    assert code == 0 and "warning: prompt is longer than 77 tokens" in err and "zebra" in err


@pytest.mark.parametrize("flags, words", [
    (["--sampler", "heun"], "--sampler 'heun': unknown sampler"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--steps", "ten"], "--steps 'ten': expected an integer"),
    (["--guidance", "strong"], "--guidance 'strong': expected a number"),
    (["--guidance", "nan"], "--guidance 'nan'"),
    (["--height", "30"], "height 30: expected a positive multiple of 4"),
    (["--num-images", "0"], "--num-images 0"),
    (["--device", "tpu"], "--device 'tpu'"),
])
def test_bad_flags_are_one_line_errors(tiny_model_dir, tmp_path, capsys, flags, words):
    code, out, err = run(capsys, "generate", "x", "--model", str(tiny_model_dir), "--out", str(tmp_path), *flags)
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_model_and_unwritable_out_are_one_line_errors(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "--model", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert code == 2 and f"{tmp_path / 'nope'}: model not found" in err and err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "generate", "x", "--out", str(blocker / "sub"))
    assert code == 2 and f"--out {blocker / 'sub'}: cannot write" in err and err.count("\n") == 1


def test_export_both_formats(tiny_model_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "export", "--model", str(tiny_model_dir), "--format", "single-file",
                       "--out", str(tmp_path / "m.safetensors"))
    assert code == 0 and (tmp_path / "m.safetensors").is_file()
    assert (tmp_path / "m_config" / "model_index.json").is_file()
    assert "from_single_file" in out
    code, out, _ = run(capsys, "export", "--model", str(tmp_path / "m.safetensors"), "--format", "diffusers",
                       "--out", str(tmp_path / "folder"))
    assert code == 0 and (tmp_path / "folder" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    code, _, err = run(capsys, "export", "--model", str(tiny_model_dir), "--format", "ckpt",
                       "--out", str(tmp_path / "x"))
    assert code == 2 and "--format 'ckpt'" in err
    code, _, err = run(capsys, "export", "--model", str(tiny_model_dir), "--format", "single-file",
                       "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "already exists" in err


def test_generate_help_does_not_import_torch_or_diffusers_from_our_module():
    code = ("import sys; import latentdiff.commands.generate as g; import latentdiff; "
            "print('diffusers' in sys.modules, 'torch' in sys.modules, 'latentdiff.pipeline' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "False", "False"], proc.stderr
    proc = subprocess.run([sys.executable, "-m", "latentdiff.cli", "generate", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--negative-prompt" in proc.stdout


def test_export_fp16_halves_weights_and_keeps_images(tiny_model_dir, tmp_path, capsys):
    from safetensors import safe_open

    from latentdiff.pipeline import Pipeline

    code, _, _ = run(capsys, "export", "--model", str(tiny_model_dir), "--format", "diffusers", "--dtype", "fp16",
                     "--out", str(tmp_path / "half"))
    assert code == 0
    with safe_open(str(tmp_path / "half" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    full = Pipeline.load(tiny_model_dir, device="cpu")
    half = Pipeline.load(tmp_path / "half", device="cpu")
    assert half.dtype == torch.float32  # loading upcasts
    a = np.asarray(full.generate("a red circle", seed=1, steps=5)[0], dtype=np.int16)
    b = np.asarray(half.generate("a red circle", seed=1, steps=5)[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 3  # fp16 rounding of the weights only


def test_export_keeps_companion_folders_in_half_precision(tiny_model_dir, tmp_path, capsys):
    import shutil

    from safetensors import safe_open

    from latentdiff.eval.fid import ClipImageFeatures
    from latentdiff.models.factory import ImageTowerConfig, TextConfig, build_clip

    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    torch.manual_seed(0)
    build_clip(TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, projection_dim=32),
               ImageTowerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, image_size=32)
               ).save_pretrained(str(src / "clip"))
    code, _, _ = run(capsys, "export", "--model", str(src), "--format", "diffusers", "--dtype", "fp16",
                     "--out", str(tmp_path / "out"))
    assert code == 0 and not (tmp_path / "out" / "classifier").exists()
    with safe_open(str(tmp_path / "out" / "clip" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    full, half = ClipImageFeatures(src / "clip")(images), ClipImageFeatures(tmp_path / "out" / "clip")(images)
    assert half.dtype == torch.float32 and full.shape == half.shape
    assert (full - half).abs().max() <= 2e-2 * full.abs().max()  # fp16 rounding of the weights only
    code, _, _ = run(capsys, "export", "--model", str(src), "--format", "diffusers", "--out", str(tmp_path / "o32"))
    assert code == 0 and torch.equal(ClipImageFeatures(tmp_path / "o32" / "clip")(images), full)


def test_speed_flag_is_recorded_and_replayed(tiny_model_dir, tmp_path, capsys):
    code, out, err = run(capsys, "generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2",
                         "--speed", "fp32,channels_last,sdpa", "--out", str(tmp_path), "--device", "cpu")
    assert code == 0, err
    path = out.split()[0]
    with Image.open(path) as img:
        rec = json.loads(img.text["latentdiff"])
    assert rec["extra"]["speed"] == {"dtype": "fp32", "channels_last": True, "attention": "sdpa"}
    code, out, err = run(capsys, "replay", path, "--out", str(tmp_path / "r"))
    assert code == 0 and "identical to" in out, err


def test_bad_speed_flags_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "--model", str(tiny_model_dir), "--speed", "fp16,turbo",
                       "--out", str(tmp_path))
    assert code == 2 and "--speed 'fp16,turbo': unknown word 'turbo'" in err and err.count("\n") == 1
    code, _, err = run(capsys, "generate", "x", "--model", str(tiny_model_dir), "--speed", "cuda_graph",
                       "--out", str(tmp_path), "--device", "cpu")
    assert code == 2 and "cuda_graph needs a CUDA device" in err and err.count("\n") == 1


def test_parse_speed_words():
    from latentdiff.speed import Speed, parse_speed

    assert parse_speed("fast") == Speed.fast()
    assert parse_speed("bf16, compile=max-autotune, cuda_graph") == Speed(dtype="bf16", compile="max-autotune",
                                                                          cuda_graph=True)
    assert parse_speed("fast,bf16").dtype == "bf16"  # later words add to (and override) earlier ones


def test_replay_on_a_cpu_drops_the_gpu_only_speed_options(tmp_path, capsys):
    from latentdiff.commands.generate import _replay_speed

    made = {"dtype": "fp16", "channels_last": True, "compile": "default", "cuda_graph": True}
    assert _replay_speed(made, "cuda", tmp_path / "a.png") == made
    assert _replay_speed(made, "cpu", tmp_path / "a.png") == {"dtype": "fp16", "channels_last": True}
    assert "made with cuda_graph, compile; replaying without them on cpu" in capsys.readouterr().err
