"""Images of a folder decoded once, and their VAE latents encoded once and cached on disk.

The latent cache is a set of safetensors shards (``mean``/``std`` of the VAE posterior per image) in
``<cache>/<key>/``, where the key hashes the VAE's weights and the data's identity (metadata file and
resolution): a retrained VAE or a changed data set gets a new cache, never a stale one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from latentdiff.data.folder import Record

SHARD = 8192


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes and bytes), hex."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_key(records: list[Record], resolution: int, variant: str = "") -> str:
    """Identity of a data set as the cache sees it: resolution, file names, captions, modification times,
    and ``variant`` (how images were converted, when that can differ)."""
    h = hashlib.sha256(f"res={resolution}".encode())
    if variant:
        h.update(f"\0{variant}".encode())
    for r in records:
        h.update(f"{r.image_path.name}\0{r.text}\0".encode())
        h.update(str(r.image_path.stat().st_mtime_ns).encode())
    return h.hexdigest()


def load_image(path: Path, size: int) -> np.ndarray:
    """An image as (size, size, 3) uint8: converted to RGB, centre-cropped to a square, resized."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w != h:
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def square_box(box, width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """A box of a width × height image in the size × size square that ``load_image`` makes of it
    (centre crop to the shorter side, then resize)."""
    s = min(width, height)
    left, top, k = (width - s) // 2, (height - s) // 2, size / s
    x0, y0, x1, y1 = box
    return ((x0 - left) * k, (y0 - top) * k, (x1 - left) * k, (y1 - top) * k)


def layout_of(record, size: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(phrase, normalised box) of each box of a folder record, mapped into the size × size training image."""
    if not record.boxes:
        return []
    with Image.open(record.image_path) as im:
        w, h = im.size
    out = []
    for b in record.boxes:
        x0, y0, x1, y1 = (min(max(v / size, 0.0), 1.0) for v in square_box(b.box, w, h, size))
        out.append((b.phrase, (x0, y0, x1, y1)))
    return out


def segmap_of(record, size: int) -> np.ndarray:
    """(size, size) uint8 class map of a record (centre crop, nearest resize), zeros when it has none."""
    if record.segmap_path is None:
        return np.zeros((size, size), np.uint8)
    with Image.open(record.segmap_path) as im:
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.NEAREST)
        return np.asarray(im, dtype=np.uint8)


def load_images(records: list[Record], size: int, progress: bool = True) -> torch.Tensor:
    """All images of ``records`` as one (N, 3, size, size) uint8 tensor."""
    out = np.empty((len(records), size, size, 3), np.uint8)
    for i, r in enumerate(tqdm(records, desc="reading images", disable=not progress, leave=False)):
        out[i] = load_image(r.image_path, size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def cached_latents(cache_root: Path, vae: torch.nn.Module, records: list[Record], resolution: int,
                   encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                   images: Callable[[], torch.Tensor], variant: str = "") -> tuple[torch.Tensor, torch.Tensor, Path]:
    """(mean, std, folder) of the latents of ``records``: read from the cache when its key matches,
    else computed with ``encode(images())`` shard by shard and written atomically."""
    key = hashlib.sha256((weights_hash(vae) + data_key(records, resolution, variant)).encode()).hexdigest()[:24]
    folder = cache_root / key
    if not (folder / "index.json").is_file():
        _build(folder, encode, images(), len(records))
    index = json.loads((folder / "index.json").read_text())
    shards = [load_file(str(folder / name)) for name in index["shards"]]
    return torch.cat([s["mean"] for s in shards]), torch.cat([s["std"] for s in shards]), folder


def _build(folder: Path, encode, images: torch.Tensor, n: int) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = []
    for k, start in enumerate(tqdm(range(0, n, SHARD), desc="encoding latents", leave=False)):
        mean, std = encode(images[start:start + SHARD])
        name = f"shard{k:04d}.safetensors"
        save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp / name))
        names.append(name)
    (tmp / "index.json").write_text(json.dumps({"shards": names, "count": n}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
