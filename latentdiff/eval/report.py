"""A guidance sweep on the held-out prompts, written as a readable report (Markdown + PNG + JSON)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from latentdiff.eval.accuracy import evaluate_prompts

METRICS = (("one_colour_shape", "1 object: colour+shape"), ("one_position", "1 object: position"),
           ("one_size", "1 object: size"), ("two_relation", "2 objects + relation"))


def guidance_sweep(pipe, prompts: list[str], scales: list[float], num_images: int = 4, **kw) -> list[dict]:
    return [evaluate_prompts(pipe, prompts, num_images=num_images, guidance=w, **kw) for w in scales]


def plot_sweep(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [r["guidance"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in METRICS:
        if any(r[key]["n"] == 0 for r in results):
            continue  # no prompt of this kind in the set
        acc = [r[key]["accuracy"] for r in results]
        lo = [r[key]["accuracy"] - r[key]["ci95"][0] for r in results]
        hi = [r[key]["ci95"][1] - r[key]["accuracy"] for r in results]
        ax1.errorbar(ws, acc, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax1.set_xlabel("guidance scale w (1 = none)")
    ax1.set_ylabel("accuracy (95% CI)")
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=8)
    ax1.set_title("prompt following on held-out prompts")
    ax2.plot(ws, [r["diversity"] for r in results], marker="o", color="k")
    ax2.set_xlabel("guidance scale w")
    ax2.set_ylabel("mean pairwise RMS distance")
    ax2.set_title("diversity among images of a prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(pipe, prompts: list[str], scales: list[float], path: Path, num_images: int = 4, **kw) -> None:
    """Rows: prompts × scales; columns: seeds."""
    from latentdiff.train.stages import save_grid

    rows = []
    for p in prompts:
        for w in scales:
            rows += [np.asarray(im) for im in pipe.generate(p, num_images=num_images, guidance=w, seed=0, **kw)]
    save_grid(np.stack(rows), len(prompts) * len(scales), path, scale=2)


def write_report(out: Path, model_path: str, pipe, results: list[dict], command: str, grid_prompts: list[str],
                 scales: list[float], seconds: float, sampler: str | None = None, steps: int | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"model": model_path, "command": command, "results": results}, indent=1))
    plot_sweep(results, out / "guidance_sweep.png")
    sample_grid(pipe, grid_prompts, [s for s in scales if s in (1.0, 4.0, 7.0)] or scales[:2], out / "samples.png",
                sampler=sampler, steps=steps)
    lines = [f"# Evaluation of `{model_path}`", "", f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{seconds:.0f} s; weights sha256 {pipe.weights_sha256[:16]}…", "",
             f"Held-out prompts: {results[0]['num_prompts']}, {results[0]['num_images']} images each; sampler "
             f"{sampler or pipe.defaults['sampler']}, {steps or pipe.defaults['steps']} steps.", "",
             "| w | " + " | ".join(label for _, label in METRICS) + " | diversity |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for r in results:
        cells = [f"{r[k]['accuracy']:.1%} [{r[k]['ci95'][0]:.0%}, {r[k]['ci95'][1]:.0%}] (n={r[k]['n']})"
                 if r[k]["n"] else "–" for k, _ in METRICS]
        lines.append(f"| {r['guidance']:g} | " + " | ".join(cells) + f" | {r['diversity']:.3f} |")
    lines += ["", "![guidance sweep](guidance_sweep.png)", "", "Samples (rows: prompt × w; columns: seeds):", "",
              "![samples](samples.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
