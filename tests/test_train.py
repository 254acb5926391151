"""Training: exact resume after SIGKILL, two-process training on CPU, conditioning dropout rate,
non-finite losses, latent cache keyed by the VAE's weights. Tiny models, seconds each."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from latentdiff.config import load_config
from latentdiff.errors import UserError
from latentdiff.train.config import LoopConfig, TrainConfig
from latentdiff.train.loop import IndexStream, TrainingStopped, lr_at, run_stage

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny_config(tmp_path: Path, data: Path, **unet_loop) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["out"] = str(tmp_path / "run")
    raw["data"]["folder"] = str(data)
    raw["unet"]["loop"].update(unet_loop)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from latentdiff.data.shapes import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "shapes", 64, seed=3, workers=1)


@pytest.fixture(scope="module")
def pretrained_stages(tmp_path_factory, tiny_data):
    """A tiny run with the VAE and CLIP stages done, to copy for U-Net stage tests."""
    tmp = tmp_path_factory.mktemp("pre")
    cfg = tiny_config(tmp, tiny_data)
    _cli("train", str(cfg), "--stage", "vae", "--stage", "clip")
    return tmp / "run"


def _cli(*args, check=True, **kw):
    proc = subprocess.run([sys.executable, "-m", "latentdiff.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _copy_pre(pre: Path, dest: Path) -> None:
    import shutil

    for stage in ("vae", "clip"):
        shutil.copytree(pre / stage, dest / stage)


def test_index_stream_and_lr():
    s = IndexStream(10, 4, seed=1)
    first = np.concatenate([s.batch(i) for i in range(5)])  # 20 positions = two epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert np.array_equal(IndexStream(10, 4, seed=1).batch(3), s.batch(3))  # known without replay
    cfg = LoopConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 99) == pytest.approx(0.1, abs=0.01)


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, tiny_data, pretrained_stages):
    steps = 12
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    ref_cfg = tiny_config(ref_dir, tiny_data, steps=steps, checkpoint_every=2, validate_every=0)
    kill_cfg = tiny_config(killed_dir, tiny_data, steps=steps, checkpoint_every=2, validate_every=0)
    for d in (ref_dir, killed_dir):
        _copy_pre(pretrained_stages, d / "run")
    _cli("train", str(ref_cfg), "--resume")
    # the killed run: SIGKILL once a mid-run checkpoint exists
    proc = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "train", str(kill_cfg), "--resume"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = killed_dir / "run" / "unet" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and latest.read_text().strip() >= "ckpt-0000004"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = latest.read_text().strip()
    assert done_at_kill < f"ckpt-{steps:07d}", "the run finished before it could be killed"
    _cli("train", str(kill_cfg), "--resume")
    ref = load_file(str(ref_dir / "run" / "unet" / "checkpoints" / f"ckpt-{steps:07d}" / "model.safetensors"))
    res = load_file(str(killed_dir / "run" / "unet" / "checkpoints" / f"ckpt-{steps:07d}" / "model.safetensors"))
    ref_ema = load_file(str(ref_dir / "run" / "unet" / "checkpoints" / f"ckpt-{steps:07d}" / "ema.safetensors"))
    res_ema = load_file(str(killed_dir / "run" / "unet" / "checkpoints" / f"ckpt-{steps:07d}" / "ema.safetensors"))
    assert ref.keys() == res.keys()
    diff = max((ref[k] - res[k]).abs().max().item() for k in ref)
    ema_diff = max((ref_ema[k] - res_ema[k]).abs().max().item() for k in ref_ema)
    assert diff <= 1e-6 and ema_diff <= 1e-6, (diff, ema_diff, done_at_kill)
    # and the run did train: weights moved from the first checkpoint
    assert (killed_dir / "run" / "model" / "model_index.json").is_file()


def test_two_process_training_keeps_ranks_in_sync(tmp_path, tiny_data, pretrained_stages):
    cfg = tiny_config(tmp_path, tiny_data, steps=3, checkpoint_every=3, validate_every=0)
    _copy_pre(pretrained_stages, tmp_path / "run")
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, torch, json\n"
        "import latentdiff.train.loop as L\n"
        "orig = L._one_step\n"
        "def probe(stage, model, *a, **k):\n"
        "    out = orig(stage, model, *a, **k)\n"
        "    from accelerate import PartialState\n"
        "    st = PartialState()\n"
        "    total = sum(p.detach().double().sum().item() for p in model.parameters())\n"
        "    with open(sys.argv[2] + f'.rank{st.process_index}', 'a') as f:\n"
        "        f.write(json.dumps({'world': st.num_processes, 'sum': total}) + '\\n')\n"
        "    return out\n"
        "L._one_step = probe\n"
        "from latentdiff.cli import main\n"
        "sys.exit(main(['train', sys.argv[1], '--resume', '--stage', 'unet']))\n")
    probe = tmp_path / "sums"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(script), str(cfg), str(probe)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = [json.loads(x) for x in (tmp_path / "sums.rank0").read_text().splitlines()]
    r1 = [json.loads(x) for x in (tmp_path / "sums.rank1").read_text().splitlines()]
    assert len(r0) == len(r1) == 3 and r0[0]["world"] == 2
    for a, b in zip(r0, r1):
        assert a["sum"] == b["sum"]  # identical weights on both ranks after every step
    assert r0[0]["sum"] != r0[-1]["sum"]  # and they did change


def test_conditioning_dropout_rate():
    """drop_conditions, the dropout of every stage: each route at its own rate, independently, to its null."""
    from latentdiff.conditioning import Conditioning, drop_conditions

    cond = Conditioning(context=torch.ones(256, 3, 2), control=torch.ones(256, 5, 4, 4))
    for p in (0.0, 0.1, 0.5):
        g = torch.Generator().manual_seed(0)
        draws = [drop_conditions(cond, cond.null(torch.zeros(3, 2)), {"context": p, "control": 0.3}, g)
                 for _ in range(200)]
        for out, masks in draws[:3]:
            assert torch.equal(out.context.flatten(1).eq(0).all(1), masks["context"])  # dropped rows are ∅
            assert torch.equal(out.control.flatten(1).eq(0).all(1), masks["control"])
        for route, rate in (("context", p), ("control", 0.3)):
            drops = torch.cat([m[route] for _, m in draws]).float()
            n = drops.numel()
            assert abs(drops.mean().item() - rate) <= 4 * (rate * (1 - rate) / n) ** 0.5 + 1e-9
        both = torch.cat([m["context"] & m["control"] for _, m in draws]).float().mean().item()
        assert abs(both - 0.3 * p) <= 4 * (0.3 * p / 51200) ** 0.5 + 1e-9  # independent routes


def test_dropout_replaces_caption_with_empty_prompt(tmp_path, tiny_data, pretrained_stages):
    """The realised rate inside the real stage: how often a batch row's context is the empty prompt's."""
    from transformers import CLIPTextModel

    from latentdiff.models.tokenizer import load_clip_tokenizer
    from latentdiff.train.config import UNetStage
    from latentdiff.train.stages import UNetTrainStage

    cfg = load_config(tiny_config(tmp_path, tiny_data), TrainConfig)
    tok = load_clip_tokenizer(None)
    text = CLIPTextModel.from_pretrained(str(pretrained_stages / "clip" / "final" / "text_encoder"))
    null = tok([""], padding="max_length", max_length=32, return_tensors="pt").input_ids[0]
    tokens = tok(["a red circle", "a blue square"] * 4, padding="max_length", max_length=32,
                 return_tensors="pt").input_ids
    unet_cfg = UNetStage(model=cfg.unet.model, loop=cfg.unet.loop, cond_dropout=0.25)
    stage = UNetTrainStage(unet_cfg, torch.zeros(8, 4, 16, 16), torch.ones(8, 4, 16, 16), tokens, null, text, 1.0,
                           torch.device("cpu"))
    assert torch.allclose(stage.null_context, text(null[None]).last_hidden_state[0], atol=1e-6)
    g = torch.Generator().manual_seed(1)
    dropped = []
    for _ in range(200):
        ctx = stage.context(torch.arange(8), g)
        dropped.append((ctx == stage.null_context).flatten(1).all(1))
        kept = ~dropped[-1]
        assert torch.equal(ctx[kept], stage.contexts[stage.caption_index[torch.arange(8)]][kept])
    rate = torch.cat(dropped).float().mean().item()
    assert abs(rate - 0.25) < 4 * (0.25 * 0.75 / 1600) ** 0.5


class _NaNStage:
    """A stage whose loss turns non-finite after ``good`` steps."""

    name = "unet"

    def __init__(self, good):
        self.model = torch.nn.Linear(2, 1)
        self.num_examples, self.good, self.calls = 16, good, 0

    def loss(self, model, index, generator):
        self.calls += 1
        out = model(torch.ones(len(index), 2)).pow(2).mean()
        return out if self.calls <= self.good else out * float("nan")

    def validate(self, model, step, out):
        return {}

    def finish(self, model, out):
        return out


def test_nonfinite_losses_skip_then_stop_with_checkpoint_intact(tmp_path):
    from accelerate import Accelerator

    cfg = LoopConfig(steps=50, batch_size=4, checkpoint_every=3, max_nonfinite=5, warmup_steps=1)
    stage = _NaNStage(good=7)
    with pytest.raises(TrainingStopped) as e:
        run_stage(stage, cfg, tmp_path / "s", 0, Accelerator(cpu=True), False, {})
    msg = str(e.value)
    assert "5 non-finite losses in a row" in msg and "ckpt-0000006" in msg
    state = json.loads((tmp_path / "s" / "checkpoints" / "ckpt-0000006" / "state.json").read_text())
    assert state["step"] == 6
    w = load_file(str(tmp_path / "s" / "checkpoints" / "ckpt-0000006" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_existing_run_needs_resume(tmp_path):
    from accelerate import Accelerator

    cfg = LoopConfig(steps=2, batch_size=2, checkpoint_every=1, warmup_steps=1)
    run_stage(_NaNStage(good=100), cfg, tmp_path / "s", 0, Accelerator(cpu=True), False, {})
    with pytest.raises(UserError, match="--resume"):
        run_stage(_NaNStage(good=100), cfg, tmp_path / "s", 0, Accelerator(cpu=True), False, {})


def test_latent_cache_is_keyed_by_vae_weights(tmp_path, tiny_data):
    from latentdiff.data.folder import load_folder
    from latentdiff.data.latents import cached_latents, load_images
    from latentdiff.models.factory import VAEConfig, build_vae
    from latentdiff.train.stages import vae_latent_stats

    recs = load_folder(tiny_data)[:8]
    vae = build_vae(VAEConfig(block_out_channels=(8, 8), norm_num_groups=4))
    calls = []

    def encode(x):
        calls.append(len(x))
        return vae_latent_stats(vae, x, "cpu")

    m1, s1, f1 = cached_latents(tmp_path, vae, recs, 64, encode, lambda: load_images(recs, 64, False))
    m2, _, f2 = cached_latents(tmp_path, vae, recs, 64, encode, lambda: load_images(recs, 64, False))
    assert f1 == f2 and calls == [8] and torch.equal(m1, m2)
    with torch.no_grad():
        next(vae.parameters()).add_(0.1)  # a changed VAE: a new cache, rebuilt
    m3, _, f3 = cached_latents(tmp_path, vae, recs, 64, encode, lambda: load_images(recs, 64, False))
    assert f3 != f1 and calls == [8, 8] and not torch.equal(m1, m3)


def test_model_from_checkpoint_builds_a_model_folder_from_a_mid_run_ema(tmp_path, tiny_data, pretrained_stages):
    """scripts/model_from_checkpoint.py: the checkpoint's EMA U-Net with the run's VAE and text encoder, a
    folder the pipeline loads; an existing --out or a missing step is a one-line error."""
    from safetensors.torch import load_file

    from latentdiff.pipeline import Pipeline

    cfg = tiny_config(tmp_path, tiny_data, steps=4, checkpoint_every=2, validate_every=0)
    with cfg.open("a") as f:  # the recipe's generate defaults reach the model folder
        f.write("generate: {sampler: ddim, steps: 7, guidance: 2.5}\n")
    _copy_pre(pretrained_stages, tmp_path / "run")
    _cli("train", str(cfg), "--stage", "unet")
    script = str(ROOT / "scripts" / "model_from_checkpoint.py")
    out = tmp_path / "model-step2"
    proc = subprocess.run([sys.executable, script, str(cfg), "--out", str(out), "--step", "2"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "latentdiff.json").read_text())
    assert info["unet_checkpoint"] == {"step": 2, "of_steps": 4, "weights": "ema"}
    assert info["generate_defaults"] == {"sampler": "ddim", "steps": 7, "guidance": 2.5}
    pipe = Pipeline.load(out, device="cpu")
    assert pipe.defaults == {"sampler": "ddim", "steps": 7, "guidance": 2.5}
    ema = load_file(str(tmp_path / "run" / "unet" / "checkpoints" / "ckpt-0000002" / "ema.safetensors"))
    weights = dict(pipe.unet.named_parameters())
    assert set(weights) <= set(ema)  # every U-Net parameter comes from the checkpoint's EMA
    assert all(torch.equal(weights[k].float(), ema[k].float()) for k in weights)
    assert len(pipe.generate("a red circle", steps=2, seed=0)) == 1
    for args, message in (([str(cfg), "--out", str(out), "--step", "2"], "already exists"),
                          ([str(cfg), "--out", str(tmp_path / "x"), "--step", "3"], "no checkpoint at step 3")):
        proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_unet_stage_can_train_the_text_encoder_too(tmp_path, tiny_data, pretrained_stages):
    """unet.text_encoder_lr_scale: the CLIP stage's text encoder learns with the U-Net at that × the U-Net's
    learning rate (its own optimizer group); the model folder, and one built from a mid-run checkpoint,
    carry the trained encoder; the plain recipe keeps the CLIP stage's."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from latentdiff.pipeline import Pipeline
    from latentdiff.train import loop

    raw = yaml.safe_load(tiny_config(tmp_path, tiny_data, steps=4, checkpoint_every=2, validate_every=0).read_text())
    raw["unet"]["text_encoder_lr_scale"] = 0.5
    cfg = tmp_path / "joint.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    _copy_pre(pretrained_stages, tmp_path / "run")
    _cli("train", str(cfg), "--stage", "unet")
    clip_text = CLIPTextModel.from_pretrained(str(pretrained_stages / "clip" / "final" / "text_encoder"))
    model = Pipeline.load(tmp_path / "run" / "model", device="cpu")
    trained = dict(model.text_encoder.named_parameters())
    changed = [n for n, p in clip_text.named_parameters() if not torch.equal(p, trained[n].float())]
    assert len(changed) > len(trained) // 2  # the encoder learnt with the U-Net
    ema = load_file(str(tmp_path / "run" / "unet" / "checkpoints" / "ckpt-0000002" / "ema.safetensors"))
    assert any(k.startswith("text_encoder.") for k in ema) and any(k.startswith("unet.") for k in ema)
    out = tmp_path / "model-step2"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "model_from_checkpoint.py"), str(cfg), "--out",
                           str(out), "--step", "2"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mid = Pipeline.load(out, device="cpu")
    for name, p in mid.text_encoder.named_parameters():
        assert torch.equal(p.float(), ema["text_encoder." + name].float())
    for name, p in mid.unet.named_parameters():
        assert torch.equal(p.float(), ema["unet." + name].float())
    assert len(mid.generate("a red circle", steps=2, seed=0)) == 1
    # the optimizer: the encoder's group at 0.5 × the schedule's learning rate, the U-Net's at 1 ×
    net = torch.nn.ModuleDict({"unet": torch.nn.Linear(2, 2), "text_encoder": torch.nn.Linear(2, 2)})
    opt = loop.make_optimizer(net, LoopConfig(lr=1e-3), {"text_encoder.": 0.5})
    by_scale = {g["lr_scale"]: len(g["params"]) for g in opt.param_groups}
    assert by_scale == {1.0: 2, 0.5: 2} and {g["lr"] for g in opt.param_groups} == {1e-3, 5e-4}


