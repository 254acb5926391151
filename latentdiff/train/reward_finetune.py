"""Reward fine-tuning: the denoising chain as an MDP, trained by policy gradient (DDPO, optionally DPOK).

    latentdiff finetune --reward NAME --out OUT [--epochs N] [--samples-per-epoch N] [--prompts FILE] ...

Sampling is an MDP (:mod:`latentdiff.diffusion.policy`): state (x_t, t, c), action x_{t−1} ~ p_θ(x_{t−1} | x_t, c),
a Gaussian with an exact log-probability, and the reward r(x_0, c) (:mod:`latentdiff.train.rewards`) at the
end. One epoch (Black et al. 2023, DDPO, Algorithm 1):

1. draw P = samples_per_epoch / images_per_prompt prompts (``--prompts FILE``, or the shapes world's training
   combinations, :func:`latentdiff.data.shapes.training_prompts`, never held-out ones) and images_per_prompt
   trajectories of each from the current policy: the DDPM step or DDIM with η, at the guidance the model is
   used at (classifier-free, :func:`~latentdiff.diffusion.guidance.classifier_free_guidance`), recording
   the log-probability of every step;
2. decode each x_0, score it, and normalise the rewards per prompt into advantages
   (:func:`latentdiff.train.ddpo.per_prompt_advantages`);
3. take samples_per_epoch / batch_size optimiser steps of the DDPO_IS (clipped) or DDPO_SF loss
   (:mod:`latentdiff.train.ddpo`), plus β · KL to the frozen base model with ``kl`` > 0 (DPOK), each on
   batch_size trajectories with all their steps.

It runs on the training loop (:func:`latentdiff.train.loop.run_stage`): a loop step is an optimiser step
and the loop's data epochs are the DDPO epochs (its examples are the epoch's trajectories). The first step
of an epoch samples; the epoch's trajectories are kept in ``OUT/trajectories/``, so a run resumed
from any checkpoint trains on the same trajectories and ends with an uninterrupted run's weights.

``OUT`` receives ``pytorch_lora_weights.safetensors`` (LoRA: diffusers' ``load_lora_weights`` and ``latentdiff
generate --lora`` read it) or ``model/`` (``full``), ``rewards.jsonl`` (one line per epoch: mean, s.d., min,
max), ``rewards.png`` (the reward curve), ``val/`` (a prompt × seed grid before and after, with its reward),
``log.jsonl``, ``checkpoints/``, ``trajectories/`` and ``reward.json`` (the run's identity, checked by
``--resume``).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from latentdiff.config import check_choice, to_dict
from latentdiff.diffusion.policy import POLICY_SAMPLERS
from latentdiff.errors import ConfigError, UserError
from latentdiff.lora import LORA_LAYERS
from latentdiff.train.config import LoopConfig
from latentdiff.train.ddpo import IS_CLIP

OBJECTIVES = ("is", "sf")
SAMPLE_BATCH = 32  # trajectories drawn per forward batch while sampling
IDENTITY_KEYS = ("reward", "objective", "method", "rank", "lora_alpha", "lora_layers", "model_sha256", "prompts_sha256",
                 "samples_per_epoch", "images_per_prompt", "batch_size", "sampler", "eta", "sample_steps", "guidance",
                 "clip_range", "timestep_fraction", "kl", "seed")


def default_batch(objective: str, samples_per_epoch: int) -> int:
    """Trajectories per optimiser step: the whole epoch for DDPO_SF (on-policy, so one step per epoch, as in
    the paper); for DDPO_IS the largest divisor of the epoch up to 8 (several steps per epoch, which the
    importance weights allow)."""
    if objective == "sf":
        return samples_per_epoch
    return max(d for d in range(1, min(8, samples_per_epoch) + 1) if samples_per_epoch % d == 0)


def default_timestep_fraction(objective: str) -> float:
    """Share of each trajectory's steps an optimiser step trains on (DDPO's timestep_fraction; an unbiased
    estimate of the mean over all steps): all for DDPO_IS, a quarter for DDPO_SF, whose step takes the whole
    epoch, so that its memory stays that of an 8-trajectory DDPO_IS step."""
    return 0.25 if objective == "sf" else 1.0


def reward_loop(method: str, epochs: int, samples_per_epoch: int, objective: str = "is",
                batch_size: int | None = None, **overrides) -> LoopConfig:
    """The loop of a reward fine-tune: ``epochs`` × (samples_per_epoch / batch_size) steps, a checkpoint at
    every epoch's end, the loop's cosine decay without warm-up, fp32 (log-probabilities are compared across
    passes)."""
    batch = batch_size or default_batch(objective, samples_per_epoch)
    per_epoch = max(1, samples_per_epoch // batch)
    base = dict(steps=epochs * per_epoch, batch_size=batch, warmup_steps=0, checkpoint_every=per_epoch, log_every=1,
                validate_every=0, keep_checkpoints=2, mixed_precision="no", ema_decay=0.0,
                lr=3e-4 if method == "lora" else 1e-5)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return LoopConfig(**base)


@dataclass(frozen=True)
class RewardConfig:
    reward: str  # a built-in reward or MODULE:FUNCTION (latentdiff.train.rewards)
    out: str
    model: str | None = None  # None: the default model
    model_config: str | None = None
    allow_unsafe_pickle: bool = False
    prompts: str | None = None  # a file, one prompt a line; None: the shapes world's training prompts
    num_prompts: int = 256  # how many shapes-world training prompts make the pool (without ``prompts``)
    method: str = "lora"  # lora | full
    rank: int = 8
    lora_alpha: float | None = None
    lora_layers: str = "attention"
    samples_per_epoch: int = 32
    images_per_prompt: int = 4  # trajectories per prompt in an epoch (the per-prompt baseline)
    objective: str = "is"  # is: DDPO_IS with PPO clipping | sf: DDPO_SF (REINFORCE)
    clip_range: float = IS_CLIP  # ε of the clipped importance ratio
    timestep_fraction: float = 1.0  # share of each trajectory's steps one optimiser step trains on
    kl: float = 0.0  # β of DPOK's KL to the frozen base model; 0: none
    sampler: str = "ddim"  # ddim (with eta) | ddpm
    eta: float = 1.0
    sample_steps: int = 20
    guidance: float | None = None  # None: the model's default guidance
    seed: int = 0
    device: str = "auto"
    validation_prompts: int = 4
    loop: LoopConfig = dataclasses.field(default_factory=lambda: reward_loop("lora", 50, 32))

    def __post_init__(self):
        for name, choices in (("method", ("lora", "full")), ("objective", OBJECTIVES), ("sampler", POLICY_SAMPLERS),
                              ("lora_layers", tuple(LORA_LAYERS)), ("device", ("auto", "cpu", "cuda"))):
            check_choice(self, name, choices)
        checks = ((self.rank >= 1, "rank: expected a positive integer"),
                  (self.images_per_prompt >= 1, "images_per_prompt: expected a positive integer"),
                  (self.samples_per_epoch % self.images_per_prompt == 0,
                   "samples_per_epoch: expected a multiple of images_per_prompt"),
                  (self.samples_per_epoch % self.loop.batch_size == 0,
                   "samples_per_epoch: expected a multiple of the batch size"),
                  (self.loop.steps % self.steps_per_epoch == 0, "loop.steps: expected whole epochs"),
                  (self.sample_steps >= 2, "sample_steps: expected at least 2 (the last step is deterministic)"),
                  (0.0 < self.eta <= 1.0, "eta: expected 0 < eta <= 1 (eta = 0 has no density)"),
                  (self.clip_range > 0, "clip_range: expected a positive number"),
                  (0.0 < self.timestep_fraction <= 1.0, "timestep_fraction: expected 0 < fraction <= 1"),
                  (self.kl >= 0, "kl: expected a number >= 0"), (self.num_prompts >= 1, "num_prompts: expected >= 1"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def steps_per_epoch(self) -> int:
        return self.samples_per_epoch // self.loop.batch_size

    @property
    def epochs(self) -> int:
        return self.loop.steps // self.steps_per_epoch


@dataclass
class Epoch:
    """One epoch's trajectories: N = samples_per_epoch of them, kept on the CPU."""

    index: int
    prompts: list[str]  # (N,)
    states: Tensor  # (N, K + 1, C, h, w): x_{τ_{K−1}} … x_{τ_0}, x_0
    log_probs: Tensor  # (N, K − 1) under the policy that drew them
    rewards: Tensor  # (N,) float64
    advantages: Tensor  # (N,) float32


