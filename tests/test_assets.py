"""The shipped weights: each file stored once (scripts/link_shared_weights.py), every link inside the package."""
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from link_shared_weights import ASSETS, digest, link_shared, plain_files  # noqa: E402


def test_no_two_shipped_files_share_their_bytes():
    seen = defaultdict(list)
    for path in plain_files(ASSETS):
        seen[digest(path)].append(str(path.relative_to(ASSETS)))
    repeated = [names for names in seen.values() if len(names) > 1]
    assert not repeated, f"identical files stored twice (run scripts/link_shared_weights.py): {repeated}"


def test_every_link_in_the_package_points_at_a_file_inside_it():
    links = [p for p in ASSETS.rglob("*") if p.is_symlink()]
    for link in links:
        target = link.resolve()
        assert target.is_file() and ASSETS.resolve() in target.parents, f"{link} -> {target}"


def test_link_shared_replaces_identical_files_by_relative_links(tmp_path):
    src, dst = tmp_path / "a" / "vae", tmp_path / "b" / "vae"
    src.mkdir(parents=True), dst.mkdir(parents=True)
    data = bytes(range(256)) * 512  # 128 kB
    (src / "w.safetensors").write_bytes(data)
    (dst / "w.safetensors").write_bytes(data)
    (dst / "other.safetensors").write_bytes(data[::-1])
    assert link_shared(tmp_path / "b", tmp_path / "a") == [(dst / "w.safetensors", src / "w.safetensors")]
    assert (dst / "w.safetensors").is_symlink() and (dst / "w.safetensors").read_bytes() == data
    assert str((dst / "w.safetensors").readlink()) == "../../a/vae/w.safetensors"
    assert not (dst / "other.safetensors").is_symlink()
