"""The one optimisation loop every stage runs, on accelerate (one process, several, CPU or GPU).

The same code serves ``python train.py CONFIG`` and ``accelerate launch --multi_gpu --num_processes 2
train.py CONFIG``. Randomness is derived from (seed, stage, step, rank) at every step and the data
order from (seed, epoch), so a run resumed from a checkpoint continues exactly as an uninterrupted one:
the checkpoint holds weights, EMA, optimizer and step, and everything else follows from them.

On a GPU a step never waits for the host: the batch is gathered and the noise drawn on the device
(``data_on_device``), a non-finite loss is caught on the device too (the fused optimizer's ``found_inf``
skips the update: weights and optimizer state stay as they were, the EMA takes its usual step towards
the unchanged weights), and loss and health are read back every ``sync_every`` steps, where the streak
of non-finite losses is checked against ``max_nonfinite``. On the CPU that read happens every step.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from latentdiff.errors import UserError
from latentdiff.train.config import LoopConfig
from latentdiff.train.state import latest_checkpoint, load_checkpoint, save_checkpoint

STAGE_IDS = {"vae": 1, "clip": 2, "unet": 3, "inpaint": 4, "classifier": 5, "finetune": 6, "layout": 7, "segmap": 8,
             "reward": 9}


class TrainingStopped(UserError):
    """Training stopped on purpose (non-finite losses); the last good checkpoint is intact."""


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM: the step in flight finished and a checkpoint was written; ``--resume`` goes on."""

    exit_code = 130


class _StopRequest:
    """While training, the first SIGINT (Ctrl-C) or SIGTERM only asks the loop to stop: at its next read
    of the loop's health (every step on the CPU, every ``sync_every`` on a GPU) it writes a checkpoint and
    raises :class:`TrainingInterrupted`. The previous handlers come back at once, so a second signal
    stops the process immediately (the checkpoints already written stay intact)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self._restore()
        tqdm.write(f"{signal.Signals(signum).name}: stopping at the next step with a checkpoint "
                   f"(send it again to stop at once)", file=sys.stderr)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class Stage(Protocol):
    name: str
    model: torch.nn.Module  # the trained module; only its parameters with requires_grad are optimised
    num_examples: int

    def loss(self, model: torch.nn.Module, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def validate(self, model: torch.nn.Module, step: int, out: Path) -> dict: ...

    def finish(self, model: torch.nn.Module, out: Path) -> Path: ...


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (numpy's SeedSequence: stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class IndexStream:
    """Global batch ``step`` = positions [step·G, (step+1)·G) of the concatenated per-epoch permutations
    of range(n), each permutation seeded by (seed, epoch): any step's batch is known without replay."""

    n: int
    global_batch: int
    seed: int

    def __post_init__(self):
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng(seed_for(self.seed, 7, epoch)).permutation(self.n)
        return self._perms[epoch]

    def batch(self, step: int) -> np.ndarray:
        pos = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = pos // self.n, pos % self.n
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)


