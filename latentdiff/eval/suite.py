"""The evaluation harness behind ``latentdiff eval``: a suite of sections, one image cache, one progress bar.

Sections (each can be run alone with ``--sections``):

* ``accuracy``   — per-attribute prompt-following accuracy on the held-out prompts at the model's default
  guidance, scored exactly by the shapes scorer, with 95% Wilson intervals.
* ``guidance``   — accuracy and diversity (mean pairwise RMS pixel distance among a prompt's images)
  against the classifier-free guidance scale w.
* ``samplers``   — accuracy against the number of steps for ddpm, ddim, dpm++ and euler.
* ``classifier`` — classifier guidance of the unconditional model (empty prompt, w = 1) towards each
  shape: the share of images whose objects are all of the requested shape, against the scale s.
* ``bpd``        — the variational bound ([DDPM] eq. 5) in bits per latent dimension on held-out latents.
* ``fd``         — Fréchet distance between generated and real images in the CLIP image tower's feature
  space (and Inception's with ``--inception-weights``), next to the distance between two real sets.

Every image is identified by a :class:`Job` (prompt, seed, w, sampler, steps, classifier guide) and drawn
once: image j of a prompt always starts from the noise of seed ``suite.seed + j``, so the sweeps compare
the same starting noise across w, samplers and s, and a job shared by two sections is generated once.
The bar counts network evaluations ("nfe": one U-Net pass on one image; classifier-free guidance costs
two per step), summed over the whole suite before anything runs.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from latentdiff.errors import UserError
from latentdiff.eval.accuracy import PromptAccuracy, Tally

SECTIONS = ("accuracy", "guidance", "samplers", "classifier", "bpd", "fd")
REAL_SEED = 7919  # real scenes for bpd and FD: never the training seed
SAMPLER_NAMES = ("ddpm", "ddim", "dpm++", "euler")


@dataclass(frozen=True)
class Suite:
    """How much of each section to run. ``*_stride``: use every k-th held-out prompt."""

    name: str
    accuracy_images: int = 4
    guidance: tuple[float, ...] = (1.0, 2.0, 4.0, 7.0)
    guidance_stride: int = 2
    guidance_images: int = 4
    samplers: tuple[str, ...] = SAMPLER_NAMES
    sampler_steps: tuple[int, ...] = (5, 10, 25)
    sampler_stride: int = 3
    sampler_images: int = 2
    cg_scales: tuple[float, ...] = (0.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # v2 (v-prediction) is best near 100-300
    cg_images: int = 24
    cg_classes: tuple[str, ...] = ()  # () = the classifier's shapes
    bpd_latents: int = 64
    bpd_timesteps: int = 20  # K strata of the unbiased estimate over t; 0 = every one of the T terms
    fd_images: int = 128
    seed: int = 0
    batch_size: int = 16


QUICK = Suite("quick")
FULL = Suite("full", accuracy_images=8, guidance=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0), guidance_stride=1,
             guidance_images=8, sampler_steps=(5, 10, 25, 50, 100), sampler_stride=1, sampler_images=4,
             cg_scales=(0.0, 1.0, 3.0, 10.0, 30.0, 50.0, 100.0, 200.0, 300.0, 500.0), cg_images=64, bpd_latents=256,
             bpd_timesteps=0, fd_images=1024)
SUITES = {"quick": QUICK, "full": FULL}


@dataclass(frozen=True)
class Job:
    """One image: x_T from ``seed``, then ``sampler`` for ``steps`` steps at guidance w (and classifier
    guidance ``guide`` = (class, s) when set)."""

    prompt: str
    seed: int
    guidance: float
    sampler: str
    steps: int
    guide: tuple[str, float] | None = None

    @property
    def nfe(self) -> int:
        return self.steps * (2 if self.guidance != 1.0 else 1)


class ImageBank:
    """Draws jobs in batches (grouped by their sampling settings), keeps every image (uint8 (H, W, 3))."""

    def __init__(self, pipe, batch_size: int, make_guide: Callable[[tuple[str, float]], Any], bar):
        self.pipe, self.batch_size, self.make_guide, self.bar = pipe, batch_size, make_guide, bar
        self.images: dict[Job, np.ndarray] = {}
        self.size = pipe.resolve()  # native height/width
        self.where = dict(device=pipe.device, dtype=pipe.dtype)

    def draw(self, jobs: list[Job]) -> None:
        from latentdiff.request import Row

        todo = list(dict.fromkeys(j for j in jobs if j not in self.images))
        groups: dict[tuple, list[Job]] = {}
        for j in todo:
            groups.setdefault((j.guidance, j.sampler, j.steps, j.guide), []).append(j)
        for (w, sampler, steps, guide), group in groups.items():
            g = self.make_guide(guide) if guide is not None else None
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                rows = [Row(j.prompt, "", j.seed) for j in batch]
                latents = self.pipe.sample_rows(rows, steps=steps, guidance=w, sampler=sampler,
                                                height=self.size["height"], width=self.size["width"], guide=g,
                                                **self.where)
                for j, px in zip(batch, self.pipe.decode_latents(latents)):
                    self.images[j] = px
                self.bar.update(sum(j.nfe for j in batch))

    def __getitem__(self, job: Job) -> np.ndarray:
        return self.images[job]


class RealSet:
    """Real images for bpd and FD: shapes-world scenes from a seed no training run uses (the held-out
    combinations excluded, so they follow the default model's training distribution), or the first
    images of a folder (``--data``). Rendered at 64×64 and resized to the model's resolution."""

    def __init__(self, size: int, data: str | None = None):
        self.size, self.data = size, data
        self._cache: dict[tuple[int, int], tuple[np.ndarray, list[str]]] = {}

    def get(self, n: int, part: int = 0) -> tuple[np.ndarray, list[str]]:
        """``n`` images (n, H, W, 3) uint8 and their captions; ``part`` 1 is a second, disjoint set."""
        if (n, part) not in self._cache:
            self._cache[(n, part)] = self._folder(n, part) if self.data else self._shapes(n, part)
        return self._cache[(n, part)]

    def _shapes(self, n: int, part: int):
        from PIL import Image

        from latentdiff.data.shapes import caption, render, sample_scene

        rng = np.random.default_rng([REAL_SEED, part])
        images, captions = [], []
        for _ in range(n):
            scene = sample_scene(rng, exclude_held_out=True)
            rgb = render(scene)[0]
            if rgb.shape[0] != self.size:
                rgb = np.asarray(Image.fromarray(rgb).resize((self.size, self.size), Image.BICUBIC))
            images.append(rgb)
            captions.append(caption(scene, rng))
        return np.stack(images), captions

    def _folder(self, n: int, part: int):
        from latentdiff.data.folder import load_folder
        from latentdiff.data.latents import load_images

        records = load_folder(self.data)
        chosen = records[part * n:(part + 1) * n]
        if len(chosen) < min(n, 2):
            raise UserError(f"--data {self.data}: has {len(records)} images; the suite needs {2 * n} "
                            f"(two sets of {n}) for the real-vs-real FD, or lower the counts")
        images = load_images(chosen, self.size, progress=False).permute(0, 2, 3, 1).numpy()
        return images, [r.text for r in chosen]


@dataclass
class Context:
    """What every section sees."""

    pipe: Any
    suite: Suite
    out: Path
    bank: ImageBank
    bar: Any
    real: RealSet
    sampler: str
    steps: int
    guidance: float
    prompts: list[str]
    classifier: Any = None
    features: dict = dataclasses.field(default_factory=dict)  # name -> extractor

    def job(self, prompt: str, seed: int, **kw) -> Job:
        base = dict(guidance=self.guidance, sampler=self.sampler, steps=self.steps)
        return Job(prompt, self.suite.seed + seed, **{**base, **kw})


def prompt_jobs(ctx: Context, prompts: list[str], n: int, **kw) -> dict[str, list[Job]]:
    return {p: [ctx.job(p, j, **kw) for j in range(n)] for p in prompts}


def accuracy_of(ctx: Context, jobs: dict[str, list[Job]]) -> dict:
    acc = PromptAccuracy()
    for prompt, js in jobs.items():
        acc.add(prompt, [ctx.bank[j] for j in js])
    return acc.summary()


# --- sections -------------------------------------------------------------------------------------------

class AccuracySection:
    name, title = "accuracy", "Per-attribute accuracy on the held-out prompts"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.by_prompt = prompt_jobs(ctx, ctx.prompts, ctx.suite.accuracy_images)

    def jobs(self) -> list[Job]:
        return [j for js in self.by_prompt.values() for j in js]

    def run(self) -> dict:
        from latentdiff.eval import report

        ctx = self.ctx
        shown = [p for p in ctx.prompts if " of " not in p][:2] + [p for p in ctx.prompts if " of " in p][:2]
        report.grid([[ctx.bank[j] for j in self.by_prompt[p]] for p in shown], ctx.out / "accuracy_samples.png")
        return {"guidance": ctx.guidance, "sampler": ctx.sampler, "steps": ctx.steps, "num_prompts": len(ctx.prompts),
                "images_per_prompt": ctx.suite.accuracy_images, "grid_prompts": shown,
                **accuracy_of(ctx, self.by_prompt)}


class GuidanceSection:
    name, title = "guidance", "Classifier-free guidance sweep: accuracy and diversity against w"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.prompts = ctx.prompts[::ctx.suite.guidance_stride]
        self.by_w = {w: prompt_jobs(ctx, self.prompts, ctx.suite.guidance_images, guidance=w)
                     for w in ctx.suite.guidance}

    def jobs(self) -> list[Job]:
        return [j for by_p in self.by_w.values() for js in by_p.values() for j in js]

    def run(self) -> dict:
        from latentdiff.eval import report

        ctx = self.ctx
        results = [{"guidance": w, **accuracy_of(ctx, by_p)} for w, by_p in self.by_w.items()]
        report.plot_guidance(results, ctx.out / "guidance_sweep.png")
        shown = list(dict.fromkeys([self.prompts[0], next((p for p in self.prompts if " of " in p), self.prompts[-1])]))
        rows = [[ctx.bank[j] for j in self.by_w[w][p][:4]] for p in shown for w in ctx.suite.guidance]
        report.grid(rows, ctx.out / "guidance_samples.png")
        return {"num_prompts": len(self.prompts), "images_per_prompt": ctx.suite.guidance_images,
                "grid_prompts": shown, "results": results}


class SamplerSection:
    name, title = "samplers", "Sampler sweep: accuracy against the number of steps"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.prompts = ctx.prompts[::ctx.suite.sampler_stride]
        self.runs = {(s, n): prompt_jobs(ctx, self.prompts, ctx.suite.sampler_images, sampler=s, steps=n)
                     for s in ctx.suite.samplers for n in ctx.suite.sampler_steps}

    def jobs(self) -> list[Job]:
        return [j for by_p in self.runs.values() for js in by_p.values() for j in js]

    def run(self) -> dict:
        from latentdiff.eval import report

        ctx = self.ctx
        results = [{"sampler": s, "steps": n, **accuracy_of(ctx, by_p)} for (s, n), by_p in self.runs.items()]
        report.plot_samplers(results, ctx.out / "sampler_sweep.png")
        shown = self.prompts[0]
        rows = [[ctx.bank[self.runs[(s, n)][shown][0]] for n in ctx.suite.sampler_steps] for s in ctx.suite.samplers]
        report.grid(rows, ctx.out / "sampler_samples.png")
        return {"num_prompts": len(self.prompts), "images_per_prompt": ctx.suite.sampler_images,
                "guidance": ctx.guidance, "grid_prompt": shown, "results": results}


def class_share(images: list[np.ndarray], name: str, attribute: str) -> dict:
    """Share of images whose objects (as the scorer finds them) are all of class ``name`` (and at least one
    is found), and the share that contain at least one, with 95% Wilson intervals."""
    from latentdiff.eval.scorer import find_objects

    every, some, counts = Tally(), Tally(), []
    for im in images:
        found = [getattr(o, attribute) for o in find_objects(im)]
        every.add(bool(found) and all(v == name for v in found))
        some.add(name in found)
        counts.append(len(found))
    return {"all": every.summary(), "any": some.summary(), "mean_objects": float(np.mean(counts))}


class ClassifierSection:
    name, title = "classifier", "Classifier guidance: share of the requested class against s"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        clf = ctx.classifier
        self.classes = list(ctx.suite.cg_classes or clf.classes("shape"))
        self.runs = {(c, s): [ctx.job("", j, guidance=1.0, guide=(c, s) if s else None)
                              for j in range(ctx.suite.cg_images)]
                     for c in self.classes for s in ctx.suite.cg_scales}

    def jobs(self) -> list[Job]:
        return [j for js in self.runs.values() for j in js]

    def run(self) -> dict:
        from latentdiff.eval import report
        from latentdiff.models.classifier import resolve_class

        ctx = self.ctx
        results = []
        for (c, s), js in self.runs.items():
            attribute = resolve_class(ctx.classifier, c)[0]  # "shape" | "colour"
            results.append({"class": c, "scale": s, **class_share([ctx.bank[j] for j in js], c, attribute)})
        report.plot_classifier(results, ctx.out / "classifier_sweep.png")
        rows = [[ctx.bank[j] for j in self.runs[(c, s)][:6]] for c in self.classes for s in ctx.suite.cg_scales]
        report.grid(rows, ctx.out / "classifier_samples.png", scale=1)
        return {"classes": self.classes, "scales": list(ctx.suite.cg_scales), "images": ctx.suite.cg_images,
                "sampler": ctx.sampler, "steps": ctx.steps, "results": results}


class BpdSection:
    name, title = "bpd", "Variational bound on held-out latents"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.units = 2 * ctx.suite.bpd_latents * self.passes()  # conditional + unconditional

    def passes(self) -> int:
        """U-Net passes per latent: every term, or the stratified estimate's (≤ K + 1)."""
        from latentdiff.diffusion.elbo import stratum_edges

        T, k = self.ctx.pipe.schedule.num_timesteps, self.ctx.suite.bpd_timesteps
        return len(stratum_edges(k, T)) if k else T

    def jobs(self) -> list[Job]:
        return []

    @torch.inference_mode()
    def latents(self, images: np.ndarray) -> torch.Tensor:
        """x_0 = scaling_factor · mean of the VAE posterior, (N, C, h, w) float32."""
        from latentdiff.inpaint import encode_images
        from latentdiff.pixels import to_unit_hwc

        return torch.cat([encode_images(self.ctx.pipe.vae, c).cpu() for c in to_unit_hwc(images).split(32)])

    def run(self) -> dict:
        from latentdiff.eval.likelihood import bound_bits_per_dim

        ctx = self.ctx
        images, captions = ctx.real.get(ctx.suite.bpd_latents, part=0)
        x0 = self.latents(images)
        k = ctx.suite.bpd_timesteps or None
        out = {"latents": len(captions), "timesteps": ctx.suite.bpd_timesteps or "all",
               "dims": int(x0[0].numel())}
        for name, texts in (("conditional", captions), ("unconditional", [""] * len(captions))):
            bpd = bound_bits_per_dim(ctx.pipe, x0, texts, num_t=k, seed=ctx.suite.seed, batch=ctx.suite.batch_size,
                                     on_batch=lambda b: ctx.bar.update(b * self.passes()))
            out[name] = summary_stats(bpd)
        return out


def summary_stats(values: torch.Tensor) -> dict:
    v = values.double()
    sd = float(v.std()) if v.numel() > 1 else float("nan")
    half = 1.96 * sd / max(v.numel(), 1) ** 0.5
    return {"mean": float(v.mean()), "sd": sd, "ci95": [float(v.mean()) - half, float(v.mean()) + half]}


class FDSection:
    name, title = "fd", "Fréchet distance between generated and real images"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        _, captions = ctx.real.get(ctx.suite.fd_images, part=0)
        self.gen_jobs = [ctx.job(c, i) for i, c in enumerate(captions)]

    def jobs(self) -> list[Job]:
        return self.gen_jobs if self.ctx.features else []

    def run(self) -> dict:
        from latentdiff.eval import report
        from latentdiff.eval.fid import fd_between

        ctx = self.ctx
        real, _ = ctx.real.get(ctx.suite.fd_images, part=0)
        real2, _ = ctx.real.get(ctx.suite.fd_images, part=1)
        gen = np.stack([ctx.bank[j] for j in self.gen_jobs])
        report.grid([list(real[:8]), list(gen[:8])], ctx.out / "fd_samples.png")
        out = {"images": len(gen), "guidance": ctx.guidance, "sampler": ctx.sampler, "steps": ctx.steps, "spaces": {}}
        for key, extractor in ctx.features.items():
            f_real, f_real2, f_gen = extractor(real), extractor(real2), extractor(gen)
            out["spaces"][key] = {"features": extractor.name, "generated_vs_real": fd_between(f_gen, f_real),
                                  "real_vs_real": fd_between(f_real2, f_real)}
        return out


SECTION_CLASSES = {c.name: c for c in (AccuracySection, GuidanceSection, SamplerSection, ClassifierSection,
                                       BpdSection, FDSection)}


def run_suite(ctx: Context, sections: list[str], progress: bool = True) -> dict:
    """Run ``sections`` in order with one progress bar over all of them; return {name: result}, with each
    section's wall time under ``"seconds"``."""
    built = [SECTION_CLASSES[name](ctx) for name in sections]
    jobs = list(dict.fromkeys(j for s in built for j in s.jobs()))
    total = sum(j.nfe for j in jobs) + sum(getattr(s, "units", 0) for s in built)
    bar = tqdm(total=total, unit="nfe", desc=f"eval {ctx.suite.name}", disable=not progress, dynamic_ncols=True)
    ctx.bar = ctx.bank.bar = bar
    results = {}
    try:
        for s in built:
            bar.set_description(f"eval {ctx.suite.name}: {s.name}")
            t0 = time.time()
            ctx.bank.draw(s.jobs())
            results[s.name] = {**s.run(), "seconds": time.time() - t0}
    finally:
        bar.close()
    results["_totals"] = {"images": len(ctx.bank.images), "nfe": total}
    return results
