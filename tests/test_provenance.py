"""weights_hash: one digest for a model's weight files, independent of how their paths were spelt."""
import hashlib
import os

from latentdiff.provenance import weights_hash


def test_weights_hash_same_for_relative_and_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "m" / "unet").mkdir(parents=True)
    (tmp_path / "m" / "vae").mkdir()
    (tmp_path / "m" / "unet" / "w.safetensors").write_bytes(b"unet")
    (tmp_path / "m" / "vae" / "w.safetensors").write_bytes(b"vae")
    monkeypatch.chdir(tmp_path)
    rel = ["m/unet/w.safetensors", "m/vae/w.safetensors"]
    absolute = [os.path.abspath(f) for f in rel]
    digests = {weights_hash(rel, tmp_path / "m"), weights_hash(absolute, "m"), weights_hash(rel, "m"),
               weights_hash(absolute, tmp_path / "m")}
    assert len(digests) == 1  # a relative run folder (out: runs/default) once crashed validation here
    expected = hashlib.sha256()
    for name, data in (("unet/w.safetensors", b"unet"), ("vae/w.safetensors", b"vae")):
        expected.update(f"{name} {hashlib.sha256(data).hexdigest()}\n".encode())
    assert digests == {expected.hexdigest()}


def test_weights_hash_of_one_file_is_its_sha256(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"abc")
    assert weights_hash([tmp_path / "a.safetensors"]) == hashlib.sha256(b"abc").hexdigest()


def test_a_linked_weight_counts_as_a_copy_in_its_folder(tmp_path):
    """A weight stored once and linked from a second folder (scripts/link_shared_weights.py) hashes as a copy
    would, also when the folder itself is reached through a linked parent."""
    for name in ("copy", "linked", "shared"):
        (tmp_path / name / "vae").mkdir(parents=True)
        (tmp_path / name / "unet").mkdir()
    for name in ("copy", "linked"):
        (tmp_path / name / "unet" / "w.safetensors").write_bytes(b"unet")
    (tmp_path / "copy" / "vae" / "w.safetensors").write_bytes(b"vae")
    (tmp_path / "shared" / "vae" / "w.safetensors").write_bytes(b"vae")
    (tmp_path / "linked" / "vae" / "w.safetensors").symlink_to("../../shared/vae/w.safetensors")
    (tmp_path / "alias").symlink_to(tmp_path / "linked")

    def files(folder):
        return [folder / "unet" / "w.safetensors", folder / "vae" / "w.safetensors"]

    copy = weights_hash(files(tmp_path / "copy"), tmp_path / "copy")
    assert weights_hash(files(tmp_path / "linked"), tmp_path / "linked") == copy
    assert weights_hash(files(tmp_path / "alias"), (tmp_path / "linked").resolve()) == copy
    assert weights_hash(files(tmp_path / "linked"), tmp_path / "alias") == copy


def test_portable_path_is_relative_inside_the_current_folder(tmp_path, monkeypatch):
    from latentdiff.provenance import portable_path

    (tmp_path / "runs" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "runs" / "m") == "runs/m"
    assert portable_path("runs/m") == "runs/m"
    outside = tmp_path.parent / "elsewhere"
    assert portable_path(outside) == str(outside)
