"""Reward fine-tuning (``latentdiff finetune --reward``): exact per-step log-probabilities of the policy
sampler, the policy-gradient estimator on a toy MDP with a known optimum, resume after SIGKILL, refused
NaN/inf rewards, one-line errors for bad rewards, the LoRA file read by ``generate --lora`` and diffusers,
the built-in rewards, and the docs' snippets. Tiny models, seconds each."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentdiff.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The CLI's error message: exactly one line, no traceback (a progress bar already on screen may precede
    it on stderr: ``\r``-separated, without a newline)."""
    assert "Traceback" not in err and err.count("latentdiff finetune: error: ") == 1, err
    return err.split("latentdiff finetune: error: ")[1].split("\n")[0]


def reward_args(model, out, *extra):
    """A small reward run on a tiny model: 4 trajectories (2 prompts x 2) of 3 steps per epoch, 2 per step."""
    return ["finetune", "--model", model, "--out", out, "--samples-per-epoch", 4, "--images-per-prompt", 2,
            "--batch-size", 2, "--sample-steps", 3, "--device", "cpu", "--validation-prompts", 0, *extra]


# --- the policy: exact log-probabilities ------------------------------------------------------------


def independent_step(schedule, taus, j, x, eps, eta):
    """Step j of the chain by hand from the model's ᾱ (not the respaced schedule): DDIM's mean and σ with η."""
    K = len(taus)
    t, prev = taus[K - 1 - j], taus[K - 2 - j] if j < K - 1 else None
    ab = schedule.alphas_bar[t].double()
    ab_prev = schedule.alphas_bar[prev].double() if prev is not None else torch.tensor(1.0, dtype=torch.float64)
    var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    x0 = (x.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - var).sqrt() * eps.double()
    return mean, var.sqrt()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler, eta", [("ddim", 1.0), ("ddpm", 1.0), ("ddim", 0.5)])
def test_step_log_probs_equal_an_independent_gaussian_density(sampler, eta, prediction):
    """Every recorded log π(x_{t−1} | x_t) equals log N(x_{t−1}; μ, σ²I) computed here with
    torch.distributions from the raw U-Net output (v converted by hand), at guidance 3; the last step is
    the deterministic x̂_0."""
    from conftest import build_tiny_pipeline

    from latentdiff.conditioning import unet_model
    from latentdiff.diffusion.guidance import classifier_free_guidance
    from latentdiff.diffusion.policy import make_chain, sample_trajectories
    from latentdiff.diffusion.sampling import seeded_generators

    pipe = build_tiny_pipeline(prediction=prediction)
    prompts = ["a red circle", "a blue square"]
    cond, uncond = pipe.conditioning(prompts), pipe.conditioning([""] * 2)
    denoiser = classifier_free_guidance(unet_model(pipe.unet, pipe.schedule), cond, uncond, 3.0)
    chain = make_chain(pipe.schedule, 4, sampler, eta)
    gens = seeded_generators([7, 8])
    x_T = pipe.initial_latents([7, 8], 32, 32, gens)
    states, log_probs = sample_trajectories(denoiser, chain, x_T, gens)
    assert states.shape == (2, 5, 4, 8, 8) and log_probs.shape == (2, 3)

    def raw_eps(x, t):  # guided ε from the U-Net's raw output, converted here
        both = torch.cat([uncond.context, cond.context])
        out = pipe.unet(torch.cat([x, x]), torch.full((4,), t), encoder_hidden_states=both).sample.double()
        if prediction == "v_prediction":  # ε = √(1−ᾱ) x_t + √ᾱ v
            ab = pipe.schedule.alphas_bar[t].double()
            out = (1 - ab).sqrt() * torch.cat([x, x]).double() + ab.sqrt() * out
        u, c = out.chunk(2)
        return u + 3.0 * (c - u)

    with torch.no_grad():
        for j in range(chain.steps):
            x = states[:, j]
            mean, std = independent_step(pipe.schedule, chain.timesteps, j, x, raw_eps(x, chain.timesteps[-1 - j]), eta)
            if j == chain.steps - 1:
                assert std == 0 and torch.allclose(states[:, j + 1].double(), mean, atol=1e-4)
                continue
            expected = torch.distributions.Normal(mean, std).log_prob(states[:, j + 1].double()).sum((1, 2, 3))
            assert torch.allclose(log_probs[:, j].double(), expected, rtol=1e-5, atol=1e-2), (j, log_probs[:, j],
                                                                                              expected)
            assert expected.abs().min() > 10  # a real density over 256 dimensions, not a trivial zero


