"""Stable Diffusion 1.5 on a GPU: stock diffusers vs latentdiff on identical random weights (issue #10).

    python bench/gpu_sd15.py --out $OUT/sd15.json      # the H200 run: starts no work after --budget-s (510 s)
    python bench/gpu_sd15.py --tiny --out /tmp/t.json  # the same code on the CPU with tiny models (< 1 min)

The SD 1.5 architecture is built from the configs shipped in ``latentdiff/assets/sd_configs/sd1`` with
seeded random weights (nothing is downloaded). Stock ``StableDiffusionPipeline`` gets those modules in
``--dtype`` (fp16: what a user would load; diffusers' default SDPA attention); latentdiff's ``Pipeline`` gets
deep copies (identical weights) and is measured at each optimisation level, each adding one option of
:class:`latentdiff.speed.Speed` to the last. Both draw from the same x_T with the same DPM-Solver++ scheduler
config, so the images of the plain level must match stock's (the ``max_px_diff`` column).

Sections (``SECTIONS``, run in order; each is a function ``Bench -> list of row dicts``):

* ``peak`` — the bf16 matrix-multiply rate (8192³ products timed with CUDA events): the ceiling.
* ``generate`` — seconds per 512² image, 25 steps, CFG 7.5, DPM-Solver++, batch 1 and 16: stock, then
  latentdiff per level. ``first_s`` is the first call (compilation, capture, cuDNN choices included),
  ``s_per_image`` the median of the later calls; ``compile_s`` = first call − steady call.
* ``unet`` — one U-Net forward at batch 2, 16 and 32 (32 = 16 images with CFG): milliseconds, FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy (the architecture's FLOPs, whichever
  attention kernel the GPU picks; 803.3 GFLOP per sample at 512²), TFLOP/s and % of the ``peak`` row.
* ``cache`` — the compiled level's first call again after ``torch._dynamo.reset()``: what a second process
  pays for compilation once inductor's on-disk caches are warm.

Another section (``train``, say) is added by registering a function in ``SECTIONS`` before :func:`main`
runs. Every section is guarded by ``--budget-s``: a case that would not fit in what is left is skipped with a
row saying so, and the JSON is rewritten after every section, so a run cut short still leaves its numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the repository's latentdiff, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon"
# The full (GPU) and tiny (CPU smoke) settings; the code path is the same.
FULL = dict(size=512, steps=25, guidance=7.5, batches=(1, 16), unet_batches=(2, 16, 32), reps=(5, 2),
            peak_n=8192, peak_dtype="bf16", compile_allowance_s=150.0)
TINY = dict(size=64, steps=4, guidance=7.5, batches=(1, 4), unet_batches=(2, 8), reps=(2, 1),
            peak_n=256, peak_dtype="fp32", compile_allowance_s=200.0)
TINY_UNET = dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=8, sample_size=16)
TINY_VAE = dict(block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1, norm_num_groups=4, sample_size=64)
TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, projection_dim=32)
# latentdiff's optimisation levels, each adding options to the one before (see latentdiff.speed.Speed).
# "cuda" levels need a CUDA device; compile is left out of --tiny (it takes minutes on a 2-core CPU); "optional"
# levels run only when --levels names them.
LEVELS = [
    ("plain", {}, ()),
    ("eager attention (reference)", dict(attention="eager"), ()),  # what SDPA saves; the next level undoes it
    ("+channels_last", dict(attention="sdpa", channels_last=True), ()),
    ("+fuse_qkv", dict(fuse_qkv=True), ()),
    ("+cuda_graph", dict(cuda_graph=True), ("cuda",)),
    ("+compile", dict(compile="default"), ("compile",)),
    ("+compile_vae", dict(compile_vae=True), ("compile", "optional")),  # only when --levels names it
]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Bench:
    """What the sections share: settings, the two pipelines, the measured peak and the results so far."""

    args: argparse.Namespace
    settings: dict
    device: torch.device
    dtype: torch.dtype
    deadline: float
    stock: Any = None
    ld: Any = None
    peak_tflops: float | None = None
    results: dict = field(default_factory=dict)
    stock_images: dict = field(default_factory=dict)  # batch -> uint8 array of stock's images
    stock_s: dict = field(default_factory=dict)  # batch -> stock seconds per image
    call_s: dict = field(default_factory=dict)  # batch -> latest seconds per call (for budget estimates)
    ld_compiled: set = field(default_factory=set)  # U-Net batch sizes latentdiff's compiled U-Net has seen

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        if self.args.out:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(json.dumps(self.results, indent=2, default=str) + "\n")


# --- models ---------------------------------------------------------------------------------------------

def build(b: Bench) -> None:
    """Seeded random SD 1.5 modules on the device (``--tiny``: the same configs shrunk), a stock
    StableDiffusionPipeline over them and a latentdiff Pipeline over deep copies."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.checkpoint import schedule_from_scheduler_config
    from latentdiff.interop import sd_config_dir
    from latentdiff.models.tokenizer import byte_level_clip_tokenizer
    from latentdiff.pipeline import Pipeline
    from latentdiff.quiet import quiet_libraries

    folder = sd_config_dir("sd1")
    unet_cfg = dict(UNet2DConditionModel.load_config(str(folder), subfolder="unet"))
    vae_cfg = dict(AutoencoderKL.load_config(str(folder), subfolder="vae"))
    text_cfg = CLIPTextConfig.from_pretrained(str(folder), subfolder="text_encoder").to_dict()
    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if b.args.tiny:
        unet_cfg.update(TINY_UNET)
        vae_cfg.update(TINY_VAE)
        text_cfg.update(TINY_TEXT)
    torch.manual_seed(0)
    with quiet_libraries(), torch.device(b.device):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    tokenizer = byte_level_clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")  # no open_clip on the GPU image
    with quiet_libraries():
        for m in (unet, vae, text):
            m.to(b.dtype).eval().requires_grad_(False)
    copies = [copy.deepcopy(m) for m in (unet, vae, text)]
    b.ld = Pipeline.from_components(*copies, tokenizer, schedule_from_scheduler_config(sched_cfg), sched_cfg)
    b.stock = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                      scheduler=b.ld.make_scheduler("dpm++"), safety_checker=None,
                                      feature_extractor=None, requires_safety_checker=False)
    b.stock.set_progress_bar_config(disable=True)
    b.results["meta"]["parameters"] = {n: sum(p.numel() for p in m.parameters())
                                       for n, m in (("unet", unet), ("vae", vae), ("text_encoder", text))}


