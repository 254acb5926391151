"""Before the old configs go: the one recipe's phases resolve to exactly the seven old configs."""
from pathlib import Path

from latentdiff.config import load_config
from latentdiff.train.inpaint import InpaintTrainConfig, load_inpaint_recipe

CONFIGS = Path("configs")
OLD = ["inpaint", "inpaint_long", "inpaint_long2", "inpaint_long3", "inpaint_long4", "inpaint_long5", "inpaint_long6"]


def test_phases_are_the_old_configs():
    phases = load_inpaint_recipe(CONFIGS / "inpaint_recipe.yaml")
    assert len(phases) == len(OLD)
    for phase, name in zip(phases, OLD):
        assert phase.cfg == load_config(CONFIGS / f"{name}.yaml", InpaintTrainConfig), name
    makefile = Path("Makefile").read_text()
    seeds = {2: 500, 3: 1500, 4: 3000, 5: 5500}
    for k, phase in enumerate(phases, 1):
        assert phase.start_checkpoint == seeds.get(k)
        if k in seeds:
            assert f"ckpt-{seeds[k]:07d}" in makefile
        assert phase.start_model == (k in (6, 7))
