"""Provenance of generated images: what made them, stored inside the PNG.

Each PNG written by ``latentdiff generate`` carries one ``tEXt`` chunk with key ``latentdiff``: a JSON
object (a :class:`Record`) with the prompt, negative prompt, seed, sampler, steps, guidance, size, the
model's name, path and weights hash, the LoRA files applied (path, scale, sha256), the device and dtype,
the latentdiff version, and the batch the image was drawn in. ``latentdiff replay`` reads it back and
regenerates the image: :func:`record` writes a record for a pipeline's image, :func:`replay` redraws it.

A record is input anyone can craft (a PNG's text chunk), so :meth:`Record.from_json` checks every field's
type and range before anything acts on it (:func:`check_record`): a prompt must be text, a batch must be
consistent, a path must not hold a NUL byte, … and, given the caller's :class:`~latentdiff.limits.Limits`
(``replay`` passes its own), sizes, steps, batch and prompt lengths must be within them. Every problem is a
one-line :class:`UserError` naming the field.

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

from latentdiff import __version__
from latentdiff.errors import UserError
from latentdiff.limits import MAX_SEED, MAX_THREADS, Limits, check_int, check_number, check_text, short

PNG_KEY = "latentdiff"
RECORD_VERSION = 1


def portable_path(path: str | Path) -> str:
    """A path as a record keeps it: relative to the current folder when inside it (so a record written in one
    clone reads the same in another), else as given."""
    full = Path(path).resolve()
    here = Path.cwd().resolve()
    return full.relative_to(here).as_posix() if full.is_relative_to(here) else str(path)


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
    def from_json(cls, text: str, source: str = "record", limits: Limits | None = None) -> "Record":
        """Parse and check a record (:func:`check_record`; against ``limits`` when given)."""
        if not isinstance(text, str) or len(text) > MAX_RECORD_CHARS:
            raise UserError(f"{source}: the latentdiff record is not text of at most {MAX_RECORD_CHARS:,} characters")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}: the latentdiff record is not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError):  # a number of thousands of digits, arrays nested thousands deep
            raise UserError(f"{source}: the latentdiff record is not valid JSON (a value too large or too "
                            f"deep)") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}: the latentdiff record is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(raw))
        if missing:
            raise UserError(f"{source}: the latentdiff record lacks {', '.join(missing)}")
        fields = {k: v for k, v in raw.items() if k in names}
        try:
            check_record(fields, limits)
        except UserError as exc:
            raise UserError(f"{source}: the latentdiff record's {exc}") from None
        return cls(**fields)


MAX_RECORD_CHARS = 2**20  # a record of the largest batch of the longest prompts is well under this
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 1000
MAX_LORAS = 64
MAX_BOXES = 64


def check_record(raw: dict, limits: Limits | None = None) -> None:
    """Check the fields of a record (a dict as parsed from its JSON): every field's type and range, the
    batch's consistency, and with ``limits`` the size, steps, batch and prompts against them. A
    :class:`UserError` whose message starts with the field's name."""
    from latentdiff.config import SAMPLERS

    chars = limits.max_prompt_chars if limits is not None else MAX_RECORD_CHARS
    for name in ("prompt", "negative_prompt"):
        check_text(raw[name], name, chars)
    for name in ("model_name", "model_sha256", "device", "dtype", "latentdiff_version"):
        _name(raw[name], name)
    _path(raw["model_path"], "model_path", optional=True)
    if raw["sampler"] not in SAMPLERS:
        raise UserError(f"sampler {short(raw['sampler'])}: expected one of {', '.join(SAMPLERS)}")
    steps = check_int(raw["steps"], "steps", 1)
    if limits is not None:
        limits.check_steps(steps)
    check_number(raw["guidance"], "guidance")
    for name in ("height", "width"):
        check_int(raw[name], name, 1)
        if limits is not None:
            limits.check_side(name, raw[name])
    n = check_int(raw["batch_size"], "batch_size", 1)
    if limits is not None:
        limits.check_images(n, "batch_size")
    check_int(raw["batch_index"], "batch_index", 0, n - 1)
    check_int(raw["batch_seed"], "batch_seed", 0, MAX_SEED - (n - 1))  # every row's seed fits
    check_int(raw["seed"], "seed", 0, MAX_SEED)
    if raw["seed"] != raw["batch_seed"] + raw["batch_index"]:
        raise UserError(f"seed {raw['seed']}: expected batch_seed + batch_index = "
                        f"{raw['batch_seed'] + raw['batch_index']}")
    for name in ("batch_prompts", "batch_negative_prompts"):
        texts = raw.get(name)
        if texts is None:
            continue
        if not isinstance(texts, list) or len(texts) != n:
            raise UserError(f"{name}: expected a list of batch_size = {n} prompts or null")
        for text in texts:
            check_text(text, name, chars)
    _loras(raw.get("loras"))
    version = raw.get("record_version", RECORD_VERSION)
    check_int(version, "record_version", 1)
    if version > RECORD_VERSION:
        raise UserError(f"record_version {version}: written by a newer latentdiff; this one reads {RECORD_VERSION}")
    _extra(raw.get("extra", {}), chars)


