"""The training loop's speed options keep its promises: a non-finite loss caught on the device leaves the
weights and the optimizer untouched, a loop that reads its health only every N steps still stops with the
last good checkpoint intact, ``torch.compile`` trains the same model as eager, and data placed on the
device (GPU only) resumes exactly. Tiny models; the compile test is marked slow."""
import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from latentdiff.errors import ConfigError, UserError
from latentdiff.train.config import LoopConfig
from latentdiff.train.loop import TrainingStopped, data_device, run_stage


class _Stage:
    """A tiny regression whose loss is non-finite at the 1-based calls in ``bad`` (or from ``bad_from`` on)."""

    name = "unet"

    def __init__(self, bad=(), bad_from=None):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.x, self.y = torch.randn(32, 3), torch.randn(32, 1)
        self.num_examples, self.bad, self.bad_from, self.calls = 32, set(bad), bad_from, 0

    def loss(self, model, index, generator):
        self.calls += 1
        out = (model(self.x[index]) - self.y[index]).pow(2).mean()
        broken = self.calls in self.bad or (self.bad_from is not None and self.calls >= self.bad_from)
        return out * float("nan") if broken else out

    def validate(self, model, step, out):
        return {}

    def finish(self, model, out):
        return out


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_a_nonfinite_step_leaves_weights_and_optimizer_untouched(tmp_path):
    cfg = LoopConfig(steps=8, batch_size=4, checkpoint_every=8, warmup_steps=1, lr=1e-2)
    stage, snaps = _Stage(bad={5}), {}
    run_stage(stage, cfg, tmp_path / "s", 0, Accelerator(cpu=True), False, {},
              on_step=lambda n: snaps.__setitem__(n, _weights(stage.model)))
    assert all(torch.equal(a, b) for a, b in zip(snaps[4], snaps[5]))  # step 5 was skipped
    assert not all(torch.equal(a, b) for a, b in zip(snaps[5], snaps[6]))  # and training went on
    state = json.loads((tmp_path / "s" / "checkpoints" / "ckpt-0000008" / "state.json").read_text())
    assert state["nonfinite_total"] == 1 and state["nonfinite_run"] == 0
    opt = load_file(str(tmp_path / "s" / "checkpoints" / "ckpt-0000008" / "optimizer.safetensors"))
    steps = {float(v) for k, v in opt.items() if k.endswith(".step")}
    assert steps == {7.0}, steps  # Adam counted 7 updates in 8 steps


