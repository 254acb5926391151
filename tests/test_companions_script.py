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
