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