def test_assembling_a_model_again_keeps_its_installed_companions(tmp_path, tiny_model_dir):
    """A finished run resumed assembles its model folder again: companions installed since (whose folders are
    still there) stay registered; the recipe's generate defaults are written."""
    from latentdiff.checkpoint import companion_map, register_companions
    from latentdiff.pipeline import Pipeline
    from latentdiff.train.config import GenerateDefaults, TrainConfig
    from latentdiff.train.run import assemble_model

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    cfg = TrainConfig(generate=GenerateDefaults(guidance=5.0))
    parts = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, cfg, tmp_path)
    dest = assemble_model(tmp_path / "model", *parts)
    (dest / "controlnet").mkdir()
    (dest / "classifier").mkdir()
    register_companions(dest, {"segmap": "controlnet", "classifier": "classifier"})
    (dest / "classifier").rmdir()  # gone: not kept
    assemble_model(dest, *parts)
    assert companion_map(dest) == {"segmap": "controlnet"}
    assert json.loads((dest / "latentdiff.json").read_text())["generate_defaults"] == {"guidance": 5.0}


def test_checkpoints_are_pruned_to_the_newest_except_every_keep_every(tmp_path):
    """keep_checkpoints newest stay; keep_every also spares every checkpoint at a multiple of it, so a recipe can
    choose among its steps afterwards (a layout ControlNet on validation scenes)."""
    from latentdiff.errors import ConfigError
    from latentdiff.train.state import latest_checkpoint, save_checkpoint

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(100, 700, 100):
        save_checkpoint(tmp_path / "a", step, net, None, opt, {}, keep=2)
        save_checkpoint(tmp_path / "b", step, net, None, opt, {}, keep=2, keep_every=300)
    assert sorted(p.name for p in (tmp_path / "a").glob("ckpt-*")) == ["ckpt-0000500", "ckpt-0000600"]
    assert sorted(p.name for p in (tmp_path / "b").glob("ckpt-*")) == ["ckpt-0000300", "ckpt-0000500",
                                                                      "ckpt-0000600"]
    assert latest_checkpoint(tmp_path / "b").name == "ckpt-0000600"
    with pytest.raises(ConfigError, match="keep_every"):
        LoopConfig(keep_every=-1)
