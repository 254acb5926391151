"""configs/inpaint.yaml: the inpainting model's recipe as one list of phases (`latentdiff train-inpaint
configs/inpaint.yaml --resume` runs them all). Each phase must resolve to the settings the seven configs it
replaced had (configs/inpaint.yaml, inpaint_long.yaml … inpaint_long6.yaml, inlined below) and start where
they started (the Makefile seeded phases 2-5 from the previous phase's checkpoint)."""
import dataclasses
import shutil
from pathlib import Path

import pytest

from latentdiff.errors import ConfigError
from latentdiff.train.config import DataConfig, LoopConfig
from latentdiff.train.inpaint import InpaintTrainConfig, MaskMix, load_inpaint_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "inpaint.yaml"

PHASE1 = InpaintTrainConfig(
    out="runs/default_long-inpaint", base_model="runs/default_long/model", seed=0, device="auto",
    latent_cache="runs/default/latents",
    data=DataConfig(folder="data/shapes-train", shapes_num=30000, shapes_seed=1, exclude_held_out=True, holdout=256),
    masks=MaskMix(box=0.4, stroke=0.15, rect=0.2, whole=0.25, box_dilate=2, object_caption=0.5),
    cond_dropout=0.1, min_snr_gamma=5.0, validation_cases=4, validation_steps=25,
    loop=LoopConfig(steps=500, batch_size=32, lr=3.0e-4, warmup_steps=50, checkpoint_every=50, validate_every=250,
                    log_every=10, ema_decay=0.999))
LONG_MASKS = MaskMix(box=0.55, stroke=0.1, rect=0.15, whole=0.2, box_dilate=2, object_caption=0.7)


def _later(k: int, steps: int, lr: float = 3.0e-4, base: str = "runs/default_long/model") -> InpaintTrainConfig:
    loop = dataclasses.replace(PHASE1.loop, steps=steps, lr=lr, validate_every=500, time_limit_s=3600)
    return dataclasses.replace(PHASE1, out=f"runs/default_long-inpaint{k}", base_model=base, masks=LONG_MASKS,
                               loop=loop)


# (settings, the previous phase's checkpoint it starts from, whether it starts from the previous model)
OLD_CONFIGS = [
    (PHASE1, None, False),                                                          # configs/inpaint.yaml
    (_later(2, 1500), 500, False),                                                  # inpaint_long.yaml
    (_later(3, 3000), 1500, False),                                                 # inpaint_long2.yaml
    (_later(4, 5500), 3000, False),                                                 # inpaint_long3.yaml
    (_later(5, 7000), 5500, False),                                                 # inpaint_long4.yaml
    (_later(6, 2000, 5.0e-5, "runs/default_long-inpaint5/model"), None, True),      # inpaint_long5.yaml
    (_later(7, 2000, 5.0e-5, "runs/default_long-inpaint6/model"), None, True),      # inpaint_long6.yaml
]


def test_the_phases_are_the_old_configs():
    phases = load_inpaint_recipe(RECIPE)
    assert [(p.cfg, p.start_checkpoint, p.start_model) for p in phases] == OLD_CONFIGS


def test_overrides_move_the_whole_recipe():
    phases = load_inpaint_recipe(RECIPE, out="elsewhere/run", base_model="m", latent_cache="cache")
    assert [p.cfg.out for p in phases] == ["elsewhere/run"] + [f"elsewhere/run{k}" for k in range(2, 8)]
    assert [p.cfg.base_model for p in phases] == ["m"] * 5 + ["elsewhere/run5/model", "elsewhere/run6/model"]
    assert {p.cfg.latent_cache for p in phases} == {"cache"}


def test_the_makefile_runs_the_recipe_and_ships_its_last_phase():
    makefile = (ROOT / "Makefile").read_text()
    assert "train-inpaint configs/inpaint.yaml --resume" in makefile
    assert f"export --model {load_inpaint_recipe(RECIPE)[-1].cfg.out}/model " in makefile


@pytest.mark.parametrize("text, message", [
    ("phases: [{}, {start: {checkpoint: 50}, loop: {stepz: 9}}]", "unknown key 'phases\\[1\\].loop.stepz'"),
    ("loopz: {}", "unknown key 'loopz'"),
    ("phases: [{start: model}]", "phases\\[0\\].start: the first phase starts from base_model"),
    ("phases: [{}, {loop: {steps: 900}}]", "phases\\[1\\].start: expected"),
    ("phases: [{}, {start: {checkpoint: 70}, loop: {steps: 900}}]", "writes checkpoints every 50 steps up to 500"),
    ("phases: [{}, {start: {checkpoint: 500}}]", "loop.steps: 500: must be more than the starting step 500"),
    ("phases: []", "phases: expected a list"),
])
def test_a_bad_recipe_is_a_config_error(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_inpaint_recipe(path)


def test_a_recipe_without_phases_is_one_phase():
    (phase,) = load_inpaint_recipe(ROOT / "configs" / "gpu" / "inpaint.yaml")
    assert phase.start_checkpoint is None and not phase.start_model


def test_running_seeds_each_phase_once_and_resume_skips_finished_ones(tmp_path, monkeypatch):
    import latentdiff.train.inpaint as inpaint

    path = tmp_path / "r.yaml"
    path.write_text(f"out: {tmp_path}/run\nloop: {{steps: 100, checkpoint_every: 50}}\n"
                    "phases: [{}, {start: {checkpoint: 100}, loop: {steps: 200}}, {start: model}]\n")
    phases = load_inpaint_recipe(path)
    ran = []

    def fake_train(cfg, resume=False):
        out = Path(cfg.out)
        ckpts = out / "inpaint" / "checkpoints"
        ran.append((out.name, resume, (ckpts / "latest").read_text().strip() if (ckpts / "latest").exists() else None))
        (ckpts / f"ckpt-{cfg.loop.steps:07d}").mkdir(parents=True, exist_ok=True)
        (ckpts / "latest").write_text(f"ckpt-{cfg.loop.steps:07d}")
        (out / "inpaint" / "DONE").write_text("")
        (out / "model").mkdir(exist_ok=True)
        (out / "model" / "model_index.json").write_text("{}")
        return out / "model"

    monkeypatch.setattr(inpaint, "train_inpaint", fake_train)
    assert inpaint.train_inpaint_recipe(phases) == tmp_path / "run3" / "model"
    # phase 2 starts from phase 1's step-100 checkpoint, copied in; phase 3 from phase 2's model
    assert ran == [("run", False, None), ("run2", True, "ckpt-0000100"), ("run3", False, None)]
    assert phases[2].cfg.base_model == f"{tmp_path}/run2/model"
    ran.clear()
    shutil.rmtree(tmp_path / "run3")
    assert inpaint.train_inpaint_recipe(phases, resume=True) == tmp_path / "run3" / "model"
    assert ran == [("run3", True, None)]  # phases 1 and 2 were finished
