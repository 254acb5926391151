"""Store each shipped weight file once: replace a file in a shipped model folder that is byte-identical to one
in ``latentdiff/assets/default_model`` by a relative symbolic link to it.

    python scripts/link_shared_weights.py [FOLDER ...]     (default: every folder in latentdiff/assets but
                                                            default_model)

The inpainting model is fine-tuned from the default model with its VAE, text encoder and tokenizer frozen, so
those files are identical in both folders (~20 MB). Links keep every folder a complete diffusers folder
(``from_pretrained`` and latentdiff read through them) while git stores the bytes once. Only files of at least
``MIN_BYTES`` are linked; configurations stay plain files. The Makefile runs this after each export into the
package; tests/test_assets.py checks that no two plain files there share their bytes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from latentdiff.provenance import file_sha256  # noqa: E402

ASSETS = ROOT / "latentdiff" / "assets"
MIN_BYTES = 64 * 1024


def digest(path: Path) -> str:
    """SHA-256 of the file's bytes (read afresh: no cache, the files are about to be replaced)."""
    return file_sha256(path, use_cache=False)


def plain_files(folder: Path) -> list[Path]:
    """Regular files of at least MIN_BYTES under ``folder`` (links excluded), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size >= MIN_BYTES)


def link_shared(folder: Path, source: Path) -> list[tuple[Path, Path]]:
    """Replace each file of ``folder`` identical to a file under ``source`` by a relative link; return the pairs."""
    by_hash = {digest(p): p for p in plain_files(source)}
    linked = []
    for path in plain_files(folder):
        target = by_hash.get(digest(path))
        if target is not None:
            path.unlink()
            path.symlink_to(os.path.relpath(target, path.parent))
            linked.append((path, target))
    return linked


def main(argv: list[str]) -> int:
    source = ASSETS / "default_model"
    folders = [Path(a) for a in argv] or sorted(p for p in ASSETS.iterdir() if p.is_dir() and p != source)
    for folder in folders:
        if not folder.is_dir():
            print(f"{folder}: not a folder", file=sys.stderr)
            return 2
        for path, target in link_shared(folder, source):
            print(f"{path} -> {os.path.relpath(target, path.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
