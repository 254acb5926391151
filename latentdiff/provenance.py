"""Provenance of generated images: what made them, stored inside the PNG.

Each PNG written by ``latentdiff generate`` carries one ``tEXt`` chunk with key ``latentdiff``: a JSON
object (a :class:`Record`) with the prompt, negative prompt, seed, sampler, steps, guidance, size, the
model's name, path and weights hash, the LoRA files applied (path, scale, sha256), the device and dtype,
the latentdiff version, and the batch the image was drawn in. ``latentdiff replay`` reads it back and regenerates the image.

Weights hash: the SHA-256 over the weight files a pipeline loads (see :func:`weights_hash`), cached by
(path, size, mtime) in ``~/.cache/latentdiff/weights-sha256.json`` so that hashing a model is paid once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentdiff.errors import UserError

PNG_KEY = "latentdiff"
RECORD_VERSION = 1


@dataclass(frozen=True)
class Record:
    """Everything needed to regenerate one image.

    ``seed`` is this image's own seed. The image was drawn as row ``batch_index`` of a batch whose rows
    used seeds ``batch_seed, batch_seed + 1, …`` and prompts ``batch_prompts`` (``None``: every row had
    ``prompt``) — replay redraws that batch, because on a CPU a network's last bits can depend on the batch.
    """

    prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    guidance: float
    height: int
    width: int
    model_name: str
    model_path: str | None  # None: the default model
    model_sha256: str
    device: str
    dtype: str
    latentdiff_version: str
    batch_seed: int
    batch_size: int
    batch_index: int
    batch_prompts: list[str] | None = None
    batch_negative_prompts: list[str] | None = None
    loras: list[dict] | None = None  # LoRA files applied: [{"path", "scale", "sha256"}, ...]
    record_version: int = RECORD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "record") -> "Record":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}: the latentdiff record is not valid JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}: the latentdiff record is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(raw))
        if missing:
            raise UserError(f"{source}: the latentdiff record lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in raw.items() if k in names})


def png_info(record: Record):
    """A ``PngInfo`` holding the record (and a ``Software`` chunk), for ``Image.save(..., pnginfo=)``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, record.to_json())
    info.add_text("Software", f"latentdiff {record.latentdiff_version}")
    return info


def save_png(image, path: str | Path, record: Record) -> Path:
    """Write ``image`` (PIL) to ``path`` as PNG with its provenance record."""
    path = Path(path)
    image.save(path, format="PNG", pnginfo=png_info(record))
    return path


def read_record(path: str | Path) -> Record:
    """The record stored in a PNG written by latentdiff; a :class:`UserError` when there is none."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}).get(PNG_KEY)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: cannot read the image ({exc})") from None
    if text is None:
        raise UserError(f"{path}: no latentdiff record in this image (it was not written by latentdiff generate, "
                        f"or its metadata was stripped)")
    return Record.from_json(text, str(path))


# --- weights hash -------------------------------------------------------------------------------------

def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "latentdiff" / "weights-sha256.json"


def file_sha256(path: str | Path, *, use_cache: bool = True) -> str:
    """SHA-256 of one file, cached by (absolute path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file()
    cache: dict[str, str] = {}
    if use_cache:
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if use_cache:
        cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
        cache[key] = digest
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=0), encoding="utf-8")
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only home: hashing still works, only uncached
    return digest


def weights_hash(files: list[str | Path], root: str | Path | None = None) -> str:
    """One SHA-256 for a set of weight files: sha256 over the lines ``"<name> <sha256 of file>\\n"`` sorted
    by name, where name is the path relative to ``root`` (or the file name). A single file's hash is that
    file's own SHA-256, so it matches ``sha256sum`` of a single-file checkpoint."""
    files = [Path(f).resolve() for f in files]  # a relative path and an absolute root must still compare
    if len(files) == 1:
        return file_sha256(files[0])
    root = Path(root).resolve() if root else None
    names = sorted((str(f.relative_to(root)) if root else f.name, f) for f in files)
    h = hashlib.sha256()
    for name, f in names:
        h.update(f"{name} {file_sha256(f)}\n".encode())
    return h.hexdigest()