def lr_at(cfg: LoopConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to 10% at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer, EMA and checkpoints cover (all of them, or e.g. only LoRA's)."""
    return [p for p in model.parameters() if p.requires_grad]


def make_ema(model: torch.nn.Module, decay: float):
    from diffusers.training_utils import EMAModel

    return EMAModel(trainable(model), decay=decay, use_ema_warmup=True, power=3 / 4, foreach=True)


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig, lr_scales: dict[str, float] | None = None
                   ) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters, CPU or CUDA), which can also skip a step on the device
    when told through ``found_inf`` (see :func:`_one_step`). ``lr_scales`` maps a parameter-name prefix to
    a factor on the learning rate (a stage's ``lr_scales``, e.g. a pretrained text encoder's smaller one)."""
    scales = lr_scales or {}
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(next((f for pre, f in scales.items() if name.startswith(pre)), 1.0), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr_scale": f, "lr": cfg.lr * f} for f, ps in groups.items()],
                             lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def data_device(stage: Stage, cfg: LoopConfig, device: torch.device) -> torch.device:
    """Where a stage's data and per-step draws live: ``device`` when ``cfg.data_on_device`` says so (auto:
    on a GPU, when the stage can place its data and it takes under a quarter of the free memory)."""
    can = getattr(stage, "can_place_data", False)
    if cfg.data_on_device == "no" or device.type == "cpu":
        return torch.device("cpu")
    if not can:
        if cfg.data_on_device == "yes":
            raise UserError(f"data_on_device: yes, but the {stage.name} stage keeps its data on the CPU; "
                            f"use auto or no")
        return torch.device("cpu")
    if cfg.data_on_device == "auto" and device.type == "cuda":
        moved = (getattr(stage, name) for name in stage.data_names)  # what place_data would move
        need = sum(t.numel() * t.element_size() for t in moved if t is not None)
        free = torch.cuda.mem_get_info(device)[0]
        if need > free / 4:
            print(f"{stage.name}: keeping {need / 2**30:.1f} GiB of training data in host memory "
                  f"(more than a quarter of the GPU's free {free / 2**30:.1f} GiB)", flush=True)
            return torch.device("cpu")
    return device


class _Health:
    """Counts non-finite losses on the device, so that a step need not wait to learn whether its loss was
    finite; :meth:`read` brings the counts to the host (a sync)."""

    def __init__(self, device: torch.device, total: int, run: int):
        self.total = torch.tensor(total, device=device)
        self.run = torch.tensor(run, device=device)  # the current streak of non-finite losses
        self.worst = self.run.clone()  # the longest streak since the last read

    def update(self, finite: torch.Tensor) -> None:
        bad = (~finite).long().reshape(())
        self.total += bad
        self.run = (self.run + 1) * bad
        self.worst = torch.maximum(self.worst, self.run)

    def read(self) -> dict:
        total, run, worst = torch.stack([self.total, self.run, self.worst]).tolist()
        self.worst = self.run.clone()
        return {"nonfinite_total": total, "nonfinite_run": run, "worst_run": worst}


def _restore(stage: Stage, opt, ema, ckpt: Path | None) -> tuple[int, dict]:
    if ckpt is None:
        return 0, {}
    state = load_checkpoint(ckpt, stage.model, opt)
    if state["ema"] is not None:
        names = [n for n, p in stage.model.named_parameters() if p.requires_grad]
        ema.shadow_params = [state["ema"][n].clone() for n in names]
    ema.optimization_step = state["ema_step"]
    return state["step"], state


class _Log:
    """Appends one JSON line per logged step to ``log.jsonl``; on resume drops lines past the step."""

    def __init__(self, path: Path, start: int, active: bool):
        self.path, self.active = path, active
        if active and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, **row) -> None:
        if self.active:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def save_validation(out: Path, step: int, metrics: dict | None) -> dict:
    """Keep a validation's figures beside its picture (``val/step0001000.json``; a resumed run rewrites its
    own) and print them when there are any beyond the step; returns them."""
    metrics = dict(metrics or {})
    (out / "val").mkdir(parents=True, exist_ok=True)
    (out / "val" / f"step{step:07d}.json").write_text(json.dumps({"step": step, **metrics}))
    shown = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
    if shown:
        tqdm.write("validation at step {}: {}".format(
            step, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())))
    return metrics


def run_stage(stage: Stage, cfg: LoopConfig, out: Path, seed: int, accelerator, resume: bool,
              config_dict: dict, on_step: Callable[[int], None] | None = None, final: Path | None = None) -> Path:
    """Train ``stage`` for ``cfg.steps`` steps under ``out`` (checkpoints, log, validation); return what
    ``stage.finish`` wrote to ``final`` (default ``out/final``). ``on_step(n)`` runs after each step at
    which the host reads the loop's health: every step on the CPU, every ``sync_every`` on a GPU."""
    main, t_begin = accelerator.is_main_process, time.time()  # the time limit counts compilation too
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    existing = latest_checkpoint(ckpt_dir)
    if existing is not None and not resume:
        raise UserError(f"{out}: has checkpoints from an earlier run; pass --resume to continue it "
                        f"or choose another output folder")
    where = data_device(stage, cfg, accelerator.device)
    if where.type != "cpu":
        stage.place_data(where)
    if cfg.channels_last:
        stage.model.to(memory_format=torch.channels_last)
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        from latentdiff.speed import classic_attention

        classic_attention(stage.model)  # SDPA's bf16 backward is the slow part on a CPU (BENCHMARKS.md)
    if cfg.compile != "none":
        stage.model.compile(mode=None if cfg.compile == "default" else cfg.compile)  # in place: same weights' names
    opt = make_optimizer(stage.model, cfg, getattr(stage, "lr_scales", None))
    ema = make_ema(stage.model, cfg.ema_decay)
    start, state = _restore(stage, opt, ema, existing if resume else None)
    ema.to(accelerator.device)
    model, opt = accelerator.prepare(stage.model, opt)
    stream = IndexStream(stage.num_examples, cfg.batch_size * accelerator.num_processes,
                         seed_for(seed, STAGE_IDS[stage.name]))
    if cfg.compile != "none":
        _compile_or_eager(stage, model, opt, accelerator, stream, cfg.batch_size, where)
    health = _Health(accelerator.device, state.get("nonfinite_total", 0), state.get("nonfinite_run", 0))
    counters = health.read()
    sync_every = cfg.sync_every or (1 if accelerator.device.type == "cpu" else cfg.log_every)
    log = _Log(out / "log.jsonl", start, main)
    bar = tqdm(total=cfg.steps, initial=start, desc=stage.name, disable=not main, dynamic_ncols=True)
    rank, t0, done_at_start = accelerator.process_index, time.time(), start
    last = cfg.steps
    with _StopRequest() as request:
        for step in range(start, cfg.steps):
            loss = _one_step(stage, model, opt, ema, cfg, accelerator, stream, seed, step, rank, health, where)
            bar.update(1)
            n = step + 1
            checkpoint = n % cfg.checkpoint_every == 0 or n == cfg.steps
            validate = main and cfg.validate_every and n % cfg.validate_every == 0 and n < cfg.steps
            if not (n % sync_every == 0 or n % cfg.log_every == 0 or checkpoint or validate or n == cfg.steps):
                continue
            counters = health.read()  # waits for the device
            if counters["worst_run"] >= cfg.max_nonfinite:
                raise TrainingStopped(_stopped_message(out, ckpt_dir, step, counters))
            out_of_time, interrupted = _stop_reasons(cfg, t_begin, accelerator, request)
            out_of_time = out_of_time and n < cfg.steps
            if out_of_time or interrupted:
                last, checkpoint, validate = n, True, False
            value = float(loss) if counters["nonfinite_run"] == 0 else None
            rate = (n - done_at_start) / max(time.time() - t0, 1e-9)
            if value is not None:
                bar.set_postfix(loss=f"{value:.4f}", steps_per_s=f"{rate:.2f}", refresh=False)
            if main and n % cfg.log_every == 0:
                log.write(step=n, loss=value, lr=lr_at(cfg, step), steps_per_s=rate, time=time.time(),
                          nonfinite_total=counters["nonfinite_total"])
            if checkpoint and counters["nonfinite_run"] == 0:  # keep the last checkpoint from before a streak
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(ckpt_dir, n, accelerator.unwrap_model(model), ema.shadow_params, opt,
                                    {**_saved(counters), "ema_step": ema.optimization_step, "config": config_dict},
                                    keep=cfg.keep_checkpoints, keep_every=cfg.keep_every)
            if validate:
                save_validation(out, n, _with_ema(stage, accelerator.unwrap_model(model), ema,
                                                   lambda m: stage.validate(m, n, out)))
            if interrupted:
                accelerator.wait_for_everyone()
                raise TrainingInterrupted(_interrupted_message(stage.name, ckpt_dir, n, counters))
            if on_step is not None:
                on_step(n)
            if out_of_time:
                tqdm.write(f"{stage.name}: time limit of {cfg.time_limit_s:g} s reached at step {n} of {cfg.steps}; "
                           f"finishing with the weights so far (--resume goes on from step {n})", file=sys.stderr)
                break
    bar.close()
    accelerator.wait_for_everyone()
    result = final or out / "final"
    if main:
        unwrapped = accelerator.unwrap_model(model)
        metrics = _with_ema(stage, unwrapped, ema, lambda m: stage.validate(m, last, out))
        metrics = save_validation(out, last, metrics)
        result = _with_ema(stage, unwrapped, ema, lambda m: stage.finish(m, result))
        (out / "metrics.json").write_text(json.dumps({**metrics, **_saved(counters), "steps": last}, indent=1))
    accelerator.wait_for_everyone()
    return result


