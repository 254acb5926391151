"""Typed configuration: frozen dataclasses, and YAML files that mirror them.

``load_config(path, Cls)`` reads a YAML mapping into the dataclass ``Cls``. Every key must be a field
of the dataclass (nested dataclasses for nested mappings) and every value must have the field's type;
otherwise a :class:`~latentdiff.errors.ConfigError` names the file, the dotted key and the problem (for a
key that was renamed, :data:`RENAMED_KEYS`, its new name).
Missing keys take the dataclass defaults.

Config classes of individual components live next to the code that uses them; this module holds only
the machinery plus the diffusion schedule config shared by training and sampling.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from latentdiff.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Variance schedule of the forward process (see ``latentdiff.diffusion.schedule``)."""

    kind: str = "linear"  # linear | scaled_linear | cosine
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"  # epsilon | v_prediction | sample

    def __post_init__(self):
        check_choice(self, "kind", ("linear", "scaled_linear", "cosine"))
        check_choice(self, "prediction", ("epsilon", "v_prediction", "sample"))
        if self.num_timesteps < 1:
            raise ConfigError(f"num_timesteps: expected a positive integer, got {self.num_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(
                f"beta_start/beta_end: expected 0 < beta_start < beta_end < 1, "
                f"got {self.beta_start}, {self.beta_end}"
            )


# Keys an older recipe may still use, and their names now: an old key is an error that says the new one.
RENAMED_KEYS = {"caption_dropout": "cond_dropout", "text_dropout": "cond_dropout"}

# The samplers (latentdiff.diffusion.sampling implements them); here so that front ends and recipes can check a
# name without importing torch.
SAMPLERS = ("ddpm", "ddim", "dpm++", "euler")

# torch.compile's modes, for the inference speed options and the training loop's ``compile``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_choice(obj: Any, field: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, field)
    if value not in choices:
        raise ConfigError(f"{field}: expected one of {', '.join(choices)}, got {value!r}")


def load_config(path: str | Path, cls: type[T], **overrides: Any) -> T:
    """Read the YAML file ``path`` into the frozen dataclass ``cls`` (unknown keys are errors); then the
    top-level fields in ``overrides`` that are not None replace the file's (command-line flags)."""
    cfg = _load_config(path, cls)
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **given) if given else cfg


def _load_config(path: str | Path, cls: type[T]) -> T:
    raw = read_yaml(path)
    try:
        return from_dict(cls, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML recipe holds ({} for an empty file), unchecked; a file that is missing or not YAML
    is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    return {} if raw is None else raw


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types; errors name the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    renamed = [k for k in unknown if RENAMED_KEYS.get(k) in fields]
    if renamed:
        old, new = renamed[0], RENAMED_KEYS[renamed[0]]
        raise ConfigError(f"key '{prefix}{old}' was renamed to '{prefix}{new}' (one name for the text-condition "
                          f"dropout of every training stage); rename it in the file")
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"unknown key '{key}' (allowed: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def to_dict(obj: Any) -> dict:
    """The plain-dict (YAML/JSON-ready) form of a config dataclass."""
    return dataclasses.asdict(obj)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string: accept numeric strings for floats only.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {_name(tp)}")  # a bug in a config class


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))