# --- timing ---------------------------------------------------------------------------------------------

def device_times(b: Bench, fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn``: CUDA events around each call on a GPU, the host clock on the CPU."""
    for _ in range(warmup):
        fn()
    b.sync()
    out = []
    for _ in range(reps):
        if b.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def wall(b: Bench, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, the device synchronised before and after."""
    b.sync()
    t = time.perf_counter()
    result = fn()
    b.sync()
    return time.perf_counter() - t, result


def peak_memory_gib(b: Bench) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if b.device.type == "cuda" else None


def reset_peak_memory(b: Bench) -> None:
    if b.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# --- sections -------------------------------------------------------------------------------------------

def section_peak(b: Bench) -> list[dict]:
    """The matrix-multiply ceiling: n³ products of random matrices (never zeros), median of 10."""
    n, name = b.settings["peak_n"], b.settings["peak_dtype"]
    x = torch.randn(n, n, device=b.device, dtype=DTYPES[name])
    y = torch.randn(n, n, device=b.device, dtype=DTYPES[name])
    times = device_times(b, lambda: x @ y, reps=10, warmup=3)
    s = statistics.median(times)
    b.peak_tflops = 2 * n**3 / s / 1e12
    return [{"what": f"{name} matmul {n}x{n}x{n}", "ms": s * 1e3, "tflops": b.peak_tflops,
             "spread_pct": 100 * (max(times) - min(times)) / s}]


def _images(images) -> Any:
    import numpy as np

    return np.stack([np.asarray(im) for im in images])


def _case(b: Bench, name: str, level: str, batch: int, fn: Callable[[], list], options: dict,
          compiles: bool) -> dict:
    """Time ``fn`` (one call = ``batch`` images): the first call alone, then the median of the later calls."""
    import numpy as np

    reps = b.settings["reps"][0 if batch == 1 else 1]
    row = {"pipeline": name, "level": level, "batch": batch, "options": options}
    per_call = b.call_s.get(batch, 0.0)
    need = per_call * (reps + 2) + (b.settings["compile_allowance_s"] if compiles else 0.0)
    if b.left() < need:
        return {**row, "skipped": f"budget: needs ~{need:.0f} s, {b.left():.0f} s left"}
    reset_peak_memory(b)
    first, images = wall(b, fn)
    times = [wall(b, fn)[0] for _ in range(reps)]
    pixels = _images(images)
    steady = statistics.median(times)
    b.call_s[batch] = steady
    row.update(first_s=first, s_per_call=steady, s_per_image=steady / batch, compile_s=max(0.0, first - steady),
               runs=len(times), spread_pct=100 * (max(times) - min(times)) / steady, peak_mem_gib=peak_memory_gib(b),
               pixel_std=float(pixels.std()))  # 0 for blank images: NaN latents decode to black
    if name == "stock":
        b.stock_images[batch], b.stock_s[batch] = pixels, steady / batch
    elif batch in b.stock_images:
        diff = np.abs(pixels.astype(int) - b.stock_images[batch].astype(int))
        row.update(max_px_diff=int(diff.max()), mean_px_diff=float(diff.mean()))
    if batch in b.stock_s and name != "stock":
        row["speedup_vs_stock"] = b.stock_s[batch] / row["s_per_image"]
    return row


def _safe(fn: Callable[[], dict], row: dict) -> dict:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others
        traceback.print_exc()
        return {**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def section_generate(b: Bench) -> list[dict]:
    """Stock diffusers, then latentdiff at each level (batch 1; batch 16 at the plain and last levels)."""
    s = b.settings
    small, large = s["batches"]
    size, steps, guidance = s["size"], s["steps"], s["guidance"]
    latents = {n: b.ld.initial_latents(list(range(n)), size, size).to(b.dtype) for n in (small, large)}

    def stock(n):
        return lambda: b.stock([PROMPT] * n, negative_prompt=[""] * n, num_inference_steps=steps,
                               guidance_scale=guidance, latents=latents[n], height=size, width=size).images

    ours = partial(latentdiff_call, b)
    rows = []
    for n in (small, large):
        rows.append(_safe(lambda: _case(b, "stock", "diffusers", n, stock(n), {"dtype": b.args.dtype}, False),
                          {"pipeline": "stock", "batch": n}))
    levels = [lv for lv in LEVELS if lv[0] in b.args.levels]
    b.ld.optimize(dtype=b.args.dtype)
    good, compiled = b.ld.speed, set()  # the last options that worked; (batch, compile state) seen
    for i, (level, options, needs) in enumerate(levels):
        last = i == len(levels) - 1
        if "cuda" in needs and b.device.type != "cuda":
            rows.append({"pipeline": "latentdiff", "level": level, "skipped": "needs a CUDA device"})
            continue
        error = _safe(lambda: (b.ld.optimize(**options), {})[1], {"pipeline": "latentdiff", "level": level})
        if error:
            rows.append(error)
            rebuild_latentdiff(b, good)
            compiled.clear()
            continue
        opts = b.ld.speed.describe()
        start = len(rows)
        for n in ((small, large) if level == "plain" or last else (small,)):
            state = (n, b.ld.speed.compile, b.ld.speed.compile_vae)  # what this call may have to compile
            compiles = b.ld.speed.compile is not None and state not in compiled
            rows.append(_safe(lambda: _case(b, "latentdiff", level, n, ours(n), opts, compiles),
                              {"pipeline": "latentdiff", "level": level, "batch": n}))
            if b.ld.speed.compile is not None:
                compiled.add(state)
                b.ld_compiled.add(2 * n)  # the U-Net batch: CFG doubles it
        if any("error" in r for r in rows[start:]):  # go on from the last options that worked
            rebuild_latentdiff(b, good)
            compiled.clear()
        else:
            good = b.ld.speed
        b.results["sections"]["generate"] = rows  # partial results survive a cut-short run
        b.save()
    rows.append(_safe(lambda: _sync_count(b, ours(small)), {"pipeline": "latentdiff", "level": "host syncs"}))
    rows.append(_safe(lambda: _case(b, "stock", "diffusers (again: drift check)", small, stock(small),
                                    {"dtype": b.args.dtype}, False), {"pipeline": "stock", "batch": small}))
    return rows


def rebuild_latentdiff(b: Bench, speed) -> None:
    """A fresh latentdiff pipeline over new copies of stock's modules (which no option has touched) with
    ``speed`` applied: after a level fails (say, a compile error), the next levels go on from the last one
    that worked."""
    from latentdiff.pipeline import Pipeline

    copies = [copy.deepcopy(m) for m in (b.stock.unet, b.stock.vae, b.stock.text_encoder)]
    old, b.ld = b.ld, None
    b.ld = Pipeline.from_components(*copies, old.tokenizer, old.schedule, old.scheduler_config).optimize(speed)
    b.ld_compiled.clear()
    del old
    if b.device.type == "cuda":
        torch.cuda.empty_cache()


def latentdiff_call(b: Bench, n: int) -> Callable[[], list]:
    """One latentdiff generation of ``n`` images with the benchmark's settings (seeds 0 … n − 1)."""
    s = b.settings
    return lambda: b.ld.generate(PROMPT, num_images=n, steps=s["steps"], guidance=s["guidance"], sampler="dpm++",
                                 seed=0, height=s["size"], width=s["size"], batch_size=n)


def _sync_count(b: Bench, fn: Callable[[], list]) -> dict:
    """How many synchronising CUDA calls one latentdiff call makes (torch's sync debug mode): the decode's
    copy to the host is expected; per-step syncs would show as ~steps more."""
    row = {"pipeline": "latentdiff", "level": "host syncs", "batch": 1, "options": b.ld.speed.describe()}
    if b.device.type != "cuda":
        return {**row, "skipped": "needs a CUDA device"}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0][:120] for w in seen if "synchroniz" in str(w.message).lower()]
    return {**row, "syncs_per_call": len(syncs), "steps": b.settings["steps"], "first_syncs": syncs[:5]}


