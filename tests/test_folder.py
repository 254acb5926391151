"""The image-folder loader: round trip of the shapes writer, other caption sources, and its errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from latentdiff.data import shapes as sh
from latentdiff.data.folder import Box, load_folder
from latentdiff.errors import DataError


def test_shapes_folder_round_trips(tmp_path):
    sh.write_dataset(tmp_path, 40, seed=2, star="with", workers=1)
    records = load_folder(tmp_path)
    assert len(records) == 40
    for index, record in enumerate(records):
        scene, text = sh.scene_for_index(2, index, shapes=sh.SHAPES)
        rgb, seg = sh.render(scene)
        assert record.text == text and record.line == index + 1
        assert record.boxes == tuple(Box(o.phrase, o.box) for o in scene.objects)
        assert (np.asarray(Image.open(record.image_path)) == rgb).all()
        assert (np.asarray(Image.open(record.segmap_path)) == seg).all()


def write_folder(root, lines, images=("a.png",), size=(64, 64), seg=None):
    """A folder with RGB images, an optional segmap and metadata.jsonl made of ``lines`` (str or dict)."""
    root.mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", size).save(root / name)
    if seg:
        Image.new("L", seg[1]).save(root / seg[0])
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (root / "metadata.jsonl").write_text(text + "\n")
    return root


def load_error(root) -> str:
    with pytest.raises(DataError) as info:
        load_folder(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_optional_fields_and_blank_lines(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "a red circle"}, ""])
    (record,) = load_folder(root)
    assert record.text == "a red circle" and record.boxes is None and record.segmap_path is None


def test_missing_image(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "x"}, {"file_name": "b.png", "text": "y"}])
    assert load_error(root) == f"{root}/metadata.jsonl line 2: file_name 'b.png': image not found"


def test_bad_json_line(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "x"}, "", '{"file_name": "a.png", text}'])
    message = load_error(root)
    assert message.startswith(f"{root}/metadata.jsonl line 3: invalid JSON")


@pytest.mark.parametrize("box", [[0, 0, 65, 10], [-1, 0, 5, 5], [10, 10, 10, 20], [0, 0, 10], [0, 0, "a", 4]])
def test_box_outside_image_or_malformed(tmp_path, box):
    line = {"file_name": "a.png", "text": "x", "boxes": [{"phrase": "a red circle", "box": box}]}
    message = load_error(write_folder(tmp_path / "d", [line]))
    assert message.startswith(f"{tmp_path}/d/metadata.jsonl line 1: file_name 'a.png': boxes[0]")


def test_segmap_size_mismatch(tmp_path):
    line = {"file_name": "a.png", "text": "x", "segmap": "a_seg.png"}
    root = write_folder(tmp_path / "d", [line], seg=("a_seg.png", (32, 32)))
    message = load_error(root)
    assert message.startswith(f"{root}/metadata.jsonl line 1: segmap 'a_seg.png': size 32x32 differs")


def test_segmap_missing(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "x", "segmap": "nope.png"}])
    assert "segmap 'nope.png': file not found" in load_error(root)


@pytest.fixture
def outside_file(tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64)).save(secret)
    return secret


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "segmap"])
def test_paths_leaving_the_folder_are_refused(tmp_path, outside_file, monkeypatch, kind):
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(outside_file, root / "link.png")
    names = {"absolute": str(outside_file), "dotdot": "../secret.png", "symlink": "link.png"}
    line = {"file_name": names.get(kind, "a.png"), "text": "x"}
    if kind == "segmap":
        line["segmap"] = "link.png"
    write_folder(root, [line])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    message = load_error(root)
    assert message.startswith(f"{root}/metadata.jsonl line 1: ")
    assert any(word in message for word in ("absolute", "'..'", "outside the folder"))
    assert not any("secret" in p or "link" in p for p in opened)  # never read


def test_duplicate_file_name(tmp_path):
    root = write_folder(tmp_path / "d", [{"file_name": "a.png", "text": "x"}, {"file_name": "a.png", "text": "y"}])
    assert "line 2: file_name 'a.png' repeats line 1" in load_error(root)


def test_missing_fields(tmp_path):
    assert "'text' must be a string" in load_error(write_folder(tmp_path / "a", [{"file_name": "a.png"}]))
    assert "'file_name'" in load_error(write_folder(tmp_path / "b", [{"text": "x"}]))
    assert "expected a JSON object" in load_error(write_folder(tmp_path / "c", ["[1, 2]"]))


def test_metadata_csv(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    Image.new("RGB", (64, 64)).save(root / "a.png")
    boxes = json.dumps([{"phrase": "a red circle", "box": [1, 2, 10, 12]}]).replace('"', '""')
    (root / "metadata.csv").write_text(f'file_name,text,boxes\na.png,"a red circle, big","{boxes}"\nb.png,x,\n')
    assert load_error(root) == f"{root}/metadata.csv line 3: file_name 'b.png': image not found"
    Image.new("RGB", (64, 64)).save(root / "b.png")
    a, b = load_folder(root)
    assert a.text == "a red circle, big" and a.boxes == (Box("a red circle", (1, 2, 10, 12)),) and b.boxes is None


def test_metadata_csv_needs_columns(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "metadata.csv").write_text("image,caption\na.png,x\n")
    assert load_error(root) == f"{root}/metadata.csv line 1: missing column(s) file_name, text"


def test_sidecar_captions(tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (64, 64)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"caption {name}\n")
    Image.new("L", (64, 64)).save(tmp_path / "a_seg.png")
    a, b = load_folder(tmp_path)
    assert (a.text, b.text) == ("caption a", "caption b")
    assert a.segmap_path == tmp_path / "a_seg.png" and b.segmap_path is None


def test_sidecar_missing_captions(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    assert "no captions" in load_error(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("x")
    assert load_error(tmp_path) == f"{tmp_path}: no caption (.txt) for a.png"


def test_not_a_folder(tmp_path):
    assert "not a folder" in load_error(tmp_path / "missing")