def _name(value, name: str) -> str:
    check_text(value, name, MAX_NAME_CHARS)
    return value


def _path(value, name: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    check_text(value, name, MAX_PATH_CHARS)
    if not value:
        raise UserError(f"{name}: expected a path, got ''")


def _loras(loras) -> None:
    if loras is None:
        return
    if not isinstance(loras, list) or len(loras) > MAX_LORAS:
        raise UserError(f"loras: expected a list of at most {MAX_LORAS} {{path, scale, sha256}} objects or null")
    for i, entry in enumerate(loras):
        if not isinstance(entry, dict) or not {"path", "scale", "sha256"} <= set(entry):
            raise UserError(f"loras[{i}]: expected an object with path, scale and sha256")
        _path(entry["path"], f"loras[{i}].path")
        check_number(entry["scale"], f"loras[{i}].scale")
        _name(entry["sha256"], f"loras[{i}].sha256")


def _object(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{name} {short(value)}: expected a JSON object")
    return value


def _extra(extra, chars: int) -> None:
    """The parts of ``extra`` replay acts on: layout, segmap, classifier guidance, speed, checkpoints."""
    _object(extra, "extra")
    if "inpaint" in extra:
        _object(extra["inpaint"], "extra.inpaint")
    if "layout" in extra:
        layout = _object(extra["layout"], "extra.layout")
        boxes = layout.get("boxes")
        if not isinstance(boxes, list) or not 1 <= len(boxes) <= MAX_BOXES:
            raise UserError(f"extra.layout.boxes: expected a list of 1 to {MAX_BOXES} boxes")
        for i, box in enumerate(boxes):
            where = f"extra.layout.boxes[{i}]"
            _object(box, where)
            check_text(box.get("phrase"), f"{where}.phrase", chars)
            xyxy = box.get("box")
            if not isinstance(xyxy, list) or len(xyxy) != 4:
                raise UserError(f"{where}.box {short(xyxy)}: expected [x0, y0, x1, y1] in [0, 1]")
            x0, y0, x1, y1 = (check_number(v, f"{where}.box", 0.0, 1.0) for v in xyxy)
            if not (x0 < x1 and y0 < y1):
                raise UserError(f"{where}.box {short(xyxy)}: expected x0 < x1 and y0 < y1")
        check_number(layout.get("scale"), "extra.layout.scale")
        if not isinstance(layout.get("region_phrases", False), bool):
            raise UserError(f"extra.layout.region_phrases {short(layout['region_phrases'])}: expected true or false")
        check_number(layout.get("regional_text", 0.0), "extra.layout.regional_text", 0.0, 1.0)
    if "segmap" in extra:
        seg = _object(extra["segmap"], "extra.segmap")
        _name(seg.get("sha256"), "extra.segmap.sha256")
        check_number(seg.get("scale"), "extra.segmap.scale")
    if "classifier_guidance" in extra:
        cg = _object(extra["classifier_guidance"], "extra.classifier_guidance")
        _name(cg.get("class"), "extra.classifier_guidance.class")
        check_number(cg.get("scale", 5.0), "extra.classifier_guidance.scale")
        _path(cg.get("classifier_path"), "extra.classifier_guidance.classifier_path", optional=True)
    if "speed" in extra:
        for key, value in _object(extra["speed"], "extra.speed").items():
            if key == "threads":
                check_int(value, "extra.speed.threads", 1, MAX_THREADS)
            elif not isinstance(value, (bool, str, type(None))):
                raise UserError(f"extra.speed.{short(key, 30)} {short(value)}: expected true, false, a word or null")
    if "spatial_checkpoints" in extra:
        for key, value in _object(extra["spatial_checkpoints"], "extra.spatial_checkpoints").items():
            _path(value, f"extra.spatial_checkpoints.{short(key, 30)}", optional=True)


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


def read_record(path: str | Path, limits: Limits | None = None) -> Record:
    """The record stored in a PNG written by latentdiff, checked (against ``limits`` when given); a
    :class:`UserError` when there is none or it is malformed."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found")
    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}).get(PNG_KEY)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read the image ({short(str(exc), 200)})") from None
    if text is None:
        raise UserError(f"{path}: no latentdiff record in this image (it was not written by latentdiff generate, "
                        f"or its metadata was stripped)")
    return Record.from_json(text, str(path), limits)


# --- record and replay ----------------------------------------------------------------------------------

def record(pipe, batch: list, index: int, *, steps, guidance, sampler, height, width, device=None,
           dtype=None, guide=None, spatial=None) -> Record:
    """The :class:`Record` of row ``index`` of ``batch`` (:class:`latentdiff.request.Row` values) drawn by
    ``pipe`` (a :class:`~latentdiff.pipeline.Pipeline`): ``guide`` (classifier guidance), the pipeline's speed
    options and ``spatial`` (the layout / map, :class:`latentdiff.layout.Spatial`, with the checkpoints used)
    are described in ``extra``."""
    row = batch[index]
    device, dtype = device or pipe.device, dtype or pipe.dtype
    prompts = [r.prompt for r in batch]
    negs = [r.negative_prompt for r in batch]
    extra = {**({"classifier_guidance": guide.describe()} if guide is not None else {}),
             **({"speed": pipe.speed.describe()} if pipe.speed is not None else {})}
    if spatial is not None:
        extra.update(spatial.describe())
        extra["spatial_checkpoints"] = dict(pipe.spatial_paths)
    return Record(
        prompt=row.prompt, negative_prompt=row.negative_prompt, seed=row.seed, sampler=sampler, steps=steps,
        guidance=guidance, height=height, width=width, model_name=pipe.name,
        model_path=None if pipe.is_default or pipe.path is None else str(pipe.path),
        model_sha256=pipe.weights_sha256, device=device.type, dtype=str(dtype).removeprefix("torch."),
        latentdiff_version=__version__, batch_seed=batch[0].seed, batch_size=len(batch), batch_index=index,
        batch_prompts=None if len(set(prompts)) == 1 else prompts,
        batch_negative_prompts=None if len(set(negs)) == 1 else negs, loras=pipe.loras or None, extra=extra)


def replay(pipe, rec: Record, guide=None, segmap=None):
    """Regenerate the image (PIL, with its record) that ``rec`` describes: redraw its batch with ``pipe`` and
    return its row. An image made with classifier guidance needs its ``guide``; one made with a layout or a
    segmentation map needs those checkpoints attached, and the map itself as ``segmap`` ((H, W) class ids,
    checked against the recorded hash); the boxes and scales come from the record."""
    from PIL import Image

    # imported here: reading and checking a record must not import torch
    from latentdiff.layout import recorded_spatial
    from latentdiff.request import Row, check_batch

    spatial = recorded_spatial(rec, segmap)
    if "inpaint" in rec.extra:
        raise UserError("an inpainted image: replay cannot redraw it without the input image and mask; "
                        "run latentdiff inpaint again with the settings in its record")
    apply_recorded_loras(pipe, rec.loras or [])
    n = rec.batch_size
    pipe.limits.check_images(n, "batch_size")  # before the rows are built (read_record checks it too)
    prompts = rec.batch_prompts or [rec.prompt] * n
    negs = rec.batch_negative_prompts or [rec.negative_prompt] * n
    if len(prompts) != n or len(negs) != n or not 0 <= rec.batch_index < n:
        raise UserError("the latentdiff record's batch fields are inconsistent")
    rows = [Row(p, q, rec.batch_seed + i) for i, (p, q) in enumerate(zip(prompts, negs))]
    if "classifier_guidance" in rec.extra and guide is None:
        raise UserError("the image was made with classifier guidance; replay needs its classifier")
    opts = pipe.resolve(rec.steps, rec.guidance, rec.sampler, rec.height, rec.width)
    check_batch(pipe, n, opts["steps"], opts["height"], opts["width"], recorded=True)
    pixels = pipe.decode_latents(pipe.sample_rows(rows, guide=guide, spatial=spatial, **opts))
    img = Image.fromarray(pixels[rec.batch_index])
    img.info[PNG_KEY] = record(pipe, rows, rec.batch_index, **opts, guide=guide, spatial=spatial).to_json()
    return img


def apply_recorded_loras(pipe, recorded: list[dict]) -> None:
    """Apply the LoRA files a record names to ``pipe`` (unless it already has exactly those), checking that
    each file still has the recorded contents."""
    def key(entries):
        return [(e["sha256"], float(e["scale"])) for e in entries]

    if key(pipe.loras) == key(recorded):
        return
    if pipe.loras:
        raise UserError("this pipeline has other LoRA files applied than the record names")
    from latentdiff.packaged import packaged_lora

    for entry in recorded:  # a path, or the name of a LoRA shipped in the package
        if not (Path(entry["path"]).is_file() or packaged_lora(entry["path"])):
            raise UserError(f"the image was made with the LoRA file {entry['path']}, which is not there any more")
    pipe.load_loras([(e["path"], e["scale"]) for e in recorded])
    for entry, loaded in zip(recorded, pipe.loras):
        if loaded["sha256"] != entry["sha256"]:
            raise UserError(f"{entry['path']}: has sha256 {loaded['sha256'][:12]}…, the image was made with "
                            f"{entry['sha256'][:12]}…")

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


def model_sha256(weight_files: list[Path], path: Path | None) -> str:
    """The weights hash a record names for a model loaded from ``path``: :func:`weights_hash` of its weight
    files (names relative to ``path`` when it is a folder), or "unsaved" for an in-memory model."""
    if not weight_files:
        return "unsaved"
    return weights_hash(weight_files, path if path and path.is_dir() else None)


def _name_in(file: Path, root: Path) -> str:
    """``file``'s path relative to ``root``, both reached through any linked folders (resolved), but the file
    itself not followed: a weight stored once and linked from a second model folder is named by its place in
    this folder, as it would be were it a copy."""
    return str((file.parent.resolve() / file.name).relative_to(root.resolve()))


def weights_hash(files: list[str | Path], root: str | Path | None = None) -> str:
    """One SHA-256 for a set of weight files: sha256 over the lines ``"<name> <sha256 of file>\\n"`` sorted
    by name, where name is the path relative to ``root`` (or the file name). A single file's hash is that
    file's own SHA-256, so it matches ``sha256sum`` of a single-file checkpoint."""
    files = [Path(os.path.abspath(f)) for f in files]
    if len(files) == 1:
        return file_sha256(files[0])
    names = sorted((_name_in(f, Path(root)) if root else f.name, f) for f in files)
    h = hashlib.sha256()
    for name, f in names:
        h.update(f"{name} {file_sha256(f)}\n".encode())
    return h.hexdigest()
