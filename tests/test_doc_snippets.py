"""Every Python snippet in README.md and docs/ runs as written, in a fresh folder beside the repository's
package (so "latentdiff/assets/default_model" resolves as it does in a clone), on the shipped models.

A snippet that needs something the reader made in an earlier step names it in an HTML comment on the line
before its fence, ``<!-- snippet-setup: NAME -->``; the test makes it the way the docs say (SETUPS), then
runs the snippet unchanged. A block whose first line is ``# FILE.py`` is a file the reader saves: it is
written and compiled (the test of its feature runs it). The reward section's snippets are run by
tests/test_reward.py as well, with its commands.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- snippet-setup: ([\w-]+) -->\n)?( *)```python\n(.*?)\n\2```", re.DOTALL)


def snippets() -> list[tuple[str, str | None, str]]:
    """(where, setup, code) of each ```python block of README.md and docs/**/*.md (indentation removed)."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start(3))
            code = "\n".join(s[len(m.group(2)):] for s in m.group(3).splitlines())
            found.append((f"{path.relative_to(ROOT)}:{line}", m.group(1), code))
    return found


def lora_out(folder: Path) -> None:
    """OUT/pytorch_lora_weights.safetensors, as `latentdiff finetune --lora` writes it (small random B)."""
    import torch
    from diffusers import UNet2DConditionModel

    from latentdiff.lora import add_lora, save_lora

    unet = UNet2DConditionModel.from_pretrained(ROOT / "latentdiff/assets/default_model/unet",
                                                torch_dtype=torch.float32)
    configs = add_lora(unet, rank=4)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    save_lora(folder / "OUT", unet, None, configs)


def single_file(folder: Path) -> None:
    """model.safetensors and model_config/: `latentdiff export --format single-file --out model.safetensors`."""
    from latentdiff.cli import main

    assert main(["export", "--format", "single-file", "--out", str(folder / "model.safetensors")]) == 0


def inpaint_files(folder: Path) -> None:
    """scene.png (a world scene) and mask.png (white: the top-left cell, to repaint)."""
    from PIL import Image

    from latentdiff.data.shapes import render, sample_scene

    image, _ = render(sample_scene(np.random.default_rng(3)))
    Image.fromarray(image).save(folder / "scene.png")
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[:22, :22] = 255
    Image.fromarray(mask).save(folder / "mask.png")


def needs_cuda(folder: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("the snippet is for a GPU and this machine has none")


SETUPS = {"lora-out": lora_out, "single-file": single_file, "inpaint-files": inpaint_files, "cuda": needs_cuda}
ALL = snippets()


def test_the_snippets_are_found_and_their_setups_exist():
    assert len(ALL) >= 8  # README 1, finetune 2, generate 2, inpaint 1, performance 1, shapes 1
    assert {s for _, s, _ in ALL if s} <= set(SETUPS)


@pytest.mark.parametrize("where, setup, code", ALL, ids=[w for w, _, _ in ALL])
def test_snippet_runs_as_written(where, setup, code, tmp_path, monkeypatch):
    (tmp_path / "latentdiff").symlink_to(ROOT / "latentdiff")
    monkeypatch.chdir(tmp_path)
    if setup:
        SETUPS[setup](tmp_path)
    first = code.splitlines()[0]
    if re.fullmatch(r"# [\w/]+\.py", first):
        (tmp_path / first[2:]).write_text(code)
        compile(code, first[2:], "exec")
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{where} failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