def test_ddpm_step_and_ddim_with_eta_1_are_the_same_chain():
    from conftest import build_tiny_pipeline

    from latentdiff.conditioning import unet_model
    from latentdiff.diffusion.guidance import classifier_free_guidance
    from latentdiff.diffusion.policy import make_chain, sample_trajectories
    from latentdiff.diffusion.sampling import seeded_generators

    pipe = build_tiny_pipeline()
    denoiser = classifier_free_guidance(unet_model(pipe.unet, pipe.schedule), pipe.conditioning(["a red circle"]),
                                        None, 1.0)
    runs = {}
    for sampler in ("ddpm", "ddim"):
        gens = seeded_generators([3])
        runs[sampler] = sample_trajectories(denoiser, make_chain(pipe.schedule, 5, sampler, 1.0),
                                            pipe.initial_latents([3], 32, 32, gens), gens)
    assert torch.allclose(runs["ddpm"][0], runs["ddim"][0], atol=1e-4)
    assert torch.allclose(runs["ddpm"][1], runs["ddim"][1], rtol=1e-4, atol=1e-2)


def test_gaussian_kl_is_the_kl_of_the_two_step_distributions():
    from latentdiff.diffusion.policy import gaussian_kl

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    std = torch.full((3, 1, 1, 1), 0.3)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(p, std.expand_as(p)),
                                                 torch.distributions.Normal(q, std.expand_as(q))).sum((1, 2, 3))
    assert torch.allclose(gaussian_kl(p, q, std), expected, rtol=1e-5)


# --- the estimator on a toy MDP with a known optimum --------------------------------------------------

LO, HI, SIGMA = 1.0, 2.0, 0.5  # reward 1 for an action in [LO, HI]; the policy is N(θ, σ²)


def _phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_policy_gradient_matches_the_analytic_gradient_on_a_gaussian_policy():
    """J(θ) = Φ((HI−θ)/σ) − Φ((LO−θ)/σ), so ∇J = (φ((LO−θ)/σ) − φ((HI−θ)/σ))/σ. The DDPO_SF loss's gradient
    (through the library's Gaussian log-density) estimates it within 4 standard errors, and DDPO_IS at
    ratio 1 has the same gradient."""
    from latentdiff.diffusion.policy import gaussian_log_prob
    from latentdiff.train.ddpo import is_loss, sf_loss

    theta0, n = 0.3, 200_000
    theta = torch.tensor(theta0, requires_grad=True)
    a = theta0 + SIGMA * torch.randn(n, generator=torch.Generator().manual_seed(0))
    r = ((a >= LO) & (a <= HI)).float()
    log_prob = gaussian_log_prob(a[:, None], theta.expand(n)[:, None], torch.tensor(SIGMA))[:, None]  # (n, 1)
    (grad_sf,) = torch.autograd.grad(sf_loss(log_prob, r), theta, retain_graph=True)
    (grad_is,) = torch.autograd.grad(is_loss(log_prob, log_prob.detach(), r, 0.2), theta)
    analytic = (_phi((LO - theta0) / SIGMA) - _phi((HI - theta0) / SIGMA)) / SIGMA
    per_sample = r * (a - theta0) / SIGMA**2  # r ∇_θ log N(a; θ, σ²)
    stderr = per_sample.std().item() / math.sqrt(n)
    assert abs(-grad_sf.item() - analytic) < 4 * stderr, (-grad_sf.item(), analytic, stderr)
    assert stderr < 0.05 * analytic  # the check is tight enough to catch a wrong factor
    assert torch.allclose(grad_is, grad_sf, rtol=1e-5)


