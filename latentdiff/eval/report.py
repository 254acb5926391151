"""The evaluation report: PNG plots and image grids, and ``report.md`` that explains and shows them.

Everything is written into one folder, next to ``results.json`` (the numbers the Markdown is made from).
Files are named by :func:`shown_path`, never by the absolute path of the machine the evaluation ran on.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

METRICS = (("one_colour_shape", "1 object: colour+shape"), ("one_position", "1 object: position"),
           ("one_size", "1 object: size"), ("two_relation", "2 objects + relation"),
           ("two_count", "2 objects: exactly two drawn"), ("two_match", "2 objects: all asked, nothing more"),
           ("any_match", "all requested attributes (scorer match)"))
LABELS = dict(METRICS)


def shown_path(path: str | Path, model: str | Path | None = None) -> str:
    """How a report names a file: ``MODEL/<path in it>`` inside the model folder ``model``, else relative to
    the current folder when inside it, else as given (the user's own spelling)."""
    from latentdiff.provenance import portable_path

    full = Path(path).resolve()
    if model is not None and full.is_relative_to(Path(model).resolve()):
        rel = full.relative_to(Path(model).resolve()).as_posix()
        return f"MODEL/{rel}" if rel != "." else "MODEL"
    return portable_path(path)


# --- images and plots -----------------------------------------------------------------------------------

def grid(rows: list[list[np.ndarray]], path: Path, scale: int = 2) -> None:
    """One PNG of image rows (each image (H, W, 3) uint8); short rows are padded with white."""
    from PIL import Image

    h, w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * h, cols * w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas[i * h:(i + 1) * h, j * w:(j + 1) * w] = im
    Image.fromarray(canvas).resize((cols * w * scale, len(rows) * h * scale), Image.NEAREST).save(path)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, xs, summaries, **kw) -> None:
    """Accuracy with its 95% interval as asymmetric error bars."""
    acc = [s["accuracy"] for s in summaries]
    lo = [max(0.0, a - s["ci95"][0]) for a, s in zip(acc, summaries)]  # ≥ 0: the bounds are rounded at p = 0, 1
    hi = [max(0.0, s["ci95"][1] - a) for a, s in zip(acc, summaries)]
    ax.errorbar(xs, acc, yerr=[lo, hi], marker="o", capsize=3, **kw)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_guidance(results: list[dict], path: Path) -> None:
    plt = _plt()
    ws = [r["guidance"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in METRICS:
        if all(r.get(key, {}).get("n") for r in results):  # reports before two_count lack it
            _errorbar(ax1, ws, [r[key] for r in results], label=label)
    ax1.set(xlabel="guidance scale w (1 = none)", ylabel="accuracy (95% CI)", ylim=(0, 1.02),
            title="prompt following on held-out prompts")
    ax1.legend(fontsize=7)
    ax2.plot(ws, [r["diversity"] for r in results], marker="o", color="k")
    ax2.set(xlabel="guidance scale w", ylabel="mean pairwise RMS distance (pixels in [0, 1])",
            title="diversity among the images of a prompt")
    _save(plt, fig, path)


def plot_samplers(results: list[dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = sorted({r["steps"] for r in results})
    for ax, key in zip(axes, ("any_match", "one_colour_shape")):
        for k, sampler in enumerate(dict.fromkeys(r["sampler"] for r in results)):
            rs = [r for r in results if r["sampler"] == sampler and r[key]["n"]]
            if rs:  # samplers side by side (×1.04 apart) so their intervals do not hide each other
                _errorbar(ax, [r["steps"] * 1.04 ** k for r in rs], [r[key] for r in rs], label=sampler)
        ax.set(xscale="log", xlabel="sampling steps", ylabel="accuracy (95% CI)", ylim=(0, 1.02), title=LABELS[key])
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_classifier(results: list[dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    classes = list(dict.fromkeys(r["class"] for r in results))
    for ax, key, title in ((axes[0], "all", "every object is of the requested class"),
                           (axes[1], "any", "at least one object of the requested class")):
        for c in classes:
            rs = [r for r in results if r["class"] == c]
            _errorbar(ax, [r["scale"] for r in rs], [r[key] for r in rs], label=c)
        ax.axhline(0.8, color="grey", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set(xlabel="classifier scale s (0 = none; linear below 1, log above)", ylabel="share of images (95% CI)",
               ylim=(0, 1.02), xlim=(-0.05, 1.3 * max(r["scale"] for r in results) + 0.1), title=title)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


# --- Markdown -------------------------------------------------------------------------------------------

def _pct(s: dict | None) -> str:
    if not s or not s["n"]:  # none asked, or a report written before the metric existed
        return "–"
    return f"{s['accuracy']:.1%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}] (n={s['n']})"


def _accuracy_md(r: dict) -> list[str]:
    lines = [f"Model defaults: w = {r['guidance']:g}, {r['sampler']}, {r['steps']} steps; {r['num_prompts']} held-out "
             f"prompts × {r['images_per_prompt']} images (seeds 0…{r['images_per_prompt'] - 1}). Each image is "
             f"scored by the shapes scorer; intervals are 95% Wilson score intervals over images.", "",
             "| attribute | accuracy [95% CI] (n) |", "|---|---|"]
    lines += [f"| {label} | {_pct(r.get(key))} |" for key, label in METRICS]
    lines += ["", f"Diversity (mean pairwise RMS pixel distance among a prompt's images): {r['diversity']:.3f}", "",
              "Samples (rows: " + "; ".join(f"'{p}'" for p in r["grid_prompts"]) + "; columns: seeds):", "",
              "![accuracy samples](accuracy_samples.png)"]
    return lines


def _guidance_md(r: dict) -> list[str]:
    lines = [f"{r['num_prompts']} held-out prompts × {r['images_per_prompt']} images per w; the same seeds at every "
             f"w.", "", "| w | " + " | ".join(label for _, label in METRICS) + " | diversity |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for x in r["results"]:
        lines.append(f"| {x['guidance']:g} | " + " | ".join(_pct(x.get(k)) for k, _ in METRICS)
                     + f" | {x['diversity']:.3f} |")
    lines += ["", "![guidance sweep](guidance_sweep.png)", "",
              "Samples (rows: " + "; ".join(f"'{p}'" for p in r["grid_prompts"]) + ", each at w = " +
              ", ".join(f"{x['guidance']:g}" for x in r["results"]) + "; columns: seeds):", "",
              "![guidance samples](guidance_samples.png)"]
    return lines


def _samplers_md(r: dict) -> list[str]:
    steps = list(dict.fromkeys(x["steps"] for x in r["results"]))
    lines = [f"{r['num_prompts']} held-out prompts × {r['images_per_prompt']} images, w = {r['guidance']:g}; "
             f"cells: share of images with every requested attribute right (scorer match).", "",
             "| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
    for sampler in dict.fromkeys(x["sampler"] for x in r["results"]):
        cells = [_pct(x["any_match"]) for x in r["results"] if x["sampler"] == sampler]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += ["", "![sampler sweep](sampler_sweep.png)", "",
              f"'{r['grid_prompt']}', seed 0 (rows: samplers; columns: {', '.join(map(str, steps))} steps):", "",
              "![sampler samples](sampler_samples.png)"]
    return lines


def _classifier_md(r: dict) -> list[str]:
    scales = r["scales"]
    lines = [f"The unconditional model (empty prompt, w = 1), {r['sampler']} {r['steps']} steps, guided by the "
             f"noise-aware latent classifier towards each class: ε̄ = ε_θ(x_t) − s √(1−ᾱ_t) ∇ log p_φ(y | x_t). "
             f"{r['images']} images per class and scale, the same seeds throughout (s = 0 is the unguided rate). "
             f"A cell is the share of images whose objects are all of the requested class (at least one "
             f"object found).", "",
             "| class | " + " | ".join(f"s = {s:g}" for s in scales) + " |", "|---|" + "---|" * len(scales)]
    for c in r["classes"]:
        cells = [_pct(x["all"]) for x in r["results"] if x["class"] == c]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    means = [np.mean([x["all"]["accuracy"] for x in r["results"] if x["scale"] == s]) for s in scales]
    lines.append("| mean | " + " | ".join(f"{m:.1%}" for m in means) + " |")
    best = int(np.argmax(means))
    base = (f"unguided {means[0]:.1%}" if scales[0] == 0
            else f"at s = {scales[0]:g}: {means[0]:.1%}; no s = 0 in this sweep")
    lines += ["", f"Best scale: s = {scales[best]:g}, mean share {means[best]:.1%} ({base}).", "",
              "![classifier sweep](classifier_sweep.png)", "",
              "Samples (rows: each class at s = " + ", ".join(f"{s:g}" for s in scales) + "; columns: seeds):", "",
              "![classifier samples](classifier_samples.png)"]
    return lines


def _bpd_md(r: dict) -> list[str]:
    def fmt(x):
        return f"{x['mean']:.4f} [{x['ci95'][0]:.4f}, {x['ci95'][1]:.4f}]"

    k = r["timesteps"]
    how = "all T terms" if k == "all" else (f"L_T and L_0 exact and an unbiased stratified estimate of the rest "
                                        f"from K = {k} geometrically spaced strata of t, one draw each, per latent")
    return [f"The bound L = L_T + Σ L_{{t−1}} + L_0 of [DDPM] eq. 5 on −log p(x_0) for {r['latents']} held-out "
            f"latents (VAE posterior means of fresh shapes-world scenes, {r['dims']} dimensions each), {how}; "
            f"L_0 is a Gaussian density on latents, so these are bits per *latent* dimension (comparable between "
            f"models that share this VAE only). Both rows use the same t and noise.", "",
            "| condition | bits/dim, mean [95% CI] |", "|---|---|",
            f"| caption (w = 1) | {fmt(r['conditional'])} |", f"| empty prompt | {fmt(r['unconditional'])} |"]


def _fd_md(r: dict) -> list[str]:
    lines = [f"{r['images']} generated images (one per caption of {r['images']} fresh shapes-world scenes; "
             f"w = {r['guidance']:g}, {r['sampler']}, {r['steps']} steps) against those real scenes. 'real vs real' is "
             f"the distance between two independent real sets of the same size: the floor at this sample size.", "",
             "| feature space | generated vs real | real vs real |", "|---|---|---|"]
    for key, s in r["spaces"].items():
        lines.append(f"| {s['features']} | {s['generated_vs_real']:.4g} | {s['real_vs_real']:.4g} |")
    lines += ["", "Top row: real; bottom row: generated from the same captions.", "", "![fd samples](fd_samples.png)"]
    return lines


RENDER = {"accuracy": _accuracy_md, "guidance": _guidance_md, "samplers": _samplers_md,
          "classifier": _classifier_md, "bpd": _bpd_md, "fd": _fd_md}


def write_report(out: Path, results: dict, meta: dict, titles: dict[str, str]) -> Path:
    """``report.md`` and ``results.json`` in ``out``; ``meta``: command, model, versions, suite, skipped."""
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    lines = [f"# Evaluation of `{meta['model']}` ({meta['suite']} suite)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; wall time {meta['seconds']:.0f} s on "
             f"{meta['machine']}  ", f"Model weights sha256: `{meta['model_sha256']}`  ",
             f"Speed options: {meta.get('speed', 'plain (float32)')}  "]
    for key in ("classifier", "clip", "inception"):
        if meta.get(key):
            lines.append(f"{key.capitalize()}: `{meta[key]['path']}` (sha256 `{meta[key]['sha256']}`)  ")
    for lora in meta.get("loras", []):
        lines.append(f"LoRA: `{lora['path']}` at scale {lora['scale']:g} (sha256 `{lora['sha256']}`)  ")
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), "",
              f"Images generated: {results['_totals']['images']}; "
              f"network evaluations: {results['_totals']['nfe']}.", ""]
    for name, reason in meta.get("skipped", {}).items():
        lines.append(f"- Skipped **{name}**: {reason}")
    if meta.get("skipped"):
        lines.append("")
    for name, r in results.items():
        if name in RENDER:
            lines += [f"## {titles[name]}", "", *RENDER[name](r), "", f"_Section time: {r['seconds']:.0f} s._", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M")
