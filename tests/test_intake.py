"""Real-world intake: a folder with every kind of unusual or broken image goes through without a crash,
with the right conversions, skips and summary; empty, caption-less and unreadable folders are clear errors."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from latentdiff.data.folder import load_folder
from latentdiff.data.intake import load_rgb, take_in
from latentdiff.errors import DataError

R = 32
RED, BLUE = (220, 50, 50), (50, 90, 230)


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _sideways() -> Image.Image:
    """80 wide × 40 high: left half red, right half blue."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40], arr[:, 40:] = RED, BLUE
    return Image.fromarray(arr)


def make_messy_folder(root):
    """One image of each kind the intake must handle, each with a name.txt caption. Returns the
    expected (used, skipped) file names."""
    root.mkdir()
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = RED
    rgba[:, 20:, 3] = 255  # left half fully transparent, right half opaque red
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.new("L", (50, 40), 90).save(root / "gray.png")
    Image.new("RGB", (40, 40), BLUE).convert("P", palette=Image.ADAPTIVE).save(root / "palette.png")
    Image.new("CMYK", (48, 40), (0, 200, 200, 0)).save(root / "cmyk.jpg", quality=95)
    deep = np.full((40, 40), 65535, np.uint16)
    deep[:, :20] = 32896  # 128 · 257
    img16 = Image.fromarray(deep)
    assert img16.mode == "I;16"
    img16.save(root / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    (root / "rotated.jpg").write_bytes(_jpeg_bytes(_sideways(), exif=exif.tobytes()))
    Image.new("RGB", (4000, 3000), (40, 160, 60)).save(root / "large.jpg", quality=80)
    Image.new("RGB", (8, 8), RED).save(root / "tiny.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    full = _jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    names = sorted(p.name for p in root.iterdir())
    for name in names:
        (root / name).with_suffix(".txt").write_text(f"a picture called {name}\n")
    skipped = {"corrupt.png", "truncated.jpg", "empty.png"}
    return [n for n in names if n not in skipped], sorted(skipped)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("intake") / "messy"
    used, skipped = make_messy_folder(root)
    return root, used, skipped


def test_every_kind_of_image_goes_through_with_the_right_summary(messy):
    root, used, skipped = messy
    records = load_folder(root)
    intake = take_in(records, R, root=root, progress=False)
    assert [r.image_path.name for r in intake.records] == used
    assert intake.images.shape == (len(used), 3, R, R) and str(intake.images.dtype) == "torch.uint8"
    reasons = dict(intake.skipped)
    assert sorted(reasons) == skipped
    assert reasons["truncated.jpg"].startswith("truncated file")
    assert reasons["corrupt.png"].startswith("not an image or corrupt")
    assert reasons["empty.png"].startswith("not an image or corrupt")
    notes = intake.notes
    assert notes["transparency composited on white"] == ["rgba.png"]
    assert notes["grayscale"] == ["gray.png"] and notes["palette"] == ["palette.png"]
    assert notes["CMYK"] == ["cmyk.jpg"] and notes["16-bit scaled to 8-bit"] == ["deep.png"]
    assert notes["rotated by EXIF orientation"] == ["rotated.jpg"]
    assert notes[f"upscaled (smaller than {R} px)"] == ["tiny.png"]
    text = intake.summary()
    assert text.splitlines()[0].startswith(f"intake: {len(used) + 3} images, {len(used)} used, 3 skipped")
    assert "skipped, truncated file: 1 (truncated.jpg)" in text
    assert "skipped, not an image or corrupt: 2 (corrupt.png, empty.png)" in text
    assert "converted, CMYK: 1 (cmyk.jpg)" in text


def pixels(intake, name):
    i = [r.image_path.name for r in intake.records].index(name)
    return intake.images[i].permute(1, 2, 0).numpy().astype(int)  # (R, R, 3)


def test_conversions_give_the_right_pixels(messy):
    root, _, _ = messy
    white = take_in(load_folder(root), R, progress=False)
    black = take_in(load_folder(root), R, background="black", progress=False)
    assert "transparency composited on black" in black.notes
    for intake, bg in ((white, 255), (black, 0)):
        px = pixels(intake, "rgba.png")
        assert (np.abs(px[:, :R // 2 - 2] - bg) <= 1).all()  # transparent half: the background
        assert (np.abs(px[:, R // 2 + 2:] - RED) <= 1).all()  # opaque half: the colour
    deep = pixels(white, "deep.png")
    assert (deep[:, :R // 2 - 2] == 128).all() and (deep[:, R // 2 + 2:] == 255).all()
    assert (pixels(white, "gray.png") == 90).all()
    assert (np.abs(pixels(white, "palette.png") - BLUE) <= 2).all()
    assert (np.abs(pixels(white, "tiny.png") - RED) <= 1).all()
    large = pixels(white, "large.jpg")
    assert (np.abs(large - (40, 160, 60)) <= 4).all()
    cyan = pixels(white, "cmyk.jpg")  # C=0, M=Y=200/255: red
    assert cyan[..., 0].min() > 200 and cyan[..., 1].max() < 80 and cyan[..., 2].max() < 80
    rot = pixels(white, "rotated.jpg")  # displayed upright: red on top, blue below
    top, bottom = rot[2, R // 2], rot[-3, R // 2]
    assert np.abs(top - RED).max() < 30 and np.abs(bottom - BLUE).max() < 30


def test_unrotated_image_would_differ():
    """The EXIF check above is not vacuous: without the tag the same pixels give left red / right blue."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "plain.jpg"
        path.write_bytes(_jpeg_bytes(_sideways()))
        px, notes = load_rgb(path, R)
    assert notes == [] and np.abs(px[R // 2, 2] - RED).max() < 30 and np.abs(px[R // 2, -3] - BLUE).max() < 30


def test_clear_errors_for_empty_captionless_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images and no metadata"):
        load_folder(tmp_path / "empty")
    (tmp_path / "nocap").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "nocap" / "a.png")
    with pytest.raises(DataError, match="no captions: add metadata.jsonl, metadata.csv or a name.txt"):
        load_folder(tmp_path / "nocap")
    with pytest.raises(DataError, match=r"missing: not a folder \(not found\)"):
        load_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="file.png: not a folder"):
        load_folder(tmp_path / "file.png")
    (tmp_path / "nocap" / "a.txt").write_bytes(b"\xff\xfe caption")
    with pytest.raises(DataError, match=r"a.txt: caption is not UTF-8 text"):
        load_folder(tmp_path / "nocap")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_is_a_data_error(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    folder.chmod(0)
    try:
        with pytest.raises(DataError, match="cannot read"):
            load_folder(folder)
    finally:
        folder.chmod(0o755)


def test_decompression_bombs_are_skipped(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2 x 1000: Pillow refuses it
    from latentdiff.data.folder import Record

    intake = take_in([Record(tmp_path / "big.png", "x")], R, progress=False)
    assert not intake.records and intake.skipped[0][0] == "big.png"
    assert intake.skipped[0][1].startswith("too large")
