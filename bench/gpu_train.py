"""Training throughput: latentdiff's trainer against a plain diffusers-style loop, same U-Net, same data.

Issue #10, done-when 3: on the Stable Diffusion 1.5 U-Net (random weights, batch 32, 64×64 latents, bf16
autocast, AdamW, EMA) latentdiff's trainer reaches >= 1.6x the plain loop's samples/s at equal or lower
peak memory; on the small default-model U-Net (batch 256, 16×16 latents) it reaches >= 10x the ~8 steps/s
a plain loop was once measured at.

* plain: what diffusers' ``train_text_to_image.py`` does per step: a batch gathered on the host and copied
  to the device, ``DDPMScheduler.add_noise``, the U-Net under autocast, MSE, backward, gradient clipping,
  AdamW (torch's default implementation), ``EMAModel.step`` (diffusers' default, one parameter at a
  time) and ``loss.item()`` for the progress bar.
* latentdiff: :func:`latentdiff.train.loop.run_stage` itself on a :class:`LatentDenoisingStage` holding
  the same U-Net: data and draws on the device, fused AdamW, foreach EMA, the host reading the loss every
  ``sync_every`` steps, optionally ``channels_last`` and ``torch.compile``.

Rates are timed between two host syncs after a warm-up (which includes any compilation; its time is
reported as ``warmup_s``). ``--tiny`` runs the same code on the CPU with tiny U-Nets, to test the script.

    python bench/gpu_train.py --out $OUT/train.json          # on the GPU
    python bench/gpu_train.py --tiny --out /tmp/train.json   # smoke run here
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD1_UNET = ROOT / "latentdiff" / "assets" / "sd_configs" / "sd1" / "unet" / "config.json"


# --- the models and data --------------------------------------------------------------------------------


def sd15_unet(tiny: bool):
    from diffusers import UNet2DConditionModel

    cfg = json.loads(SD1_UNET.read_text())
    if tiny:
        cfg.update(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, cross_attention_dim=32,
                   attention_head_dim=4, sample_size=8)
    return UNet2DConditionModel.from_config(cfg)


def default_unet(tiny: bool):
    from latentdiff.models.factory import UNetConfig, build_unet

    if tiny:
        return build_unet(UNetConfig(block_out_channels=(16, 32), attention=(False, True), norm_num_groups=8,
                                     attention_head_dim=8, cross_attention_dim=32, sample_size=8))
    return build_unet(UNetConfig())  # the shipped default model's architecture


class _Contexts(torch.nn.Module):
    """Stands in for the frozen text encoder: a fixed random context per token sequence."""

    def __init__(self, width: int, vocab: int = 512):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)

    def forward(self, ids):
        return type("Out", (), {"last_hidden_state": self.emb(ids)})()


class Case:
    """One benchmark problem: a U-Net factory and random training data of the right shapes (on the CPU)."""

    def __init__(self, name: str, make_unet, batch: int, n: int = 2048, captions: int = 64, length: int = 77):
        torch.manual_seed(0)
        self.name, self.make_unet, self.batch = name, make_unet, batch
        probe = make_unet()
        c, s, width = probe.config.in_channels, probe.config.sample_size, probe.config.cross_attention_dim
        del probe
        self.mean = torch.randn(n, c, s, s)
        self.std = torch.rand(n, c, s, s) * 0.1
        ids = torch.randint(1, 512, (captions, length))
        self.tokens = ids[torch.randint(0, captions, (n,))]
        self.null = torch.zeros(length, dtype=torch.long)
        self.text = _Contexts(width)


# --- the two loops --------------------------------------------------------------------------------------


def _peak_reset(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(case: Case, device, warmup: int, steps: int) -> dict:
    """The stock diffusers example's step, timed over ``steps`` steps after ``warmup``."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from latentdiff.train.run import make_accelerator

    _peak_reset(device)
    accelerator = make_accelerator(device.type, "auto")
    unet = case.make_unet().train()
    ema = EMAModel(unet.parameters(), decay=0.9999)
    ema.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    unet, opt = accelerator.prepare(unet, opt)
    sched = DDPMScheduler(num_train_timesteps=1000)
    with torch.no_grad():
        contexts = case.text(case.tokens).last_hidden_state  # (N, L, D) on the CPU, as a dataset would hold
    gen = torch.Generator().manual_seed(0)
    stamps = []
    for step in range(warmup + steps):
        if step in (warmup, warmup + steps - 1):
            _sync(device)
            stamps.append(time.perf_counter())
        idx = torch.randint(0, len(case.mean), (case.batch,), generator=gen)
        latents = (case.mean[idx] + case.std[idx] * torch.randn(case.mean[idx].shape, generator=gen)).to(device)
        ctx = contexts[idx].to(device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (case.batch,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with accelerator.autocast():
            pred = unet(noisy, t, encoder_hidden_states=ctx).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(accelerator.unwrap_model(unet).parameters())
        loss.item()  # the progress bar's loss
    rate = (steps - 1) / (stamps[1] - stamps[0])
    row = {"case": case.name, "loop": "plain", "batch": case.batch, "steps_per_s": rate,
           "samples_per_s": rate * case.batch, "peak_gib": _peak_gib(device), "warmup_s": None}
    del unet, opt, ema
    return row


class _Timed(Exception):
    pass


def latentdiff_loop(case: Case, device, warmup: int, steps: int, compile: str = "none",
                    channels_last: bool = False) -> dict:
    """latentdiff's own ``run_stage`` on the same U-Net and data, stopped once timed."""
    from latentdiff.config import ScheduleConfig
    from latentdiff.diffusion.schedule import Schedule
    from latentdiff.train.config import LoopConfig
    from latentdiff.train.loop import run_stage
    from latentdiff.train.run import make_accelerator
    from latentdiff.train.stages import LatentDenoisingStage

    class Stage(LatentDenoisingStage):
        name, cond_dropout, min_snr_gamma = "unet", 0.1, 5.0

        def __init__(self):
            self._setup(case.mean, case.std, 1.0, Schedule.from_config(ScheduleConfig()), case.tokens, case.null,
                        case.text, device)
            self.model = case.make_unet().train()

        def validate(self, model, step, out):
            return {}

        def finish(self, model, out):
            return out

    _peak_reset(device)
    t_start = time.perf_counter()
    stamps = {}

    def on_step(n):
        stamps[n] = time.perf_counter()
        if n == warmup + steps:
            raise _Timed

    cfg = LoopConfig(steps=warmup + steps + 1, batch_size=case.batch, lr=1e-4, warmup_steps=1,
                     checkpoint_every=10**9, log_every=steps, sync_every=warmup if warmup < steps else steps,
                     ema_decay=0.9999, compile=compile, channels_last=channels_last)
    assert warmup % cfg.sync_every == 0 and steps % cfg.sync_every == 0
    stage = Stage()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_stage(stage, cfg, Path(tmp) / "run", 0, make_accelerator(device.type, "auto"), False, {},
                      on_step=on_step)
        except _Timed:
            pass
    rate = steps / (stamps[warmup + steps] - stamps[warmup])
    name = ("latentdiff" + (f" compile={compile}" if compile != "none" else "")
            + (" channels_last" if channels_last else ""))
    row = {"case": case.name, "loop": name, "batch": case.batch, "steps_per_s": rate,
           "samples_per_s": rate * case.batch, "peak_gib": _peak_gib(device),
           "warmup_s": stamps[warmup] - t_start}
    del stage
    return row


# --- the run --------------------------------------------------------------------------------------------


def measure(tiny: bool, budget_s: float = 420.0, variants: tuple[str, ...] | None = None,
            cases: tuple[str, ...] = ("default", "sd15"), batch: int | None = None,
            warmup: int | None = None, steps: int | None = None) -> list[dict]:
    """Rows for the small default-model U-Net, then the SD 1.5 U-Net (``cases``; ``batch`` overrides the
    batch size); stops starting cases past the budget. On a machine without CUDA everything runs on the CPU."""
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    warmup = warmup or (2 if tiny else 20)
    steps = steps or (4 if tiny else 100)
    known = {"default": lambda: Case("default U-Net (6.7M)", lambda: default_unet(tiny), batch or (8 if tiny else 256),
                                     length=32),
             "sd15": lambda: Case("SD 1.5 U-Net (860M)", lambda: sd15_unet(tiny), batch or (2 if tiny else 32),
                                  n=256 if tiny else 1024)}
    cases = [known[c]() for c in cases]
    t0, rows = time.perf_counter(), []
    for case in cases:
        for v in variants or default_variants(case, tiny):
            if time.perf_counter() - t0 > budget_s:
                rows.append({"case": case.name, "loop": v, "skipped": f"time budget {budget_s:g} s spent"})
                continue
            sd_steps = steps if "SD" not in case.name or tiny else min(steps, 40)  # the big model: fewer timed steps
            if v == "plain":
                row = plain_loop(case, device, warmup, sd_steps)
            else:
                row = latentdiff_loop(case, device, warmup, sd_steps, compile="default" if "compile" in v else "none",
                                      channels_last="channels_last" in v or "compile" in v)
            row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            rows.append(row)
            print(_line(row), flush=True)
    for case in cases:  # ratios against the plain loop of the same case
        plain = next((r for r in rows if r["case"] == case.name and r["loop"] == "plain" and "samples_per_s" in r),
                     None)
        for r in rows:
            if plain and r["case"] == case.name and "samples_per_s" in r:
                r["speedup_vs_plain"] = r["samples_per_s"] / plain["samples_per_s"]
    return rows


def default_variants(case: Case, tiny: bool) -> tuple[str, ...]:
    """What is worth its time: compiling the small U-Net (launch-bound; compiles in well under a minute),
    not the SD 1.5 one (minutes of compilation for a compute-bound step); no compiling on the CPU."""
    if tiny:
        return ("plain", "latentdiff")
    if case.name.startswith("SD"):
        return ("plain", "latentdiff", "latentdiff+channels_last")
    return ("plain", "latentdiff", "latentdiff+compile")


def _line(r: dict) -> str:
    if "skipped" in r:
        return f"| {r['case']} | {r['loop']} | skipped: {r['skipped']} | | | | |"
    mem = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "–"
    warm = f"{r['warmup_s']:.1f}" if r.get("warmup_s") is not None else "–"
    ratio = f"{r['speedup_vs_plain']:.2f}x" if "speedup_vs_plain" in r else ""
    return (f"| {r['case']} | {r['loop']} | {r['batch']} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.1f} | "
            f"{mem} | {warm} | {ratio} |")


def table(rows: list[dict]) -> str:
    head = ("| U-Net | loop | batch | steps/s | samples/s | peak GiB | warm-up s | vs plain |\n"
            "|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_line(r) for r in rows)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny U-Nets on the CPU (tests the script)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no case after this many seconds")
    p.add_argument("--variants", default=None, help="comma-separated: plain,latentdiff,latentdiff+channels_last,"
                                                     "latentdiff+compile")
    p.add_argument("--cases", default="default,sd15", help="comma-separated: default,sd15")
    p.add_argument("--batch", type=int, default=None, help="batch size for every case (default: 256 / 32)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; tiny 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps, a multiple of --warmup (default 100)")
    args = p.parse_args(argv)
    variants = tuple(args.variants.split(",")) if args.variants else None
    cases = tuple(args.cases.split(","))
    if not set(cases) <= {"default", "sd15"}:
        p.error(f"--cases {args.cases!r}: expected a comma list of default, sd15")
    rows = measure(args.tiny, args.budget_s, variants, cases, args.batch, args.warmup, args.steps)
    print(table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
