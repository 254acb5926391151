"""scripts/companions.sh: refuses what it cannot train, before starting anything."""
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "companions.sh"


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_no_model_prints_usage():
    r = _run()
    assert r.returncode == 2 and "usage:" in r.stderr


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    r = _run(str(tmp_path))
    assert r.returncode == 2 and f"{tmp_path}: not a model folder" in r.stderr


@pytest.mark.parametrize("part", ["controlnet", "vae"])
def test_an_unknown_part_is_refused_before_any_training(part, tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    r = _run(str(tmp_path), "layout", part)
    assert r.returncode == 2 and f"{part}: unknown part" in r.stderr
    assert "== layout" not in r.stdout  # nothing started


@pytest.mark.parametrize("command, config, module, function", [
    ("train-classifier", "configs/classifier.yaml", "latentdiff.train.classifier", "train_classifier"),
    ("train-spatial", "configs/segmap.yaml", "latentdiff.train.spatial", "train_spatial"),
    ("train-inpaint", "configs/inpaint.yaml", "latentdiff.train.inpaint", "train_inpaint"),
])
def test_latent_cache_flag_replaces_the_recipes_cache(command, config, module, function, monkeypatch, tmp_path):
    """companions.sh hands each companion its model's run cache with --latent-cache; the flag must reach the
    trainer's config (the recipes name runs/default/latents)."""
    import importlib

    from latentdiff.cli import main

    seen = []

    def fake_train(cfg, resume=False):
        seen.append(cfg)
        if command == "train-inpaint":  # the checkpoint the recipe's next phase starts from
            ckpt = Path(cfg.out) / "inpaint" / "checkpoints" / f"ckpt-{cfg.loop.steps:07d}"
            ckpt.mkdir(parents=True, exist_ok=True)
        return tmp_path / "result"

    monkeypatch.setattr(importlib.import_module(module), function, fake_train)
    assert main([command, config, "--out", str(tmp_path / "run"), "--latent-cache", str(tmp_path / "cache")]) == 0
    assert seen and {cfg.latent_cache for cfg in seen} == {str(tmp_path / "cache")}  # every phase of a recipe
    seen.clear()
    assert main([command, config, "--out", str(tmp_path / "run")]) == 0
    assert seen and {cfg.latent_cache for cfg in seen} == {"runs/default/latents"}