def count_flops(unet, x, t, ctx) -> int:
    """FLOPs of one U-Net forward (``torch.utils.flop_counter``: matmuls, convolutions, attention), counted as
    it runs; works on the meta device too."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=ctx, return_dict=False)
    return counter.get_total_flops()


def section_unet(b: Bench) -> list[dict]:
    """One U-Net forward per batch size: stock modules eager vs latentdiff's U-Net call at its last level."""
    from diffusers import UNet2DConditionModel

    s = b.settings
    latent = s["size"] // b.ld.vae_scale_factor
    ctx_dim = b.stock.unet.config.cross_attention_dim
    with torch.device("meta"):  # FLOPs of the architecture, whichever attention kernel the device picks
        meta_unet = UNet2DConditionModel.from_config(b.stock.unet.config).to(b.dtype)
    rows = []
    ld_call = b.ld._unet_call or b.ld.unet
    for n in s["unet_batches"]:
        with torch.inference_mode():  # inference tensors, as in sampling: other inputs would make dynamo recompile
            x = torch.randn(n, 4, latent, latent, device=b.device, dtype=b.dtype)
            t = torch.full((n,), 500, device=b.device, dtype=torch.long)
            ctx = torch.randn(n, 77, ctx_dim, device=b.device, dtype=b.dtype)
        with torch.device("meta"):
            flops = count_flops(meta_unet, torch.empty_like(x, device="meta"), torch.empty_like(t, device="meta"),
                                torch.empty_like(ctx, device="meta"))
        for name, unet, options in (("stock eager", b.stock.unet, {"dtype": b.args.dtype}),
                                    ("latentdiff", ld_call, b.ld.speed.describe() if b.ld.speed else {})):
            row = {"runner": name, "batch": n, "options": options, "gflop_per_sample": flops / n / 1e9}
            compiles = name == "latentdiff" and b.ld.speed is not None and b.ld.speed.compile and n not in b.ld_compiled
            need = (s["compile_allowance_s"] if compiles else 0.0) + 10.0
            if b.left() < need:
                rows.append({**row, "skipped": f"budget: needs ~{need:.0f} s, {b.left():.0f} s left"})
                continue

            def forward(unet=unet):
                return unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]

            def measure(row=row, forward=forward):
                with torch.inference_mode():
                    first, _ = wall(b, forward)
                    times = device_times(b, forward, reps=10, warmup=2)
                ms = statistics.median(times) * 1e3
                tflops = flops / (ms / 1e3) / 1e12
                pct = 100 * tflops / b.peak_tflops if b.peak_tflops else None
                return {**row, "first_ms": first * 1e3, "ms": ms, "tflops": tflops, "pct_of_peak": pct,
                        "spread_pct": 100 * (max(times) - min(times)) / statistics.median(times)}

            rows.append(_safe(measure, row))
    return rows