def test_reading_health_every_few_steps_still_stops_with_a_good_checkpoint(tmp_path):
    cfg = LoopConfig(steps=50, batch_size=4, checkpoint_every=3, max_nonfinite=5, warmup_steps=1,
                     sync_every=4, log_every=4)
    with pytest.raises(TrainingStopped) as e:
        run_stage(_Stage(bad_from=8), cfg, tmp_path / "s", 0, Accelerator(cpu=True), False, {})
    msg = str(e.value)
    # losses 8..12 are non-finite; the host learns it at step 12 (a sync point); step 9's checkpoint
    # was held back because the streak had begun, so step 6's is the last good one
    assert "stopped at step 12: 5 non-finite losses in a row" in msg and "ckpt-0000006" in msg, msg
    assert not (tmp_path / "s" / "checkpoints" / "ckpt-0000009").exists()
    w = load_file(str(tmp_path / "s" / "checkpoints" / "ckpt-0000006" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())
    logged = [json.loads(x) for x in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [4, 8] and logged[0]["loss"] is not None and logged[1]["loss"] is None


def test_sync_every_does_not_change_what_is_trained(tmp_path):
    """Reading the loss less often is only a matter of when the host looks: the same weights result."""
    results = []
    for sync in (1, 5):
        cfg = LoopConfig(steps=10, batch_size=4, checkpoint_every=10, warmup_steps=2, lr=1e-2, sync_every=sync,
                         log_every=5)
        stage = _Stage(bad={3})
        run_stage(stage, cfg, tmp_path / f"s{sync}", 0, Accelerator(cpu=True), False, {})
        results.append(_weights(stage.model))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_speed_options_are_checked():
    with pytest.raises(ConfigError, match="compile: expected one of none, default"):
        LoopConfig(compile="fast")
    with pytest.raises(ConfigError, match="data_on_device"):
        LoopConfig(data_on_device="maybe")
    with pytest.raises(ConfigError, match="sync_every"):
        LoopConfig(sync_every=-1)


def test_data_device_decision():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    stage = _Stage()  # cannot place its data
    assert data_device(stage, LoopConfig(), cpu) == cpu
    assert data_device(stage, LoopConfig(data_on_device="no"), gpu) == cpu
    assert data_device(stage, LoopConfig(data_on_device="auto"), gpu) == cpu
    with pytest.raises(UserError, match="keeps its data on the CPU"):
        data_device(stage, LoopConfig(data_on_device="yes"), gpu)
    stage.can_place_data = True
    assert data_device(stage, LoopConfig(data_on_device="yes"), gpu) == gpu


def _unet_stage(device="cpu"):
    """A real U-Net stage on random latents and contexts (a tiny diffusers U-Net)."""
    from latentdiff.config import ScheduleConfig
    from latentdiff.models.factory import UNetConfig
    from latentdiff.train.config import UNetStage
    from latentdiff.train.stages import UNetTrainStage

    class _Text(torch.nn.Module):  # stands in for the frozen text encoder: a fixed embedding
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 16)

        def forward(self, ids):
            return type("O", (), {"last_hidden_state": self.emb(ids)})()

    torch.manual_seed(0)
    cfg = UNetStage(model=UNetConfig(block_out_channels=(16, 16), attention=(False, True), norm_num_groups=8,
                                     attention_head_dim=8, cross_attention_dim=16, sample_size=8),
                    schedule=ScheduleConfig(), cond_dropout=0.25)
    mean, std = torch.randn(24, 4, 8, 8), torch.rand(24, 4, 8, 8) * 0.1
    tokens = torch.randint(1, 64, (24, 6))
    tokens[::3] = tokens[0]  # repeated captions, as in real data
    return UNetTrainStage(cfg, mean, std, tokens, torch.zeros(6, dtype=torch.long), _Text(), 1.0,
                          torch.device(device))


@pytest.mark.slow
def test_compiled_unet_trains_like_eager(tmp_path):
    cfg = dict(steps=4, batch_size=8, checkpoint_every=4, warmup_steps=1, lr=1e-3)
    losses = {}
    for mode in ("none", "default"):
        stage = _unet_stage()
        run_stage(stage, LoopConfig(compile=mode, log_every=1, **cfg), tmp_path / mode, 0, Accelerator(cpu=True),
                  False, {})
        losses[mode] = [json.loads(x)["loss"] for x in (tmp_path / mode / "log.jsonl").read_text().splitlines()]
        w = load_file(str(tmp_path / mode / "checkpoints" / "ckpt-0000004" / "model.safetensors"))
        assert not any(k.startswith("_orig_mod") for k in w)  # compiled in place: the same weight names
        losses[mode + "_w"] = w
    assert losses["none"] == pytest.approx(losses["default"], rel=1e-3, abs=1e-5)
    eager, compiled = losses["none_w"], losses["default_w"]
    assert max((eager[k] - compiled[k]).abs().max().item() for k in eager) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_data_on_the_gpu_resumes_exactly(tmp_path):
    cfg = dict(batch_size=8, checkpoint_every=2, warmup_steps=1, lr=1e-3, data_on_device="yes", sync_every=3)
    ref = _unet_stage("cuda")
    run_stage(ref, LoopConfig(steps=6, **cfg), tmp_path / "ref", 0, Accelerator(), False, {})
    first = _unet_stage("cuda")
    run_stage(first, LoopConfig(steps=4, **cfg), tmp_path / "cut", 0, Accelerator(), False, {})
    assert first.data_device.type == "cuda" and first.mean.is_cuda
    run_stage(_unet_stage("cuda"), LoopConfig(steps=6, **cfg), tmp_path / "cut", 0, Accelerator(), True, {})
    a = load_file(str(tmp_path / "ref" / "checkpoints" / "ckpt-0000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "ckpt-0000006" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_time_limit_stops_with_a_checkpoint_and_resume_goes_on(tmp_path, monkeypatch):
    """A run past its time limit checkpoints, finishes with the weights so far, and a resume without the
    limit ends where an uninterrupted run ends."""
    import latentdiff.train.loop as loop

    clock = iter(range(0, 10_000, 10))  # each reading of the clock is 10 s later
    monkeypatch.setattr(loop.time, "time", lambda: float(next(clock)))
    cfg = dict(batch_size=4, checkpoint_every=100, warmup_steps=1, lr=1e-2, log_every=1)
    limited = _Stage()
    run_stage(limited, LoopConfig(steps=40, time_limit_s=45, **cfg), tmp_path / "cut", 0, Accelerator(cpu=True),
              False, {})
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert 1 <= metrics["steps"] < 40
    assert (tmp_path / "cut" / "checkpoints" / f"ckpt-{metrics['steps']:07d}").is_dir()
    monkeypatch.undo()
    resumed = _Stage()
    run_stage(resumed, LoopConfig(steps=40, **cfg), tmp_path / "cut", 0, Accelerator(cpu=True), True, {})
    ref = _Stage()
    run_stage(ref, LoopConfig(steps=40, **cfg), tmp_path / "ref", 0, Accelerator(cpu=True), False, {})
    assert all(torch.equal(a, b) for a, b in zip(_weights(resumed.model), _weights(ref.model)))


def test_channels_last_trains_like_contiguous(tmp_path):
    losses = {}
    for cl in (False, True):
        stage = _unet_stage()
        run_stage(stage, LoopConfig(steps=4, batch_size=8, checkpoint_every=4, warmup_steps=1, log_every=1,
                                    channels_last=cl), tmp_path / str(cl), 0, Accelerator(cpu=True), False, {})
        losses[cl] = [json.loads(x)["loss"] for x in (tmp_path / str(cl) / "log.jsonl").read_text().splitlines()]
        if cl:
            conv = next(m for m in stage.model.modules() if isinstance(m, torch.nn.Conv2d))
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert losses[False] == pytest.approx(losses[True], rel=1e-4, abs=1e-6)


def test_a_failing_compile_falls_back_to_eager(tmp_path, monkeypatch, capsys):
    """A compiler failure costs a message, not the run (on a leased GPU the run is what matters)."""
    def broken(self, *args, **kwargs):  # what a dynamo/inductor failure looks like at the first call
        def call(*a, **k):
            raise RuntimeError("inductor: simulated backend failure")
        self._compiled_call_impl = call

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    cfg = dict(steps=3, batch_size=4, checkpoint_every=3, warmup_steps=1, lr=1e-2, log_every=1)
    stage = _Stage()
    run_stage(stage, LoopConfig(compile="default", **cfg), tmp_path / "c", 0, Accelerator(cpu=True), False, {})
    assert "torch.compile failed (RuntimeError: inductor: simulated backend failure); training without it" in \
        capsys.readouterr().err
    ref = _Stage()
    run_stage(ref, LoopConfig(**cfg), tmp_path / "e", 0, Accelerator(cpu=True), False, {})
    assert all(torch.equal(a, b) for a, b in zip(_weights(stage.model), _weights(ref.model)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vae_and_clip_data_on_the_gpu_resume_exactly(tmp_path):
    from latentdiff.models.factory import ImageTowerConfig, TextConfig, VAEConfig
    from latentdiff.train.config import ClipStage, VAEStage
    from latentdiff.train.stages import ClipTrainStage, VAETrainStage

    torch.manual_seed(0)
    images, tokens = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8), torch.randint(1, 400, (32, 8))
    cuda = torch.device("cuda")

    def vae():
        torch.manual_seed(1)
        return VAETrainStage(VAEStage(model=VAEConfig(block_out_channels=(8, 8), norm_num_groups=4), crop=16),
                             images, images[:4], cuda)

    def clip():
        torch.manual_seed(1)
        cfg = ClipStage(text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                        projection_dim=32, max_length=8),
                        image=ImageTowerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                               patch_size=16, image_size=32))
        return ClipTrainStage(cfg, images, tokens, images[:4], tokens[:4], cuda)

    loop = dict(batch_size=8, checkpoint_every=2, warmup_steps=1, lr=1e-3, data_on_device="yes", sync_every=2)
    for make in (vae, clip):
        ref, name = make(), make().name
        run_stage(ref, LoopConfig(steps=4, **loop), tmp_path / name / "ref", 0, Accelerator(), False, {})
        assert ref.data_device.type == "cuda" and ref.images.is_cuda
        run_stage(make(), LoopConfig(steps=2, **loop), tmp_path / name / "cut", 0, Accelerator(), False, {})
        run_stage(make(), LoopConfig(steps=4, **loop), tmp_path / name / "cut", 0, Accelerator(), True, {})
        a = load_file(str(tmp_path / name / "ref" / "checkpoints" / "ckpt-0000004" / "model.safetensors"))
        b = load_file(str(tmp_path / name / "cut" / "checkpoints" / "ckpt-0000004" / "model.safetensors"))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name


def test_a_checkpoint_of_the_per_tensor_adamw_resumes_with_the_fused_one(tmp_path, monkeypatch):
    """Checkpoints written before the loop used the fused AdamW (the shipped model's run) store
    ``fused: None`` in their groups; resuming must keep the fused update (it alone takes ``found_inf``)."""
    import latentdiff.train.loop as loop

    cfg = LoopConfig(steps=8, batch_size=4, checkpoint_every=4, warmup_steps=1, lr=1e-2)
    with pytest.raises(_Stop):
        run_stage(_Stage(), cfg, tmp_path / "old", 0, Accelerator(cpu=True), False, {}, on_step=_stop_at(4))
    state_file = tmp_path / "old" / "checkpoints" / "ckpt-0000004" / "state.json"
    state = json.loads(state_file.read_text())
    for group in state["optimizer"]["param_groups"]:  # what the old loop's AdamW wrote
        group.update(fused=None, foreach=None)
    state_file.write_text(json.dumps(state))
    made, fused_maker = [], loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda model, c, *a: made.append(fused_maker(model, c, *a)) or made[-1])
    resumed = _Stage()
    run_stage(resumed, cfg, tmp_path / "old", 0, Accelerator(cpu=True), True, {})
    assert made[0].param_groups[0]["fused"] is True
    opt = load_file(str(tmp_path / "old" / "checkpoints" / "ckpt-0000008" / "optimizer.safetensors"))
    assert {float(v) for k, v in opt.items() if k.endswith(".step")} == {8.0}  # Adam's count went on
    ref = _Stage()
    run_stage(ref, cfg, tmp_path / "ref", 0, Accelerator(cpu=True), False, {})
    assert all(torch.equal(a, b) for a, b in zip(_weights(resumed.model), _weights(ref.model)))


class _Stop(Exception):
    pass


def _stop_at(n: int):
    """An ``on_step`` that kills the run after step ``n`` (its checkpoint written)."""
    def hook(step: int) -> None:
        if step == n:
            raise _Stop
    return hook


def test_ctrl_c_checkpoints_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    """The first SIGINT (or SIGTERM) stops at the next step with a checkpoint; --resume finishes the run
    exactly as if it had not stopped, and the previous signal handlers are back afterwards."""
    import os
    import signal

    from latentdiff.train.loop import TrainingInterrupted

    cfg = LoopConfig(steps=12, batch_size=4, checkpoint_every=100, warmup_steps=1, lr=1e-2)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, at in ((signal.SIGINT, 3), (signal.SIGTERM, 7)):
        with pytest.raises(TrainingInterrupted, match=f"interrupted at step {at + 1}; checkpoint .*ckpt-{at + 1:07d}"):
            run_stage(_Stage(), cfg, tmp_path / "cut", 0, Accelerator(cpu=True), at > 3, {},
                      on_step=lambda n, sig=sig, at=at: os.kill(os.getpid(), sig) if n == at else None)
        assert {s: signal.getsignal(s) for s in before} == before
    assert not (tmp_path / "cut" / "final").exists()  # stopped, not finished
    resumed, ref = _Stage(), _Stage()
    run_stage(resumed, cfg, tmp_path / "cut", 0, Accelerator(cpu=True), True, {})
    run_stage(ref, cfg, tmp_path / "ref", 0, Accelerator(cpu=True), False, {})
    assert all(torch.equal(a, b) for a, b in zip(_weights(resumed.model), _weights(ref.model)))


def test_an_interrupted_training_command_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    import latentdiff.commands.train as command
    from latentdiff.cli import main
    from latentdiff.train.loop import TrainingInterrupted

    def interrupted(args):
        raise TrainingInterrupted("unet: interrupted at step 5; checkpoint X written, --resume goes on from there")

    monkeypatch.setattr(command, "run", interrupted)
    assert main(["train", "configs/tiny.yaml"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["latentdiff train: error: unet: interrupted at step 5; checkpoint X written, --resume goes on "
                   "from there"]
