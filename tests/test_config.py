"""Typed configuration: YAML mirrors frozen dataclasses; bad files give errors naming file and key."""
import dataclasses

import pytest

from latentdiff.config import ScheduleConfig, from_dict, load_config
from latentdiff.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    layers: tuple[int, ...] = (32, 64)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = Inner()
    schedule: ScheduleConfig = ScheduleConfig()
    note: str | None = None


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_mirrors_dataclasses(tmp_path):
    cfg = load_config(write(tmp_path, "steps: 5\ninner:\n  lr: 1e-4\n  layers: [8, 16, 32]\n"
                                      "schedule:\n  kind: cosine\n"), Outer)
    assert cfg == Outer(steps=5, inner=Inner(lr=1e-4, layers=(8, 16, 32)), schedule=ScheduleConfig(kind="cosine"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3
    assert load_config(write(tmp_path, ""), Outer) == Outer()


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "inner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Outer)
    assert str(p) in str(e.value) and "inner.lrr" in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize("old", ["caption_dropout", "text_dropout"])
def test_an_old_dropout_key_says_it_was_renamed(tmp_path, old):
    """One name, cond_dropout, for the text-condition dropout of every recipe: an old one is a clear error."""
    from latentdiff.train.spatial import SpatialTrainConfig

    p = write(tmp_path, f"condition: segmap\n{old}: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, SpatialTrainConfig)
    assert str(p) in str(e.value) and f"'{old}' was renamed to 'cond_dropout'" in str(e.value)
    assert load_config(write(tmp_path, "cond_dropout: 0.2\n"), SpatialTrainConfig).cond_dropout == 0.2


@pytest.mark.parametrize("text,key", [("steps: ten\n", "steps"), ("steps: 1.5\n", "steps"),
                                      ("inner:\n  lr: fast\n", "inner.lr"),
                                      ("inner:\n  layers: [1, a]\n", "inner.layers[1]"),
                                      ("name: 3\n", "name"), ("inner: 4\n", "inner"), ("steps: true\n", "steps")])
def test_wrong_type_names_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, Outer)
    msg = str(e.value)
    assert str(p) in msg and key in msg and "expected" in msg


def test_invalid_value_and_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="kind: expected one of"):
        load_config(write(tmp_path, "schedule:\n  kind: quadratic\n"), Outer)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "steps: [1,\n"), Outer)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)


def test_from_dict_optional():
    assert from_dict(Outer, {"note": None}).note is None
    assert from_dict(Outer, {"note": "hi"}).note == "hi"


def test_generate_defaults_of_a_recipe_are_checked():
    from latentdiff.errors import ConfigError
    from latentdiff.train.config import GenerateDefaults

    assert GenerateDefaults().as_dict() == {}
    assert GenerateDefaults(sampler="dpm++", guidance=6.0).as_dict() == {"sampler": "dpm++", "guidance": 6.0}
    for bad, field in ((dict(sampler="plms"), "generate.sampler"), (dict(steps=0), "generate.steps"),
                       (dict(guidance=0.5), "generate.guidance")):
        with pytest.raises(ConfigError, match=field):
            GenerateDefaults(**bad)
