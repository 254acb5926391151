"""LoRA files shipped in the package, found by a short name: ``--lora star`` is ``assets/loras/star.safetensors``.

A name is what a record stores for such a file (:func:`packaged_name`), so that an image made with it replays on
any installation, wherever the package lives.
"""
from __future__ import annotations

from pathlib import Path

PACKAGED_LORAS = Path(__file__).parent / "assets" / "loras"


def packaged_loras() -> list[str]:
    """Names of the LoRA files shipped in the package."""
    return sorted(p.stem for p in PACKAGED_LORAS.glob("*.safetensors")) if PACKAGED_LORAS.is_dir() else []


def is_lora_name(text: str) -> bool:
    """Whether ``text`` can be a shipped LoRA's name: no folder separator, no suffix."""
    return bool(text) and not any(c in text for c in "/\\.")


def packaged_lora(text: str) -> Path | None:
    """The shipped LoRA file named ``text``, or None (``text`` is then a path, or no shipped LoRA's name)."""
    path = PACKAGED_LORAS / f"{text}.safetensors"
    return path if is_lora_name(text) and path.is_file() else None


def packaged_name(path: str | Path) -> str | None:
    """The short name of ``path`` if it is a LoRA file shipped in the package, else None."""
    path = Path(path).resolve()
    return path.stem if path.parent == PACKAGED_LORAS.resolve() and path.suffix == ".safetensors" else None
