"""Every shipped recipe in configs/ loads into its typed config (a typo in a recipe is caught here, not
after a GPU lease has started)."""
from pathlib import Path

import pytest

from latentdiff.config import load_config
from latentdiff.train.classifier import ClassifierTrainConfig
from latentdiff.train.config import TrainConfig
from latentdiff.train.inpaint import InpaintTrainConfig, load_inpaint_recipe
from latentdiff.train.spatial import SpatialTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KIND = {"classifier": ClassifierTrainConfig, "inpaint": InpaintTrainConfig, "layout": SpatialTrainConfig,
        "segmap": SpatialTrainConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("gpu/*.yaml")),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_loads(path):
    cls = KIND.get(path.stem.split("_")[0], TrainConfig)
    if cls is InpaintTrainConfig:  # a recipe of phases (train-inpaint), each an InpaintTrainConfig
        assert all(isinstance(p.cfg, cls) for p in load_inpaint_recipe(path))
        return
    cfg = load_config(path, cls)
    assert isinstance(cfg, cls)


def test_gpu_recipe_keeps_the_default_architecture_and_fits_its_slot():
    cpu, gpu = (load_config(CONFIGS / f"{n}.yaml", TrainConfig) for n in ("default", "default_gpu"))
    assert gpu.vae.model == cpu.vae.model and gpu.clip.text == cpu.clip.text and gpu.unet.model == cpu.unet.model
    limits = [s.loop.time_limit_s for s in (gpu.vae, gpu.clip, gpu.unet)]
    assert all(t > 0 for t in limits) and sum(limits) <= 480  # one 10-minute call, with data, eval and packing


def test_gpu_derived_recipes_reuse_the_gpu_models_data_and_fit_a_short_call():
    base = load_config(CONFIGS / "default_gpu.yaml", TrainConfig)
    limits = []
    for name, cls in KIND.items():
        cfg = load_config(CONFIGS / "gpu" / f"{name}.yaml", cls)
        assert cfg.data == base.data  # same records and holdout: the GPU run's latent cache is reused
        assert cfg.latent_cache == f"{base.out}/latents"
        loop = cfg.classifier.loop if name == "classifier" else cfg.loop
        limits.append(loop.time_limit_s)
    assert all(t > 0 for t in limits) and sum(limits) <= 180


@pytest.mark.parametrize("short_name, long_name", [("default", "default_long"), ("default_v2", "default_v2_long")])
def test_long_recipe_is_the_default_recipe_trained_on(short_name, long_name):
    """configs/default_long.yaml goes on from the shipped run's step-2000 checkpoint, default_v2_long.yaml from
    the v2 run's step 8000 (scripts/default_long.sh), which is only sound if everything but the U-Net's step
    count (and where it writes) is the shorter recipe's."""
    import dataclasses

    default, long = (load_config(CONFIGS / f"{n}.yaml", TrainConfig) for n in (short_name, long_name))
    assert long.unet.loop.steps > default.unet.loop.steps
    same_loop = dataclasses.replace(long.unet.loop, steps=default.unet.loop.steps,
                                    checkpoint_every=default.unet.loop.checkpoint_every)
    assert dataclasses.replace(long, out=default.out, unet=dataclasses.replace(long.unet, loop=same_loop)) == default