def section_cache(b: Bench) -> list[dict]:
    """What compilation costs a second process: the compiled level's first batch-1 call again after
    ``torch._dynamo.reset()`` (and fresh CUDA graphs), with inductor's on-disk caches now warm."""
    from latentdiff.speed import GraphedUNet

    if b.ld.speed is None or b.ld.speed.compile is None:
        return [{"pipeline": "latentdiff", "level": "compiled, warm cache", "skipped": "latentdiff was not compiled"}]
    torch._dynamo.reset()
    if isinstance(b.ld._unet_call, GraphedUNet):
        b.ld._unet_call = GraphedUNet(b.ld.unet)
    small = b.settings["batches"][0]
    row = {"pipeline": "latentdiff", "level": "compiled, warm cache", "batch": small}
    return [_safe(lambda: _case(b, "latentdiff", row["level"], small, latentdiff_call(b, small),
                                b.ld.speed.describe(), True), row)]


def section_train(b: Bench) -> list[dict]:
    """Training samples/s: latentdiff's trainer against a plain diffusers-style loop (bench/gpu_train.py)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    import gpu_train

    return gpu_train.measure(b.args.tiny, budget_s=max(0.0, b.left()))


SECTIONS: dict[str, Callable[[Bench], list[dict]]] = {
    "peak": section_peak,
    "generate": section_generate,
    "unet": section_unet,
    "train": section_train,
    "cache": section_cache,
}


# --- report ---------------------------------------------------------------------------------------------

def checks(b: Bench) -> dict:
    """The issue's targets, read off the rows: batch-1 speed-up ≥ 3 and batch-16 U-Net ≥ 45 % of peak."""
    gen = b.results["sections"].get("generate", [])
    small = b.settings["batches"][0]
    ours = [r for r in gen if r.get("pipeline") == "latentdiff" and r.get("batch") == small and "s_per_image" in r]
    best = min(ours, key=lambda r: r["s_per_image"], default=None)
    unet = [r for r in b.results["sections"].get("unet", []) if r.get("runner") == "latentdiff" and "tflops" in r]
    large = b.settings["batches"][1]
    out = {"batch1_best_level": best and best["level"],
           "batch1_speedup_vs_stock": best and best.get("speedup_vs_stock"), "batch1_target": 3.0}
    for n in (large, 2 * large):
        row = next((r for r in unet if r["batch"] == n), None)
        out[f"unet_batch{n}_pct_of_peak"] = row and row["pct_of_peak"]
    out["unet_target_pct"] = 45.0
    train = [r for r in b.results["sections"].get("train", []) if "samples_per_s" in r]
    small = [r for r in train if r["case"].startswith("default") and r["loop"] != "plain"]
    out["train_default_unet_best_steps_per_s"] = max((r["steps_per_s"] for r in small), default=None)
    out["train_default_unet_target_steps_per_s"] = 80.0  # 10x the plain loop (~8 steps/s at batch 256)
    sd = [r for r in train if r["case"].startswith("SD")]
    plain = next((r for r in sd if r["loop"] == "plain"), None)
    best = max((r for r in sd if r["loop"] != "plain"), key=lambda r: r["samples_per_s"], default=None)
    out["train_sd15_speedup_vs_plain"] = best and best.get("speedup_vs_plain")
    out["train_sd15_peak_gib_vs_plain"] = (best and plain and best.get("peak_gib") and plain.get("peak_gib")
                                           and [best["peak_gib"], plain["peak_gib"]])
    out["train_sd15_target_speedup"] = 1.6
    return out


