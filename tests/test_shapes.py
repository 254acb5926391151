"""The shapes-world generator follows the contract (docs/shapes.md)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from latentdiff.commands import data as data_cmd
from latentdiff.data import shapes as sh
from latentdiff.errors import UserError
from latentdiff.eval.scorer import parse_caption


def scenes(n, seed=0, **kwargs):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        yield rng, sh.sample_scene(rng, **kwargs)


def test_same_seed_same_scene_and_different_seeds_differ():
    a = sh.sample_scene(np.random.default_rng(3))
    assert a == sh.sample_scene(np.random.default_rng(3))
    assert a != sh.sample_scene(np.random.default_rng(4))


def test_scenes_follow_the_contract():
    counts = set()
    for _, scene in scenes(500, shapes=sh.SHAPES):
        objs = scene.objects
        counts.add(len(objs))
        assert 0 <= scene.background <= sh.BACKGROUND_MAX
        assert len({o.position for o in objs}) == len(objs)  # distinct cells
        for i, o in enumerate(objs):
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert x1 - x0 == y1 - y0 and abs((x1 - x0) - sh.SIZES[o.size]) <= 1
            cx, cy = sh.cell_centre(o.position)
            assert o.centre == ((x0 + x1) / 2, (y0 + y1) / 2)
            assert abs(o.centre[0] - cx) <= sh.JITTER + 0.5 and abs(o.centre[1] - cy) <= sh.JITTER + 0.5
            assert sh.position_of(*o.centre) == o.position
            assert all(sh.boxes_apart(o.box, p.box, 2) for p in objs[i + 1 :])
    assert counts == {1, 2, 3}


def test_render_is_exact():
    for _, scene in scenes(200, shapes=sh.SHAPES):
        rgb, seg = sh.render(scene)
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and seg.shape == (64, 64)
        assert ((seg == 0) == (rgb == scene.background).all(-1)).all()  # segmap covers exactly the shapes
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(seg == sh.SEG_LABELS[o.shape])
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            xs, ys = xs[inside], ys[inside]
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == o.box  # tight bbox == box
            assert (rgb[ys, xs] == sh.PALETTE[o.colour]).all()


@pytest.mark.parametrize(
    "shape, low, high", [("circle", 0.74, 0.83), ("square", 1.0, 1.0), ("triangle", 0.5, 0.6), ("star", 0.38, 0.5)]
)
def test_fill_ratios(shape, low, high):
    for side in range(11, 24):
        assert low <= sh.shape_mask(shape, side, side).mean() <= high


def test_no_star_by_default_with_star_and_only_star():
    assert all(o.shape != "star" for _, s in scenes(300) for o in s.objects)
    assert any(o.shape == "star" for _, s in scenes(100, shapes=sh.SHAPES) for o in s.objects)
    assert all(o.shape == "star" for _, s in scenes(50, shapes=(sh.STAR,)) for o in s.objects)


def test_captions_describe_their_scene():
    forms = set()
    for rng, scene in scenes(600):
        text = sh.caption(scene, rng)
        spec = parse_caption(text)
        assert sorted((o.colour, o.shape) for o in spec.objects) == sorted((o.colour, o.shape) for o in scene.objects)
        n = len(scene.objects)
        if n == 1:
            forms.add((1, spec.objects[0].size is not None, spec.objects[0].position is not None))
        elif n == 2:
            forms.add((2, spec.relation[0] if spec.relation else "and"))
            if spec.relation and len(set((o.colour, o.shape) for o in scene.objects)) == 2:
                by_kind = {(o.colour, o.shape): o for o in scene.objects}
                a, b = (by_kind[(o.colour, o.shape)] for o in spec.objects)
                assert sh.relation_holds(spec.relation[0], a.centre, b.centre)
        else:
            forms.add((3,))
            assert all(o.position is not None for o in spec.objects)
    expected = {(1, s, p) for s in (True, False) for p in (True, False)} | {(3,)}
    expected |= {(2, r) for r in sh.RELATIONS + ("and",)}
    assert forms == expected
    eval_text = sh.caption(sh.sample_scene(np.random.default_rng(1), (1, 1)), np.random.default_rng(0), training=False)
    assert parse_caption(eval_text).objects[0].size and " in the " in eval_text


def test_exclude_held_out_never_shows_held_out_combinations():
    for _, scene in scenes(1500, exclude_held_out=True):
        assert not sh.is_held_out(scene)
    assert any(sh.is_held_out(s) for _, s in scenes(1500))  # without the flag they do occur


def test_validation_triples_are_built_like_the_held_out_ones_and_kept_out_on_request():
    triples = sh.VALIDATION_TRIPLES
    assert len(set(triples)) == 9 and not set(triples) & set(sh.HELD_OUT_TRIPLES)
    assert sorted(p for _, _, p in triples) == sorted(sh.POSITIONS)  # one per position
    assert all(sum(s == shape for _, s, _ in triples) == 3 for shape in sh.BASE_SHAPES)
    assert {c for c, _, _ in triples} == set(sh.COLOURS)

    def validation(scene):
        return any((o.colour, o.shape, o.position) in triples for o in scene.objects)

    kept_out = [s for _, s in scenes(1500, exclude_held_out=True, exclude_validation=True)]
    assert not any(validation(s) or sh.is_held_out(s) for s in kept_out)
    assert any(validation(s) for _, s in scenes(1500, exclude_held_out=True))  # without the flag they occur
    # without the flag the draws are the ones from before it existed: same scenes as the positional call
    for index in range(50):
        a = sh.sample_scene(np.random.default_rng([3, index]), (1, 3), sh.BASE_SHAPES, True)
        b = sh.sample_scene(np.random.default_rng([3, index]), (1, 3), sh.BASE_SHAPES, True, exclude_validation=False)
        assert a == b


def test_validation_triple_prompts_are_unseen_by_a_model_that_kept_them_out():
    prompts = sh.validation_triple_prompts()
    assert len(prompts) == len(set(prompts)) == 18 and not set(prompts) & set(sh.held_out_prompts())
    for text in prompts:
        o = parse_caption(text).objects[0]
        assert (o.colour, o.shape, o.position) in sh.VALIDATION_TRIPLES and o.size in sh.SIZES
    training = sh.training_prompts(200, objects=(1, 1), exclude_validation=True)
    for text in training:
        o = parse_caption(text).objects[0]
        assert (o.colour, o.shape, o.position) not in sh.VALIDATION_TRIPLES
    assert sh.training_prompts(50) == sh.training_prompts(50, exclude_validation=False)


def test_held_out_prompts():
    prompts = sh.held_out_prompts()
    assert len(prompts) == len(set(prompts)) == 18 + 32
    for text in prompts:
        spec = parse_caption(text)
        if len(spec.objects) == 1:
            o = spec.objects[0]
            assert o.size in sh.SIZES and (o.colour, o.shape, o.position) in sh.HELD_OUT_TRIPLES
        else:
            assert spec.relation is not None
            kinds = {(o.colour, o.shape) for o in spec.objects}
            assert any(kinds == set(pair) for pair in sh.HELD_OUT_PAIRS)


def test_inpainting_masks():
    rng, scene = next(scenes(1))
    mask = sh.box_mask(scene, 0, dilate=2)
    x0, y0, x1, y1 = scene.objects[0].box
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert (mask[y0:y1, x0:x1] == 255).all()
    assert (mask > 0).sum() == (min(x1 + 2, 64) - max(x0 - 2, 0)) * (min(y1 + 2, 64) - max(y0 - 2, 0))
    for make in (sh.stroke_mask, sh.rect_mask):
        for i in range(20):
            m = make(np.random.default_rng(i))
            assert m.shape == (64, 64) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
            assert 0 < (m > 0).mean() < 1


def test_writer_is_independent_of_worker_count(tmp_path):
    a = sh.write_dataset(tmp_path / "a", 300, seed=5, workers=1)
    b = sh.write_dataset(tmp_path / "b", 300, seed=5, workers=2)
    assert (a / "metadata.jsonl").read_text() == (b / "metadata.jsonl").read_text()
    for name in ("000000.png", "000299.png", "000123_seg.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    lines = [json.loads(x) for x in (a / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 300 and set(lines[0]) == {"file_name", "text", "boxes", "segmap"}
    assert Image.open(a / lines[0]["segmap"]).mode == "L"


def run_cli(argv):
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_writes_a_folder(tmp_path, capsys):
    out = tmp_path / "set"
    assert run_cli(["data", "shapes", "--out", str(out), "--num", "12", "--objects", "2", "--only-star"]) == 0
    assert str(out) in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["boxes"]) == 2 and "star" in r["text"] for r in rows)
    with pytest.raises(UserError, match="--overwrite"):
        run_cli(["data", "shapes", "--out", str(out), "--num", "3"])
    (out / "notes.txt").write_text("mine")  # not part of the data set: must survive the replacement
    (out / "photo.png").write_bytes(b"not ours")  # listed, but not a name this writer gives: kept too
    with open(out / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "photo.png", "text": "a photo"}) + "\n")
    run_cli(["data", "shapes", "--out", str(out), "--num", "3", "--overwrite", "--exclude-held-out"])
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not any("star" in r["text"] for r in rows)
    # the replaced set's images past the new end are gone, nothing else is
    expected = ({f"{i:06d}{kind}.png" for i in range(3) for kind in ("", "_seg")}
                | {"metadata.jsonl", "notes.txt", "photo.png"})
    assert {p.name for p in out.iterdir()} == expected


@pytest.mark.parametrize("text, expected", [("1", (1, 1)), ("2", (2, 2)), ("1-3", (1, 3)), ("2-3", (2, 3))])
def test_objects_flag(text, expected):
    assert data_cmd.parse_objects(text) == expected


@pytest.mark.parametrize("text", ["0", "4", "3-1", "1-4", "two", ""])
def test_objects_flag_errors(text):
    with pytest.raises(UserError, match="--objects"):
        data_cmd.parse_objects(text)


def test_cli_rejects_both_star_flags(tmp_path):
    with pytest.raises(SystemExit):
        run_cli(["data", "shapes", "--out", str(tmp_path), "--with-star", "--only-star"])


def test_only_star_writes_a_200_image_fine_tuning_set(tmp_path):
    from latentdiff.data.folder import load_folder

    assert run_cli(["data", "shapes", "--out", str(tmp_path / "stars"), "--only-star", "--workers", "1"]) == 0
    records = load_folder(tmp_path / "stars")
    assert len(records) == 200 and all("star" in r.text for r in records)
    assert not any(w in r.text for r in records for w in ("circle", "square", "triangle"))


def test_box_phrases_take_the_article_of_captions():
    import dataclasses

    scene = sh.sample_scene(np.random.default_rng(3), (3, 3), sh.BASE_SHAPES, exclude_held_out=False)
    for obj in scene.objects:
        assert obj.phrase == sh.with_article(f"{obj.colour} {obj.shape}")
    orange = dataclasses.replace(scene.objects[0], colour="orange")
    assert orange.phrase == f"an orange {orange.shape}"


def test_relation_captions_name_the_relation_of_two_object_scenes():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from relation_captions import fixed_article, relation_caption

    boxes = [{"phrase": "a red circle", "box": [40, 0, 60, 20]}, {"phrase": "an orange square", "box": [0, 4, 20, 24]}]
    assert relation_caption({"text": "a red circle and an orange square", "boxes": boxes}) == \
        "a red circle right of an orange square"
    assert relation_caption({"text": "an orange square and a red circle", "boxes": boxes}) == \
        "an orange square left of a red circle"
    same = [{**boxes[0]}, {**boxes[1], "phrase": "a red circle"}]
    assert relation_caption({"text": "a red circle and a red circle", "boxes": same}) == \
        "a red circle right of a red circle"
    assert relation_caption({"text": "a red circle above an orange square", "boxes": boxes}) == \
        "a red circle above an orange square"
    assert fixed_article("a orange square") == "an orange square" and fixed_article("a red circle") == "a red circle"