def _compile_or_eager(stage, model, opt, accelerator, stream, b: int, where: torch.device) -> None:
    """Compile now, with one forward and backward on the first batch (no update; each step reseeds its
    randomness, so this changes nothing that follows); if compiling fails, say so and train eagerly
    rather than lose the run (a leased GPU's minutes, say)."""
    try:
        gen = torch.Generator(device=where).manual_seed(0)
        with accelerator.autocast():
            loss = stage.loss(model, _batch_index(stream, 0, accelerator.process_index, b, where), gen)
        accelerator.backward(loss)
    except Exception as e:  # noqa: BLE001 - any compiler failure; the eager model is still sound
        first = (str(e).strip().splitlines() or [""])[0][:300]
        tqdm.write(f"{stage.name}: torch.compile failed ({type(e).__name__}: {first}); training without it",
                   file=sys.stderr)
        stage.model._compiled_call_impl = None  # what nn.Module.compile() set: back to the eager forward
    finally:
        opt.zero_grad(set_to_none=True)


def _stop_reasons(cfg: LoopConfig, t0: float, accelerator, request: _StopRequest) -> tuple[bool, bool]:
    """(the time limit has passed, a stop was requested), decided by the main process so that every rank
    stops at the same step."""
    out_of_time = bool(cfg.time_limit_s) and time.time() - t0 > cfg.time_limit_s
    interrupted = request.signal is not None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        flags = broadcast(torch.tensor([float(out_of_time), float(interrupted)], device=accelerator.device),
                          from_process=0)
        out_of_time, interrupted = (bool(v) for v in flags.tolist())
    return out_of_time, interrupted


