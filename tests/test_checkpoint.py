"""Where a model comes from (latentdiff.checkpoint): a Hugging Face Hub id resolves through the local hub
cache, laid out here in tmp_path as huggingface_hub lays it out; offline, an id the cache lacks is a one-line
error naming the cache. The network is never touched."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentdiff.checkpoint import is_hub_id, model_path
from latentdiff.errors import UserError
from latentdiff.pipeline import Pipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache in tmp_path, made the one huggingface_hub uses, and offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once, when huggingface_hub is imported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def add_to_cache(cache, repo_id: str, folder):
    """Lay ``folder`` out as huggingface_hub caches a download of ``repo_id`` at COMMIT."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def test_a_hub_id_loads_from_the_local_cache(hub_cache, tiny_model_dir):
    snapshot = add_to_cache(hub_cache, "someone/tiny-model", tiny_model_dir)
    assert model_path("someone/tiny-model") == snapshot
    pipe = Pipeline.load("someone/tiny-model", device="cpu")
    direct = Pipeline.load(tiny_model_dir, device="cpu")
    assert pipe.path == snapshot and pipe.weights_sha256 == direct.weights_sha256
    a = np.asarray(pipe.generate("a red circle", steps=2, seed=3)[0])
    assert np.array_equal(a, np.asarray(direct.generate("a red circle", steps=2, seed=3)[0]))


def test_an_id_missing_offline_is_a_one_line_error_naming_the_cache(hub_cache):
    with pytest.raises(UserError) as err:
        Pipeline.load("stabilityai/stable-diffusion-2-1-base", device="cpu")
    message = str(err.value)
    assert "\n" not in message and message.startswith("stabilityai/stable-diffusion-2-1-base: model not found")
    assert str(hub_cache) in message and "not in the local Hugging Face cache" in message and "offline" in message


def test_local_paths_are_never_taken_for_hub_ids(hub_cache, tmp_path, monkeypatch):
    assert is_hub_id("owner/name") and is_hub_id("stabilityai/stable-diffusion-2-1-base")
    for name in ("model.safetensors", "runs/model.safetensors", "out/old.ckpt", "/abs/path", "a/b/c", "./x"):
        assert not is_hub_id(name), name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "model").mkdir(parents=True)  # an existing local folder wins over the Hub
    assert model_path("runs/model") == Path("runs/model")