def test_training_the_toy_policy_reaches_the_optimum():
    """DDPO_IS with normalised advantages, 2 steps per epoch of 64 samples, moves θ from 0 to the optimum
    θ* = 1.5 (the interval's centre, for a fixed σ)."""
    from latentdiff.diffusion.policy import gaussian_log_prob
    from latentdiff.train.ddpo import is_loss, per_prompt_advantages

    theta = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    gen, sigma, history = torch.Generator().manual_seed(1), torch.tensor(SIGMA), []
    for _ in range(300):
        with torch.no_grad():
            a = theta + SIGMA * torch.randn(64, generator=gen)
            old = gaussian_log_prob(a[:, None], theta.expand(64)[:, None], sigma)[:, None]
        adv = per_prompt_advantages(((a >= LO) & (a <= HI)).float(), torch.zeros(64, dtype=torch.long))
        for _ in range(2):
            loss = is_loss(gaussian_log_prob(a[:, None], theta.expand(64)[:, None], sigma)[:, None], old, adv, 0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append(theta.item())
    assert history[0] < 0.5
    assert abs(np.mean(history[-50:]) - 1.5) < 0.1, history[-10:]


def test_per_prompt_advantages_normalise_within_each_prompt():
    from latentdiff.train.ddpo import per_prompt_advantages

    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 30.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # prompt 2 drawn once: the batch's statistics
    a = per_prompt_advantages(r, groups)
    for g in (0, 1):
        assert abs(a[groups == g].mean()) < 1e-5 and abs(a[groups == g].std(unbiased=False) - 1) < 1e-3
    assert torch.allclose(a[6], ((r[6] - r.mean()) / r.std(unbiased=False)).float(), atol=1e-4)
    clipped = per_prompt_advantages(torch.tensor([0.0, 100.0]), torch.zeros(2, dtype=torch.long), clip=0.5)
    assert clipped.abs().max() == 0.5


# --- the stage on a tiny model ------------------------------------------------------------------------


def tiny_stage(tmp_path, kl=0.0, method="lora"):
    from conftest import build_tiny_pipeline

    from latentdiff.train.reward_finetune import RewardConfig, RewardStage, reward_loop
    from latentdiff.train.rewards import load_reward

    cfg = RewardConfig(reward="compressibility", out=str(tmp_path), samples_per_epoch=4, images_per_prompt=2,
                       sample_steps=3, kl=kl, method=method, validation_prompts=0,
                       loop=reward_loop(method, 1, 4, batch_size=2))
    pool = ["a red circle", "a blue square", "a green triangle"]
    return RewardStage(cfg, build_tiny_pipeline(), load_reward(cfg.reward), pool, torch.device("cpu"), 0, tmp_path)


def test_training_recomputes_the_recorded_log_probs(tmp_path):
    """The first step of an epoch sees the policy that sampled it: its log-probabilities, recomputed in a
    different batch (2 trajectories, all steps at once), equal the recorded ones (importance ratio 1)."""
    from latentdiff.diffusion.policy import action_log_prob, trajectory_steps

    stage = tiny_stage(tmp_path)
    stage.loss(stage.model, torch.tensor([3, 1]), torch.Generator().manual_seed(0))
    ep = stage.epoch
    rows = torch.tensor([3, 1])
    x_t, k, x_prev = trajectory_steps(ep.states[rows], stage.chain)
    cond = stage._conditioning([ep.prompts[int(i)] for i in rows.repeat_interleave(stage.chain.actions)])
    with torch.no_grad():
        new = action_log_prob(stage._denoiser(stage.model, cond), stage.chain, x_t, k, x_prev).view(2, -1)
    assert torch.allclose(new, ep.log_probs[rows], rtol=1e-5, atol=1e-2), (new, ep.log_probs[rows])
    assert ep.prompts[0] == ep.prompts[1] and ep.prompts[2] == ep.prompts[3]  # images_per_prompt = 2 in a row
    assert (tmp_path / "trajectories" / "epoch000000.safetensors").is_file() and (tmp_path / "rewards.png").is_file()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kl_to_the_base_is_zero_at_the_start_and_grows_with_the_update(tmp_path, method):
    """DPOK's KL compares with the frozen base: the LoRA layers switched off (or the full fine-tune's copy)."""
    from latentdiff.diffusion.policy import action_distribution

    stage = tiny_stage(tmp_path, kl=0.1, method=method)
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([2, 1])
    cond = stage._conditioning(["a red circle", "a blue square"])

    def kl():
        with torch.no_grad():
            mean, std = action_distribution(stage._denoiser(stage.model, cond), stage.chain, x_t, k)
            return stage._kl(cond, x_t, k, mean, std)

    assert kl().abs().max() < 1e-6
    with torch.no_grad():
        for name, p in stage.model.named_parameters():
            if p.requires_grad and (method == "full" or "lora_B" in name):
                p.add_(0.05 * torch.randn_like(p))
    assert kl().min() > 1e-3
    assert kl().min() > 1e-3  # the LoRA layers are on again after the base model's pass


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_run(tiny_model_dir, tmp_path_factory):
    """One small reward run (module-scoped) whose LoRA file the tests below read: 2 epochs, a high rate so
    the LoRA changes the images."""
    out = tmp_path_factory.mktemp("reward") / "run"
    code = main([str(a) for a in reward_args(tiny_model_dir, out, "--reward", "compressibility", "--epochs", 2,
                                             "--lr", "0.05", "--validation-prompts", 1)])
    assert code == 0
    return out


def test_a_run_writes_the_lora_the_reward_log_the_curve_and_validation_grids(reward_run):
    rows = [json.loads(ln) for ln in (reward_run / "rewards.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["n"] == 4 and r["std"] >= 0 for r in rows)
    assert all(r["mean"] < 0 for r in rows)  # compressibility: minus the JPEG size in kB
    from PIL import Image

    with Image.open(reward_run / "rewards.png") as curve:
        assert curve.size[0] > 300
    for step in (0, 4):  # before and after: one prompt x 4 seeds each
        meta = json.loads((reward_run / "val" / f"step{step:07d}.json").read_text())
        assert "reward_mean" in meta and (reward_run / "val" / f"step{step:07d}.png").is_file()
    identity = json.loads((reward_run / "reward.json").read_text())
    assert identity["reward"] == "compressibility" and identity["objective"] == "is"


def test_the_lora_file_loads_with_generate_lora_and_in_diffusers(reward_run, tiny_model_dir, tmp_path, capsys):
    from test_finetune import lora_three_ways

    lora = reward_run / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and all("lora" in k for k in load_file(str(lora)))
    ours, base, theirs = lora_three_ways(capsys, tiny_model_dir, reward_run, tmp_path)
    assert np.abs(ours - theirs).max() <= 2
    assert np.abs(ours - base).max() > 10  # the reward run did change the model


def test_resume_after_sigkill_continues_the_same_run(tiny_model_dir, tmp_path):
    """A run killed (SIGKILL) after its third optimiser step, in the middle of an epoch, and resumed ends
    with the LoRA weights and the reward log of an uninterrupted run."""
    slow = tmp_path / "slow.py"  # a reward that takes a while, so the run can be killed in the middle
    slow.write_text("import time\n\ndef reward(images, prompts):\n    time.sleep(0.4)\n"
                    "    return -images.astype(float).mean(axis=(1, 2, 3)) / 255\n")

    def common(out):
        return [str(a) for a in reward_args(tiny_model_dir, out, "--reward", f"{slow}:reward", "--epochs", 4, "--lr",
                                            "0.02", "--checkpoint-every", 1)]

    def cli(*args):  # every part in its own process with one thread, so all see the same float reductions
        return subprocess.run([sys.executable, "-m", "latentdiff.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    done = cli(*common(tmp_path / "whole"))
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", *common(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and latest.read_text().strip() >= "ckpt-0000003"):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = latest.read_text().strip()
    assert at_kill < "ckpt-0000008", "the run finished before it could be killed"
    done = cli(*common(killed), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    whole = load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors"))
    resumed = load_file(str(killed / "pytorch_lora_weights.safetensors"))
    assert whole.keys() == resumed.keys()
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) <= 1e-6, at_kill
    assert max(v.abs().max().item() for k, v in whole.items() if ".lora.up." in k) > 0  # it did train (B starts at 0)
    means = [[json.loads(ln)["mean"] for ln in (d / "rewards.jsonl").read_text().splitlines()]
             for d in (tmp_path / "whole", killed)]
    assert len(means[0]) == 4 and np.allclose(means[0], means[1], atol=1e-9)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_non_finite_reward_is_refused(bad, tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text(f"import numpy as np\n\ndef reward(images, prompts):\n    r = np.ones(len(images))\n"
                 f"    r[1] = float('{bad}')\n    return r\n")
    code, _, err = run(capsys, *reward_args(tiny_model_dir, tmp_path / "out", "--reward", f"{f}:reward", "--epochs", 1))
    message = one_line_error(err)
    assert code == 2 and f"{bad} for image 1" in message and "must be finite" in message, err
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


def test_check_rewards_refuses_nan_inf_and_wrong_shapes():
    from latentdiff.errors import UserError
    from latentdiff.train.rewards import check_rewards

    prompts = ["a", "b", "c"]
    assert check_rewards(torch.tensor([1.0, 2.0, 3.0]), 3, "r", prompts).dtype == np.float64
    for values, words in (([1.0, math.inf, 0.0], "inf for image 1"), ([math.nan] * 3, "3 of 3"),
                          ([1.0, 2.0], r"shape \(2,\) for 3 images"), ([[1.0], [2.0], [3.0]], r"shape \(3, 1\)"),
                          (["x", "y", "z"], "expected 3 numbers"), (None, r"shape \(\)")):
        with pytest.raises(UserError, match=words):
            check_rewards(values, 3, "r", prompts)


USER_FILES = {
    "good.py": "CONSTANT = 3\n\ndef reward(images, prompts):\n    return [0.0] * len(images)\n",
    "shape.py": "def reward(images, prompts):\n    return [1.0, 2.0, 3.0]\n",
    "raises.py": "def reward(images, prompts):\n    raise ValueError('boom')\n",
    "broken.py": "import not_a_module_anywhere\n",
}


@pytest.mark.parametrize("spec, words", [
    ("nope", "unknown reward; expected one of scorer, scorer-all, compressibility, incompressibility"),
    ("no_such_module_xyz:reward", "cannot import module 'no_such_module_xyz'"),
    ("missing.py:reward", "file not found"),
    ("good.py:missing", "has no function 'missing'"),
    ("good.py:CONSTANT", "is a int, not a function"),
    ("broken.py:reward", "failed (ModuleNotFoundError"),
    ("shape.py:reward", "returned shape (3,) for 4 images"),
    ("raises.py:reward", "raised ValueError: boom (raises.py line 2)"),
])
def test_bad_rewards_are_one_line_errors(spec, words, tiny_model_dir, tmp_path, capsys, monkeypatch):
    for name, text in USER_FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *reward_args(tiny_model_dir, tmp_path / "out", "--reward", spec, "--epochs", 1))
    assert code == 2 and words in one_line_error(err), err


def test_a_user_module_from_the_current_folder_is_used(tiny_model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "my_brightness.py").write_text("def brightness(images, prompts):\n"
                                               "    return images.mean(axis=(1, 2, 3))\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *reward_args(tiny_model_dir, tmp_path / "out", "--reward", "my_brightness:brightness",
                                              "--epochs", 1))
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "rewards.jsonl").read_text())["mean"] > 0


@pytest.mark.parametrize("flags, words", [
    (["--data", "x"], "--data: not used with --reward"),
    (["--steps", "3"], "--steps: not used with --reward (reward fine-tuning samples its own images); use --epochs"),
    (["--batch-size", "3"], "--samples-per-epoch 4: expected a multiple of --batch-size 3"),
    (["--eta", "0"], "--eta 0: expected 0 < eta <= 1"),
    (["--sample-steps", "1"], "--sample-steps 1: must be at least 2"),
    (["--timestep-fraction", "2"], "--timestep-fraction 2: expected 0 < F <= 1"),
])
def test_bad_reward_flags_are_one_line_errors(flags, words, tiny_model_dir, tmp_path, capsys):
    argv = reward_args(tiny_model_dir, tmp_path / "out", "--reward", "compressibility", *flags)  # the last flag wins
    code, _, err = run(capsys, *argv)
    assert code == 2 and words in one_line_error(err), err


def test_finetune_needs_data_or_reward(tmp_path, capsys):
    code, _, err = run(capsys, "finetune", "--out", tmp_path / "out")
    assert code == 2 and "one of --data DIR (your images) or --reward NAME" in err


# --- prompts and built-in rewards ---------------------------------------------------------------------


def test_default_prompts_are_training_combinations_never_held_out():
    from latentdiff.data.shapes import HELD_OUT_PAIRS, HELD_OUT_TRIPLES, held_out_prompts, training_prompts
    from latentdiff.eval.scorer import parse_caption

    prompts = training_prompts(256)
    assert len(set(prompts)) == 256 and not set(prompts) & set(held_out_prompts())
    assert training_prompts(256) == prompts  # a fixed order
    kinds = {"one": 0, "relation": 0}
    for p in prompts:
        spec = parse_caption(p)
        assert all((o.colour, o.shape, o.position) not in HELD_OUT_TRIPLES for o in spec.objects)
        pair = {(o.colour, o.shape) for o in spec.objects}
        assert not any(a in pair and b in pair for a, b in HELD_OUT_PAIRS)
        kinds["one" if len(spec.objects) == 1 else "relation"] += 1
        if len(spec.objects) == 1:
            assert spec.objects[0].position and spec.objects[0].size  # fully specified
        else:
            assert spec.relation is not None
    assert min(kinds.values()) > 80  # both position and relation prompts


def test_prompts_file_is_checked_before_the_model_loads(tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("# my prompts\na red circle\n\na photo of a cat\n")
    code, _, err = run(capsys, "finetune", "--reward", "scorer", "--prompts", f, "--out", tmp_path / "o",
                       "--model", tmp_path / "no-model")
    assert code == 2 and err.count("\n") == 1
    assert one_line_error(err).startswith(f"--prompts {f} line 4: the scorer reward scores shapes-world prompts only")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    code, _, err = run(capsys, "finetune", "--reward", "compressibility", "--prompts", tmp_path / "empty.txt",
                       "--out", tmp_path / "o")
    assert code == 2 and "no prompts" in err


def test_scorer_rewards_count_the_requested_attributes():
    from latentdiff.data.shapes import Scene, ShapeObject, render
    from latentdiff.train.rewards import load_reward

    scene = Scene(20, (ShapeObject("circle", "red", "large", "top left", (12.0, 12.0), (1, 1, 23, 23)),))
    image = render(scene)[0][None]  # (1, 64, 64, 3)
    share, all_or_nothing = load_reward("scorer"), load_reward("scorer-all")
    assert share(image, ["a large red circle in the top left"])[0] == 1.0
    assert share(image, ["a large blue circle in the top left"])[0] == pytest.approx(4 / 5)  # colour wrong
    assert share(image, ["a small blue circle in the center"])[0] == pytest.approx(2 / 5)  # shape and count right
    assert share(image, ["a red circle left of a blue square"])[0] == pytest.approx(2 / 6)  # + relation, count
    assert all_or_nothing(image, ["a red circle"])[0] == 1.0
    assert all_or_nothing(image, ["a large blue circle in the top left"])[0] == 0.0


def test_compressibility_prefers_flat_images():
    from latentdiff.train.rewards import load_reward

    flat = np.full((1, 64, 64, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    images = np.concatenate([flat, noise])
    c, i = load_reward("compressibility")(images, ["", ""]), load_reward("incompressibility")(images, ["", ""])
    assert c[0] > c[1] and np.allclose(c, -i) and 0 < i[0] < i[1]


# --- docs/finetune.md: the snippets of "Reward fine-tuning" run as written ----------------------------


def doc_snippets() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the "Reward fine-tuning" section of docs/finetune.md."""
    text = (ROOT / "docs" / "finetune.md").read_text()
    section = text.split("\n## Reward fine-tuning\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", section, flags=re.DOTALL)


def run_doc_snippets(folder: Path, model: Path | None) -> None:
    """Python blocks whose first line is ``# FILE.py`` are written to FILE.py; other Python blocks run; shell
    lines run as ``latentdiff`` commands (in this process), with ``--model`` added when ``model`` is given."""
    for language, code in doc_snippets():
        if language == "python":
            first = code.splitlines()[0]
            if re.fullmatch(r"# [\w/]+\.py", first):
                (folder / first[2:]).write_text(code)
            else:
                subprocess.run([sys.executable, "-c", code], cwd=folder, check=True, timeout=300)
            continue
        for line in code.splitlines():
            argv = shlex.split(line, comments=True)
            if not argv:
                continue
            assert argv[0] == "latentdiff", line
            extra = ["--model", str(model)] if model is not None and argv[1] in ("finetune", "generate") else []
            assert main(argv[1:] + extra) == 0, line


def test_doc_snippets_run_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    assert [lang for lang, _ in doc_snippets()] == ["python", "sh"]
    monkeypatch.chdir(tmp_path)
    run_doc_snippets(tmp_path, tiny_model_dir)


@pytest.mark.slow
def test_doc_snippets_run_as_written_on_the_default_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_doc_snippets(tmp_path, None)