def markdown(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k not in ("first_syncs",)]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{k}={w}" for k, w in v.items()) or "-"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def versions() -> dict:
    import diffusers
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--tiny", action="store_true", help="tiny SD-like models on the CPU: a smoke run of the same code")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA, fp32 with --tiny")
    p.add_argument("--sections", default=None, help=f"comma list of sections (default: all of {', '.join(SECTIONS)})")
    p.add_argument("--levels", default=None, help="comma list of latentdiff levels (default: all; --tiny: no compile)")
    p.add_argument("--budget-s", type=float, default=510.0, help="stop starting work after this many seconds")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("fp32" if args.tiny else "fp16")
    default_levels = [lv[0] for lv in LEVELS if "optional" not in lv[2] and not (args.tiny and "compile" in lv[2])]
    args.levels = args.levels.split(",") if args.levels else default_levels
    args.sections = args.sections.split(",") if args.sections else list(SECTIONS)
    for name in args.sections:
        if name not in SECTIONS:
            p.error(f"unknown section {name!r}; expected one of {', '.join(SECTIONS)}")
    for name in args.levels:
        if name not in [lv[0] for lv in LEVELS]:
            p.error(f"unknown level {name!r}; expected one of {', '.join(lv[0] for lv in LEVELS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --tiny for the CPU smoke run")
    settings = TINY if args.tiny else FULL
    b = Bench(args, settings, device, DTYPES[args.dtype], deadline=t0 + args.budget_s)
    b.results = {"meta": {"mode": "tiny (CPU smoke run, not a performance claim)" if args.tiny else "full",
                          "device": str(device), "dtype": args.dtype, "settings": settings,
                          "prompt": PROMPT, "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                          **versions()},
                 "sections": {}, "section_s": {}}
    t = time.perf_counter()
    build(b)
    b.results["meta"]["build_s"] = time.perf_counter() - t
    for name in args.sections:
        t = time.perf_counter()
        if b.left() <= 0:
            b.results["sections"][name] = [{"skipped": "budget spent"}]
        else:
            out = _safe(lambda: {"rows": SECTIONS[name](b)}, {})
            b.results["sections"][name] = out["rows"] if "rows" in out else [out]
        b.results["section_s"][name] = time.perf_counter() - t
        b.results["checks"] = checks(b)
        b.save()
        print(f"\n## {name} ({b.results['section_s'][name]:.1f} s)\n\n{markdown(b.results['sections'][name])}",
              flush=True)
    b.results["total_s"] = time.perf_counter() - t0
    b.save()
    print(f"\n## checks (total {b.results['total_s']:.1f} s)\n\n{markdown([b.results['checks']])}", flush=True)
    return b.results


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
