"""The VAE recipe's outline scenes (latentdiff.data.outlines, ``vae.outlines``): shapes the world does not
name, so the VAE learns outlines rather than five shapes (issue #27, item 3)."""
import numpy as np
import pytest
import torch
import yaml

from latentdiff.config import load_config
from latentdiff.data.outlines import concave_images
from latentdiff.data.shapes import BACKGROUND_MAX, PALETTE
from latentdiff.errors import ConfigError
from latentdiff.train.config import TrainConfig, VAEStage
from tests.test_train import TINY, tiny_data  # noqa: F401  (fixture)


def test_concave_images_follow_the_seed_and_use_the_world_palette():
    a, b, c = concave_images(6, 1), concave_images(6, 1), concave_images(6, 2)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    allowed = {tuple(int(v) for v in col) for col in PALETTE.values()}
    for im in a:
        colours = {tuple(p) for p in im.reshape(-1, 3)}
        greys = {col for col in colours if col[0] == col[1] == col[2] and col[0] <= BACKGROUND_MAX}
        assert greys, "a world background"
        assert colours - greys <= allowed  # objects in palette colours only (polygons are not anti-aliased)
        assert len(colours - greys) >= 1
    assert concave_images(0, 1).shape == (0, 64, 64, 3)


def test_outlines_config_is_checked():
    with pytest.raises(ConfigError, match="vae.outlines: expected a count >= 0"):
        VAEStage(outlines=-1)
    from latentdiff.models.factory import VAEConfig

    with pytest.raises(ConfigError, match="sample_size is 32"):
        VAEStage(model=VAEConfig(sample_size=32), outlines=8)


def test_vae_stage_trains_on_the_outlines_after_the_data(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    from latentdiff.train import stages
    from latentdiff.train.run import outline_images, train

    raw = yaml.safe_load(TINY.read_text())
    raw.update(out=str(tmp_path / "run"))
    raw["data"]["folder"] = str(tiny_data)
    raw["vae"]["outlines"] = 16
    raw["vae"]["loop"]["steps"] = 2
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "cfg.yaml", TrainConfig)
    seen = {}
    init = stages.VAETrainStage.__init__

    def spy(self, cfg_, images, holdout, device):
        seen["images"], seen["holdout"] = images, holdout
        init(self, cfg_, images, holdout, device)

    monkeypatch.setattr(stages.VAETrainStage, "__init__", spy)
    train(cfg, only=("vae",))
    images, holdout = seen["images"], seen["holdout"]
    assert images.shape[0] - 16 + holdout.shape[0] == 64  # the 64 world images, then the outlines
    assert not torch.equal(holdout[:1], images[-1:])  # the held-out images stay the world's
    assert torch.equal(images[-16:], outline_images(16, cfg.seed))
    assert (tmp_path / "run" / "vae" / "DONE").is_file()