class RewardStage:
    """The policy-gradient stage the loop runs (module docstring); ``model`` is the U-Net itself."""

    name = "reward"

    def __init__(self, cfg: RewardConfig, base, reward, pool: list[str], device, start_step: int, out: Path):
        from latentdiff.diffusion.policy import make_chain
        from latentdiff.lora import add_lora

        self.cfg, self.base, self.reward, self.pool, self.device = cfg, base, reward, pool, device
        self.out, self.step = out, start_step
        self.guidance = float(base.defaults["guidance"] if cfg.guidance is None else cfg.guidance)
        self.chain = make_chain(base.schedule, cfg.sample_steps, cfg.sampler, cfg.eta)
        self.steps_per_epoch, self.num_examples = cfg.steps_per_epoch, cfg.samples_per_epoch
        self.lora_configs, self.reference = None, None
        if cfg.method == "lora":
            self.lora_configs = add_lora(base.unet, None, cfg.rank, cfg.lora_alpha, cfg.lora_layers)
        else:
            self.reference = copy.deepcopy(base.unet).requires_grad_(False) if cfg.kl else None
            base.unet.requires_grad_(True)
        self.model = base.unet.train()
        self.null = self._conditioning([""])
        self.epoch: Epoch | None = None
        self.validation_prompts = pool[: cfg.validation_prompts]

    # --- the loop's interface ----------------------------------------------------------------------

    def loss(self, model, index: Tensor, generator: torch.Generator) -> Tensor:
        """The loss of optimiser step ``self.step`` (counted here; set to the resumed step at the start) on
        the trajectories ``index`` of its epoch, sampling the epoch first at its first step."""
        epoch, within = divmod(self.step, self.steps_per_epoch)
        self.step += 1
        if self.epoch is None or self.epoch.index != epoch:
            self.epoch = self._collect(model, epoch) if within == 0 else self._load(epoch)
        return self._objective(model, self.epoch, index.cpu(), generator)

    def validate(self, model, step: int, out: Path) -> dict:
        """A prompt × 4 seeds grid drawn as ``latentdiff generate`` draws (the model's sampler and steps, the
        training guidance), to ``val/stepNNNNNNN.png``, and the reward of its images."""
        from latentdiff.pixels import save_grid

        if not self.validation_prompts:
            return {"step": step}
        images = self.base.generate(self.validation_prompts, num_images=4, seed=0, guidance=self.guidance,
                                    batch_size=16)
        pixels = np.stack([np.asarray(im) for im in images])
        save_grid(pixels, len(self.validation_prompts), out / "val" / f"step{step:07d}.png")
        rewards = self.reward(pixels, [p for p in self.validation_prompts for _ in range(4)])
        return {"step": step, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                "validation_prompts": self.validation_prompts}

    def finish(self, model, out: Path) -> Path:
        from latentdiff.lora import save_lora

        if self.lora_configs is not None:
            return save_lora(out, model, None, self.lora_configs)
        self.base.extra["reward_finetune"] = {k: v for k, v in to_dict(self.cfg).items() if k not in ("out", "loop")}
        return self.base.save(out / "model")

    # --- sampling an epoch ---------------------------------------------------------------------------

    def epoch_prompts(self, epoch: int) -> list[str]:
        """The epoch's prompts, each ``images_per_prompt`` times in a row, drawn from the pool by (seed, epoch)."""
        from latentdiff.train.loop import STAGE_IDS, seed_for

        count = self.cfg.samples_per_epoch // self.cfg.images_per_prompt
        rng = np.random.default_rng(seed_for(self.cfg.seed, STAGE_IDS[self.name], epoch, 1))
        picks = rng.choice(len(self.pool), count, replace=count > len(self.pool))
        return [self.pool[int(i)] for i in picks for _ in range(self.cfg.images_per_prompt)]

    @torch.no_grad()
    def _collect(self, model, epoch: int) -> Epoch:
        """Sample the epoch's trajectories with the current policy, score them, and keep them (module docstring).
        Trajectory i starts from (and draws its noise with) a generator seeded by (seed, epoch, i)."""
        from latentdiff.diffusion.sampling import randn
        from latentdiff.train.ddpo import per_prompt_advantages
        from latentdiff.train.loop import STAGE_IDS, seed_for

        prompts = self.epoch_prompts(epoch)
        n, size = len(prompts), self.base.native_size
        gens = [torch.Generator().manual_seed(seed_for(self.cfg.seed, STAGE_IDS[self.name], epoch, 2, i))
                for i in range(n)]
        x_T = randn(self.base.latent_shape(n, size, size), gens, device=self.device)  # (N, C, h, w)
        states, log_probs = self._sample(model, self._conditioning(prompts), x_T, gens)
        rewards = torch.from_numpy(self.reward(self.base.decode_latents(states[:, -1]), prompts))
        groups = torch.tensor([prompts.index(p) for p in prompts])
        ep = Epoch(epoch, prompts, states, log_probs, rewards, per_prompt_advantages(rewards, groups))
        self._save(ep)
        log_epoch(self.out, ep, self.cfg.epochs, self.steps_per_epoch)
        return ep

    def _sample(self, model, cond, x_T: Tensor, gens: list) -> tuple[Tensor, Tensor]:
        """States (N, K + 1, C, h, w) and log-probabilities (N, K − 1) on the CPU, drawn SAMPLE_BATCH at a time."""
        from latentdiff.diffusion.policy import sample_trajectories

        parts = []
        for s in range(0, x_T.shape[0], SAMPLE_BATCH):
            rows = list(range(s, min(s + SAMPLE_BATCH, x_T.shape[0])))
            parts.append(sample_trajectories(self._denoiser(model, cond.index(rows)), self.chain, x_T[rows],
                                             gens[rows[0]:rows[-1] + 1]))
        return tuple(torch.cat([p[i] for p in parts]).cpu() for i in (0, 1))

    def _trajectory_file(self, epoch: int) -> Path:
        return self.out / "trajectories" / f"epoch{epoch:06d}.safetensors"

    def _save(self, ep: Epoch) -> None:
        """``OUT/trajectories/epochNNNNNN.safetensors``, written atomically: what a run resumed in the middle of
        the epoch trains on. Files of epochs before the newest checkpoint's are removed (no resume needs them)."""
        from safetensors.torch import save_file

        from latentdiff.train.state import checkpoint_step

        path = self._trajectory_file(ep.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"states": ep.states, "log_probs": ep.log_probs, "rewards": ep.rewards, "advantages": ep.advantages}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path.with_suffix(".tmp")),
                  metadata={"epoch": str(ep.index), "prompts": json.dumps(ep.prompts)})
        os.replace(path.with_suffix(".tmp"), path)
        needed = checkpoint_step(self.out / "checkpoints") // self.steps_per_epoch
        for old in path.parent.glob("epoch*.safetensors"):
            if int(old.stem.removeprefix("epoch")) < min(needed, ep.index):
                old.unlink(missing_ok=True)

    def _load(self, epoch: int) -> Epoch:
        from safetensors import safe_open

        path = self._trajectory_file(epoch)
        if not path.is_file():
            raise UserError(f"{path}: missing; a run resumed in the middle of epoch {epoch} needs its trajectories")
        with safe_open(str(path), "pt") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return Epoch(epoch, json.loads(meta["prompts"]), t["states"], t["log_probs"], t["rewards"], t["advantages"])

    # --- the objective -------------------------------------------------------------------------------

    def _conditioning(self, prompts: list[str]):
        """Text conditions (the pipeline's encoding) as ordinary tensors, usable in a backward pass."""
        return self.base.conditioning(prompts).map(lambda v: v.clone())

    def _denoiser(self, net, cond):
        """The guided ε-denoiser of ``net`` (the U-Net being trained, or the frozen base) for ``cond``."""
        from latentdiff.conditioning import unet_model
        from latentdiff.diffusion.guidance import classifier_free_guidance

        model = unet_model(net, self.base.schedule, dtype=torch.float32)
        uncond = self.null.index([0] * cond.batch_size) if self.guidance != 1.0 else None
        return classifier_free_guidance(model, cond, uncond, self.guidance)

    def columns(self, b: int, generator: torch.Generator) -> Tensor:
        """Which actions of each of ``b`` trajectories a step trains on, (b, M): all, or a random
        ``timestep_fraction`` of them drawn from the step's generator."""
        a = self.chain.actions
        m = max(1, round(self.cfg.timestep_fraction * a))
        if m == a:
            return torch.arange(a).expand(b, a)
        gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))  # on the CPU
        return torch.stack([torch.randperm(a, generator=gen)[:m] for _ in range(b)])

    def _objective(self, model, ep: Epoch, rows: Tensor, generator: torch.Generator) -> Tensor:
        """DDPO_IS or DDPO_SF (+ β·KL) on trajectories ``rows`` of the epoch, their actions in one batch."""
        from latentdiff.diffusion.policy import action_distribution, gaussian_log_prob, trajectory_steps
        from latentdiff.train.ddpo import is_loss, sf_loss

        b, d, cols = len(rows), self.device, self.columns(len(rows), generator)  # cols (b, M)
        x_t, k, x_prev = (v.to(d) for v in trajectory_steps(ep.states[rows], self.chain, cols))  # (b·M, ...)
        cond = self._conditioning([ep.prompts[int(i)] for i in rows.repeat_interleave(cols.shape[1])])
        mean, std = action_distribution(self._denoiser(model, cond), self.chain, x_t, k)
        log_prob = gaussian_log_prob(x_prev, mean, std).view(b, -1)  # (b, M)
        adv = ep.advantages[rows].to(d)
        if self.cfg.objective == "sf":
            loss = sf_loss(log_prob, adv)
        else:
            loss = is_loss(log_prob, ep.log_probs[rows].gather(1, cols).to(d), adv, self.cfg.clip_range)
        if self.cfg.kl:
            loss = loss + self.cfg.kl * self._kl(cond, x_t, k, mean, std).view(b, -1).mean()
        return loss

    def _kl(self, cond, x_t: Tensor, k: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Per-step KL(π_θ ‖ π_base) (b·A,) at the states x_t, the base model's mean without gradient (DPOK)."""
        from latentdiff.diffusion.policy import action_distribution, gaussian_kl

        with torch.no_grad(), self._base_weights() as net:
            base_mean, _ = action_distribution(self._denoiser(net, cond), self.chain, x_t, k)
        return gaussian_kl(mean, base_mean, std)

    @contextmanager
    def _base_weights(self):
        """The frozen base U-Net: the LoRA layers switched off, or the copy kept for a full fine-tune."""
        if self.reference is not None:
            yield self.reference
            return
        self.base.unet.disable_adapters()
        try:
            yield self.base.unet
        finally:
            self.base.unet.enable_adapters()


# --- the log and the curve -----------------------------------------------------------------------------


def log_epoch(out: Path, ep: Epoch, epochs: int, steps_per_epoch: int) -> dict:
    """Replace the epoch's line of ``rewards.jsonl`` (dropping later ones: a resumed run rewrites them), redraw
    ``rewards.png`` and print mean ± s.d."""
    from tqdm.auto import tqdm

    r = ep.rewards.double()
    row = {"epoch": ep.index, "step": ep.index * steps_per_epoch, "mean": float(r.mean()),
           "std": float(r.std(unbiased=False)), "min": float(r.min()), "max": float(r.max()), "n": len(r),
           "prompts": len(set(ep.prompts))}
    path = out / "rewards.jsonl"
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln] if path.is_file() else []
    rows = [x for x in rows if x["epoch"] < ep.index] + [row]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    plot_rewards(rows, out / "rewards.png")
    tqdm.write(f"epoch {ep.index + 1}/{epochs}: reward {row['mean']:.4f} ± {row['std']:.4f} "
               f"(min {row['min']:.4g}, max {row['max']:.4g}, {row['n']} samples)")
    return row