def _interrupted_message(name: str, ckpt_dir: Path, n: int, counters: dict) -> str:
    last = latest_checkpoint(ckpt_dir)
    if counters["nonfinite_run"] == 0 and last is not None:
        return f"{name}: interrupted at step {n}; checkpoint {last} written, --resume goes on from there"
    return f"{name}: interrupted at step {n} during a streak of non-finite losses; {_last_good(ckpt_dir)}"


def _saved(counters: dict) -> dict:
    return {"nonfinite_total": counters["nonfinite_total"], "nonfinite_run": counters["nonfinite_run"]}


def _batch_index(stream: IndexStream, step: int, rank: int, b: int, where: torch.device) -> torch.Tensor:
    index = torch.from_numpy(stream.batch(step)[rank * b:(rank + 1) * b])  # (b,) int64
    if where.type == "cuda":  # pinned, so the copy does not make the host wait for the device
        return index.pin_memory().to(where, non_blocking=True)
    return index.to(where)


def _one_step(stage, model, opt, ema, cfg, accelerator, stream, seed, step, rank, health, where) -> torch.Tensor:
    """One optimisation step; returns the (detached) loss without reading it on the host."""
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step) * group.get("lr_scale", 1.0)
    step_seed = seed_for(seed, STAGE_IDS[stage.name], step, rank)
    torch.manual_seed(step_seed)  # any randomness inside the modules (dropout) is per-step too
    gen = torch.Generator(device=where).manual_seed(step_seed)
    index = _batch_index(stream, step, rank, cfg.batch_size, where)
    with accelerator.autocast():
        loss = stage.loss(model, index, gen)
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:  # every rank skips together
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    finite = finite.to(accelerator.device) >= 1.0  # (1,) bool
    accelerator.backward(loss)
    if cfg.grad_clip > 0:
        accelerator.clip_grad_norm_(trainable(model), cfg.grad_clip)
    inner = getattr(opt, "optimizer", opt)  # accelerate's wrapper holds the torch optimizer
    inner.found_inf = (~finite).float().reshape(())  # the fused update is skipped where this is 1
    opt.step()
    opt.zero_grad(set_to_none=True)
    ema.step(trainable(accelerator.unwrap_model(model)))
    health.update(finite)
    return loss.detach()


def _last_good(ckpt_dir: Path) -> str:
    last = latest_checkpoint(ckpt_dir)
    return f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"


def _stopped_message(out: Path, ckpt_dir: Path, step: int, counters: dict) -> str:
    return (f"stopped at step {step + 1}: {counters['worst_run']} non-finite losses in a row "
            f"({counters['nonfinite_total']} in all); {_last_good(ckpt_dir)}. Lower the learning rate and resume.")


def _with_ema(stage: Stage, model: torch.nn.Module, ema, fn):
    """Run ``fn(model)`` with the EMA weights swapped in, then put the trained weights back."""
    params = trainable(model)
    ema.store(params)
    ema.copy_to(params)
    try:
        model.eval()
        with torch.no_grad():
            return fn(model)
    finally:
        model.train()
        ema.restore(params)
