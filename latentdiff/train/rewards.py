"""Rewards r(x_0, c) for reward fine-tuning (:mod:`latentdiff.train.reward_finetune`), by name.

A reward is a function ``reward(images, prompts) -> rewards``: ``images`` a uint8 array (N, H, W, 3),
``prompts`` N strings, the result N finite numbers (a list, a NumPy array or a tensor of shape (N,)).

* ``scorer``: the shapes scorer (:mod:`latentdiff.eval.scorer`): the share of what the prompt asks for that
  is right: each object's colour and shape, its size and position when asked, the relation when asked,
  and the number of objects.
* ``scorer-all``: the scorer's all-or-nothing verdict, 1 when everything is right (``Score.match``), else 0.
* ``compressibility`` / ``incompressibility``: minus / plus the JPEG size in kB at quality 95, the two
  rewards of DDPO (Black et al. 2023, §5.1).
* ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``: the user's function (a module is looked for in the
  current folder too).

Anything that cannot be loaded, and a result of the wrong shape, a non-number, NaN or ±inf, is a one-line
:class:`~latentdiff.errors.UserError` naming the reward.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from latentdiff.errors import UserError

RewardFn = Callable[[np.ndarray, list], object]
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Reward:
    """A loaded reward: its name, the function, and whether prompts must be shapes-world captions."""

    name: str
    fn: RewardFn
    shapes_prompts: bool = False

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """The rewards (N,) float64 of ``images`` (N, H, W, 3) uint8, checked (module docstring)."""
        try:
            values = self.fn(images, list(prompts))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: one line, with where it failed
            what = f"{type(exc).__name__}: {_first_line(exc)}{_where(exc)}"
            raise UserError(f"reward {self.name}: raised {what}") from None
        return check_rewards(values, len(prompts), self.name, prompts)


def check_rewards(values, n: int, name: str, prompts: Sequence[str]) -> np.ndarray:
    """``values`` as (n,) float64, or a one-line error: not numbers, a wrong shape, NaN or ±inf."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"reward {name}: returned {type(values).__name__}, expected {n} numbers (one per image)") \
            from None
    if array.shape != (n,):
        raise UserError(f"reward {name}: returned shape {tuple(array.shape)} for {n} images; expected shape ({n},), "
                        f"one number per image")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"reward {name}: {array[i]} for image {i} (prompt {prompts[i]!r}); rewards must be finite "
                        f"numbers ({bad.size} of {n} were not)")
    return array


# --- built-in rewards ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _spec(prompt: str):
    from latentdiff.data.grammar import parse_caption

    return parse_caption(prompt)


def attribute_share(image: np.ndarray, prompt: str) -> float:
    """Share of the prompt's requests that the scorer finds right in ``image`` (module docstring)."""
    from latentdiff.eval.scorer import score

    s = score(image, _spec(prompt))
    asked = [v for o in s.objects for v in (o.colour, o.shape, o.size, o.position) if v is not None]
    asked += [s.relation] if s.relation is not None else []
    asked.append(s.count)
    return sum(bool(v) for v in asked) / len(asked)


def scorer_share(images: np.ndarray, prompts: list) -> np.ndarray:
    return np.array([attribute_share(im, p) for im, p in zip(images, prompts, strict=True)])


def scorer_all(images: np.ndarray, prompts: list) -> np.ndarray:
    from latentdiff.eval.scorer import score

    return np.array([float(score(im, _spec(p)).match) for im, p in zip(images, prompts, strict=True)])


def jpeg_kb(image: np.ndarray, quality: int = JPEG_QUALITY) -> float:
    """Size in kB (1000 bytes) of ``image`` (H, W, 3) uint8 as a JPEG at ``quality``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


def compressibility(images: np.ndarray, prompts: list) -> np.ndarray:
    return np.array([-jpeg_kb(im) for im in images])


def incompressibility(images: np.ndarray, prompts: list) -> np.ndarray:
    return np.array([jpeg_kb(im) for im in images])


BUILTIN: dict[str, tuple[RewardFn, bool]] = {
    "scorer": (scorer_share, True), "scorer-all": (scorer_all, True),
    "compressibility": (compressibility, False), "incompressibility": (incompressibility, False),
}


# --- loading ------------------------------------------------------------------------------------


def load_reward(spec: str) -> Reward:
    """A built-in reward by name, or the user's ``MODULE:FUNCTION`` / ``FILE.py:FUNCTION``."""
    if spec in BUILTIN:
        fn, shapes = BUILTIN[spec]
        return Reward(spec, fn, shapes)
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UserError(f"--reward {spec}: unknown reward; expected one of {', '.join(BUILTIN)} or "
                        f"MODULE:FUNCTION (a function(images, prompts) -> rewards)")
    module = _import(where, spec)
    fn = getattr(module, name, None)
    if fn is None:
        raise UserError(f"--reward {spec}: {where} has no function '{name}'")
    if not callable(fn):
        raise UserError(f"--reward {spec}: {where}.{name} is a {type(fn).__name__}, not a function")
    return Reward(spec, fn)


def _import(where: str, spec: str):
    """The module a ``--reward`` names: a ``.py`` file, or a module importable from here or the current folder."""
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise UserError(f"--reward {spec}: file not found ({path})")
        module_spec = importlib.util.spec_from_file_location(f"latentdiff_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # as an import would (dataclasses, pickle look it up)
        _run_import(lambda: module_spec.loader.exec_module(module), spec, str(path))
        return module
    sys.path.insert(0, str(Path.cwd()))
    try:
        return _run_import(lambda: importlib.import_module(where), spec, f"module '{where}'", where)
    finally:
        sys.path.remove(str(Path.cwd()))


def _run_import(load: Callable, spec: str, what: str, name: str | None = None):
    """``load()``; a module ``name`` that is not there, or an error while importing, as a one-line error."""
    try:
        return load()
    except ModuleNotFoundError as exc:
        if name is not None and exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UserError(f"--reward {spec}: cannot import {what} ({_first_line(exc)})") from None
        raise UserError(f"--reward {spec}: importing {what} failed (ModuleNotFoundError: {_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while being imported
        why = f"{type(exc).__name__}: {_first_line(exc)}"
        raise UserError(f"--reward {spec}: importing {what} failed ({why})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _where(exc: BaseException) -> str:
    """`` (file.py line N)`` of the innermost frame of the traceback, for the user's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""