def plot_rewards(rows: list[dict], path: Path) -> None:
    """The reward curve: mean ± s.d. of the sampled rewards by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r["epoch"] + 1 for r in rows])
    m, s = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, m, marker="o", ms=3, label="mean")
    ax.fill_between(x, m - s, m + s, alpha=0.25, label="± s.d.")
    ax.set(xlabel="epoch", ylabel="reward", title="reward of the sampled trajectories")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- prompts -------------------------------------------------------------------------------------------


def prompt_pool(cfg: RewardConfig, reward) -> list[str]:
    """The prompts epochs draw from: ``cfg.prompts`` (one a line; blank lines and ``#`` comments skipped) or
    the shapes world's training prompts; checked as text, and as shapes-world captions for the scorer."""
    from latentdiff.limits import check_text

    if cfg.prompts is None:
        from latentdiff.data.shapes import training_prompts

        return training_prompts(cfg.num_prompts, cfg.seed)
    path = Path(cfg.prompts)
    if not path.is_file():
        raise UserError(f"--prompts {path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--prompts {path}: not UTF-8 text") from None
    pool = [(i, ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip() and not ln.strip().startswith("#")]
    if not pool:
        raise UserError(f"--prompts {path}: no prompts (one a line)")
    for i, text in pool:
        check_text(text, f"--prompts {path} line {i}")
        if reward.shapes_prompts:
            _check_caption(text, f"--prompts {path} line {i}", reward.name)
    return [text for _, text in pool]


def _check_caption(text: str, where: str, reward: str) -> None:
    from latentdiff.data.grammar import CaptionError, parse_caption

    try:
        parse_caption(text)
    except CaptionError as exc:
        raise UserError(f"{where}: the {reward} reward scores shapes-world prompts only; {exc}") from None


# --- the run -------------------------------------------------------------------------------------------


def finetune_reward(cfg: RewardConfig, resume: bool = False, on_step: Callable[[int], None] | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """Reward fine-tuning (module docstring); returns the LoRA file or the model folder. The reward and the
    prompts are checked before any model is loaded."""
    from latentdiff.train.finetune import check_identity, check_output, load_base, make_output
    from latentdiff.train.loop import STAGE_IDS, run_stage, save_validation, seed_for
    from latentdiff.train.rewards import load_reward
    from latentdiff.train.run import make_accelerator

    reward = load_reward(cfg.reward)
    pool = prompt_pool(cfg, reward)
    out = check_output(cfg.out)
    accelerator = make_accelerator(cfg.device, cfg.loop.mixed_precision)
    if accelerator.num_processes > 1:
        raise UserError("reward fine-tuning runs in one process (its epochs are sampled there); "
                        "start it without accelerate launch")
    base = load_base(cfg)
    make_output(out)
    check_identity(out, _identity(cfg, base, pool), resume, IDENTITY_KEYS, "reward.json")
    base.to(accelerator.device)
    start = _start_step(out, resume)
    torch.manual_seed(seed_for(cfg.seed, STAGE_IDS["reward"], 1 << 30))  # LoRA's initial A from the seed
    stage = RewardStage(cfg, base, reward, pool, accelerator.device, start, out)
    log(_summary(cfg, stage, len(pool)))
    if start == 0 and _no_checkpoint(out):  # the "before" grid and reward
        save_validation(out, 0, stage.validate(stage.model, 0, out))
    return run_stage(stage, cfg.loop, out, cfg.seed, accelerator, resume, to_dict(cfg), on_step, final=out)


def _no_checkpoint(out: Path) -> bool:
    from latentdiff.train.state import latest_checkpoint

    return latest_checkpoint(out / "checkpoints") is None


def _start_step(out: Path, resume: bool) -> int:
    """The step the loop will resume from: its newest checkpoint's (0 for a fresh run)."""
    from latentdiff.train.state import checkpoint_step

    return checkpoint_step(out / "checkpoints") if resume else 0


def _identity(cfg: RewardConfig, base, pool: list[str]) -> dict:
    lora = cfg.method == "lora"
    return {"reward": cfg.reward, "objective": cfg.objective, "method": cfg.method, "rank": cfg.rank if lora else None,
            "lora_alpha": cfg.lora_alpha if lora else None, "lora_layers": cfg.lora_layers if lora else None,
            "model": base.name, "model_sha256": base.weights_sha256, "prompts": cfg.prompts or "shapes-world training",
            "prompts_sha256": hashlib.sha256("\n".join(pool).encode()).hexdigest(),
            "samples_per_epoch": cfg.samples_per_epoch, "images_per_prompt": cfg.images_per_prompt,
            "batch_size": cfg.loop.batch_size, "sampler": cfg.sampler, "eta": cfg.eta, "sample_steps": cfg.sample_steps,
            "guidance": cfg.guidance, "clip_range": cfg.clip_range, "timestep_fraction": cfg.timestep_fraction,
            "kl": cfg.kl, "seed": cfg.seed}


def _summary(cfg: RewardConfig, stage: RewardStage, pool: int) -> str:
    params = list(stage.model.parameters())
    trained = sum(p.numel() for p in params if p.requires_grad)
    what = f"LoRA rank {cfg.rank}, {cfg.lora_layers} layers" if cfg.method == "lora" else "all U-Net weights"
    objective = "DDPO-SF" if cfg.objective == "sf" else f"DDPO-IS (clip {cfg.clip_range:g})"
    kl = f" + {cfg.kl:g}·KL to the base" if cfg.kl else ""
    eta = f", eta {cfg.eta:g}" if cfg.sampler == "ddim" else ""
    return (f"reward {cfg.reward}: {cfg.epochs} epochs of {cfg.samples_per_epoch} samples "
            f"({cfg.samples_per_epoch // cfg.images_per_prompt} prompts x {cfg.images_per_prompt}) "
            f"from {pool} prompts; "
            f"{cfg.sample_steps} {cfg.sampler} steps{eta} at guidance {stage.guidance:g}; {objective}{kl}; "
            f"training {trained:,} of {sum(p.numel() for p in params):,} parameters ({what}), "
            f"{cfg.steps_per_epoch} steps of {cfg.loop.batch_size} trajectories per epoch")
