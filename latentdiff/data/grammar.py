"""The shapes world's caption grammar, read back: any caption form of ../shared/design/shapes.md parsed into
the objects it asks for (colour, shape, optional size and position) and an optional relation.

    parse_caption("a small red circle in the top left")   # Spec(objects=(ObjectSpec("red", "circle", ...),))

The scorer (:mod:`latentdiff.eval.scorer`) checks images against a :class:`Spec`; :mod:`latentdiff.regions`
binds a prompt's objects to a map's regions; training reads conditions from captions. The captions
themselves are written by :func:`latentdiff.data.shapes.caption`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from latentdiff.data.shapes import COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene
from latentdiff.errors import UserError


class CaptionError(UserError, ValueError):
    """A caption that is not in any shapes-world form."""


@dataclass(frozen=True)
class ObjectSpec:
    """A requested object; ``size`` and ``position`` are None when the prompt leaves them free."""

    colour: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Spec:
    """A parsed prompt: the objects, and an optional relation ``(word, i, j)``: object i {word} object j."""

    objects: tuple[ObjectSpec, ...]
    relation: tuple[str, int, int] | None = None


_POS = "|".join(sorted(POSITIONS, key=len, reverse=True))  # longest first: "top left" before "top"
_OBJ = (
    rf"an? (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
    rf"(?: (?:in|at) the ({_POS}))?"
)
_ONE = re.compile(_OBJ)
_TWO = re.compile(rf"{_OBJ} ({'|'.join(RELATIONS)}|and) {_OBJ}")
_THREE = re.compile(rf"{_OBJ}, {_OBJ},? and {_OBJ}")


def _normalise(text: str) -> str:
    text = " ".join(text.lower().replace("centre", "center").split()).rstrip(".")
    return text.replace("to the left of", "left of").replace("to the right of", "right of")


def parse_caption(text: str) -> Spec:
    """Parse any caption form of the contract into a :class:`Spec`; raise CaptionError otherwise."""
    norm = _normalise(text)
    for pattern in (_THREE, _TWO, _ONE):
        m = pattern.fullmatch(norm)
        if m is None:
            continue
        groups = list(m.groups())
        relation = None
        if pattern is _TWO:
            word = groups.pop(4)
            relation = None if word == "and" else (word, 0, 1)
        objects = tuple(ObjectSpec(c, s, z, p) for z, c, s, p in zip(*[iter(groups)] * 4))
        return Spec(objects, relation)
    raise CaptionError(
        f"caption {text!r} is not a shapes-world prompt (e.g. 'a small red circle in the top left', "
        "'a red circle left of a blue square', 'a red circle and a blue square')"
    )


def spec_of_scene(scene: Scene) -> Spec:
    """The full spec of a scene: every object with colour, shape, size and position."""
    return Spec(tuple(ObjectSpec(o.colour, o.shape, o.size, o.position) for o in scene.objects))
