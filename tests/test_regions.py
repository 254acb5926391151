"""Region phrases (latentdiff.regions): a shapes-world prompt's objects bound to a segmentation map's regions
and drawn as a layout too, in the CLI, the web app and the evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentdiff.layout import LayoutEntry, Spatial
from latentdiff.regions import bind_regions, map_regions


def _map(size=64, **regions):
    """A class map with rectangles: name=(label, x0, y0, x1, y1) in pixels, x1/y1 exclusive."""
    seg = np.zeros((size, size), np.uint8)
    for label, x0, y0, x1, y1 in regions.values():
        seg[y0:y1, x0:x1] = label
    return seg


def _boxes(binding):
    return [(e.phrase, tuple(round(v * 64) for v in e.box)) for e in binding.layout]


def test_the_relation_decides_which_circle_is_which():
    seg = _map(a=(1, 4, 26, 16, 38), b=(1, 44, 26, 56, 38))  # two circles, left and right
    left, right = (4, 26, 16, 38), (44, 26, 56, 38)
    b = bind_regions("a blue circle right of a red circle", seg)
    assert _boxes(b) == [("a blue circle", right), ("a red circle", left)] and (b.agreed, b.stated) == (1, 1)
    b = bind_regions("a blue circle left of a red circle", seg)
    assert _boxes(b) == [("a blue circle", left), ("a red circle", right)]


def test_positions_and_sizes_pick_the_regions_of_three_objects():
    seg = _map(small_sq=(2, 4, 4, 16, 16), big_sq=(2, 38, 38, 60, 60), circle=(1, 24, 24, 40, 40))
    b = bind_regions("a green circle in the center, a large blue square in the bottom right and "
                     "a small red square in the top left", seg)
    assert _boxes(b) == [("a green circle", (24, 24, 40, 40)), ("a blue square", (38, 38, 60, 60)),
                         ("a red square", (4, 4, 16, 16))]
    assert (b.agreed, b.stated) == (5, 5)
    b = bind_regions("a small red square, a large blue square and a green circle", seg)  # sizes alone
    assert _boxes(b)[:2] == [("a red square", (4, 4, 16, 16)), ("a blue square", (38, 38, 60, 60))]


def test_a_map_that_contradicts_the_prompt_still_binds_its_only_region():
    b = bind_regions("a red circle in the top left", _map(c=(1, 44, 44, 56, 56)))
    assert _boxes(b) == [("a red circle", (44, 44, 56, 56))] and (b.agreed, b.stated) == (0, 1)
    assert "agree with 0 of the prompt's 1" in b.describe()


def test_without_positions_regions_go_in_reading_order_and_specks_are_not_regions():
    seg = _map(low=(3, 40, 40, 52, 52), high=(3, 10, 8, 22, 20), speck=(3, 60, 0, 61, 3))  # speck: 3 px
    assert [r.box for r in map_regions(seg)] == [(10 / 64, 8 / 64, 22 / 64, 20 / 64),
                                                 (40 / 64, 40 / 64, 52 / 64, 52 / 64)]
    b = bind_regions("a red triangle and a cyan triangle", seg)
    assert _boxes(b) == [("a red triangle", (10, 8, 22, 20)), ("a cyan triangle", (40, 40, 52, 52))]
    assert (b.agreed, b.stated) == (0, 0)


@pytest.mark.parametrize("prompt, seg, reason", [
    ("a cat on a sofa", _map(c=(1, 4, 4, 16, 16)), "the prompt is not a shapes-world caption"),
    ("a red triangle above a blue circle", _map(c=(1, 4, 4, 16, 16)),
     "the prompt names a red triangle and the map has no triangle region"),
    ("a red circle left of a blue circle", _map(c=(1, 4, 4, 16, 16)),
     "the prompt names 2 circles and the map has fewer circle regions"),
])
def test_prompts_that_do_not_bind_say_why(prompt, seg, reason):
    b = bind_regions(prompt, seg)
    assert b.layout is None and b.reason.startswith(reason) and b.describe() == f"not bound: {b.reason}"


def test_the_held_out_scenes_bind_to_their_own_boxes(tmp_path):
    """On shapes-world scenes (seed 90210, the evaluation's), every caption that states positions or a
    relation binds each object to exactly its own box; a caption with 'and' and no positions may swap
    two objects of one shape, which it leaves open."""
    from latentdiff.data.folder import load_folder
    from latentdiff.data.latents import layout_of, segmap_of
    from latentdiff.data.shapes import write_dataset

    write_dataset(tmp_path, 40, seed=90210, workers=1)
    stated = 0
    for rec in load_folder(tmp_path):
        b = bind_regions(rec.text, segmap_of(rec, 64))
        got = sorted((e.phrase, tuple(round(v * 64) for v in e.box)) for e in b.layout)
        want = sorted((p, tuple(round(v * 64) for v in box)) for p, box in layout_of(rec, 64))
        if b.stated:
            stated += 1
            assert got == want, rec.text
        else:
            assert [p for p, _ in got] == sorted(p for p, _ in want), rec.text
    assert stated > 25


# --- the CLI, the web app, the evaluation -------------------------------------------------------------

PROMPT = "a blue square right of a red circle"


def _two_object_map(tmp_path) -> Path:
    seg = np.zeros((32, 32), np.uint8)
    seg[10:20, 2:12] = 1  # circle, left
    seg[10:22, 18:30] = 2  # square, right
    Image.fromarray(seg).save(tmp_path / "seg.png")
    return tmp_path / "seg.png"


def _run(main, capsys, args):
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    png = Path(out.out.split()[0])
    with Image.open(png) as im:
        return png, json.loads(im.text["latentdiff"]), np.asarray(im.convert("RGB")), out.err


def test_cli_binds_the_prompt_to_the_map_and_replays_it(spatial_model_dir, tmp_path, capsys):
    from latentdiff.cli import main
    from latentdiff.pipeline import Pipeline

    seg = _two_object_map(tmp_path)
    base = ["generate", PROMPT, "--model", str(spatial_model_dir), "--steps", "2", "--device", "cpu",
            "--segmap", str(seg)]
    png, record, bound, err = _run(main, capsys, base + ["--out", str(tmp_path / "a")])
    assert "--segmap: region phrases from the prompt: a blue square → (0.56, 0.31, 0.94, 0.69), " \
           "a red circle → (0.06, 0.31, 0.38, 0.62)" in err
    layout = record["extra"]["layout"]
    assert layout["region_phrases"] is True and layout["scale"] == 1.0  # the fixture's layout_scale
    assert [b["phrase"] for b in layout["boxes"]] == ["a blue square", "a red circle"]
    # the same image from the library, layout and map given by hand
    pipe = Pipeline.load(spatial_model_dir, device="cpu").attach_layout(spatial_model_dir / "layout_controlnet")
    pipe.attach_segmap(spatial_model_dir / "controlnet")
    spatial = Spatial([LayoutEntry(b["phrase"], tuple(b["box"])) for b in layout["boxes"]],
                      np.asarray(Image.open(seg)), region_phrases=True)
    np.testing.assert_array_equal(np.asarray(pipe.generate(PROMPT, steps=2, spatial=spatial)[0]), bound)

    _, record, alone, err = _run(main, capsys, base + ["--out", str(tmp_path / "b"), "--no-region-phrases"])
    assert "layout" not in record["extra"] and "region phrases" not in err
    assert not np.array_equal(alone, bound)  # the phrases reached the network

    _, record, _, err = _run(main, capsys, ["generate", "a cat", *base[2:], "--out", str(tmp_path / "c")])
    assert "layout" not in record["extra"]
    assert "--segmap: the prompt's colours are left to the text, the prompt is not a shapes-world caption" in err

    assert main(["replay", str(png), "--segmap", str(seg), "--out", str(tmp_path / "r")]) == 0
    assert "identical to" in capsys.readouterr().out


def test_cli_region_phrases_need_a_layout_checkpoint_and_a_map(spatial_model_dir, tmp_path, capsys):
    import shutil

    from latentdiff.cli import main

    model = tmp_path / "model"
    shutil.copytree(spatial_model_dir, model, ignore=shutil.ignore_patterns("layout_controlnet", "gligen"))
    seg = _two_object_map(tmp_path)
    base = ["generate", PROMPT, "--model", str(model), "--steps", "2", "--device", "cpu", "--segmap", str(seg)]
    _, record, plain, err = _run(main, capsys, base + ["--out", str(tmp_path / "a")])
    assert "has no layout checkpoint to draw the prompt's objects in their regions; the map is drawn alone" in err
    assert "layout" not in record["extra"]
    _, _, alone, _ = _run(main, capsys, base + ["--out", str(tmp_path / "b"), "--no-region-phrases"])
    np.testing.assert_array_equal(plain, alone)
    _, record, _, err = _run(main, capsys, base + ["--out", str(tmp_path / "c"), "--layout-model",
                                                   str(spatial_model_dir / "layout_controlnet")])
    assert record["extra"]["layout"]["region_phrases"] is True
    assert main(["generate", PROMPT, "--model", str(model), "--no-region-phrases"]) == 2
    assert "--no-region-phrases needs --segmap FILE" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--model", str(model), "--layout-model", str(model)]) == 2
    assert "--layout-model needs --layout FILE or --segmap FILE" in capsys.readouterr().err


def test_request_conditions_decides_for_the_cli_and_the_web_app(spatial_model_dir, tmp_path, capsys):
    """The one library function both front ends call: region phrases bound (with a layout checkpoint attached
    on demand), the checkpoint's defaults, a note saying why a prompt was not bound; scales checked alike."""
    from latentdiff.cli import main
    from latentdiff.conditions import Conditions, request_conditions
    from latentdiff.pipeline import Pipeline

    seg = np.asarray(Image.open(_two_object_map(tmp_path)))
    pipe = Pipeline.load(spatial_model_dir, device="cpu").attach_segmap(spatial_model_dir / "controlnet")
    assert request_conditions(pipe, PROMPT, guidance=2.0) == Conditions(None, 2.0)  # neither a layout nor a map
    alone = request_conditions(pipe, PROMPT, segmap=seg)  # nowhere to find a layout checkpoint
    assert alone.spatial.layout is None and "has no layout checkpoint" in alone.notes[0] and not pipe.layout_slots
    off = request_conditions(pipe, PROMPT, segmap=seg, region_phrases=False)
    assert off.spatial.layout is None and off.notes == () and off.spatial.segmap_scale == 1.0
    bound = request_conditions(pipe, PROMPT, segmap=seg, find_layout=lambda: spatial_model_dir / "layout_controlnet")
    assert pipe.layout_slots and bound.spatial.region_phrases and bound.spatial.layout_scale == pipe.layout_scale
    assert [e.phrase for e in bound.spatial.layout] == ["a blue square", "a red circle"]
    assert bound.notes[0].startswith("--segmap: region phrases from the prompt: a blue square")
    cat = request_conditions(pipe, "a cat", segmap=seg, segmap_scale=2.0)
    assert cat.spatial.layout is None and "not a shapes-world caption" in cat.notes[0]
    assert main(["generate", PROMPT, "--segmap", str(tmp_path / "seg.png"), "--layout-scale", "99"]) == 2
    assert "--layout-scale 99: expected 0..50 (1 = no extra guidance)" in capsys.readouterr().err


def test_run_cases_binds_the_captions_as_the_cli_does(spatial_model_dir, tmp_path):
    from latentdiff.data.folder import load_folder
    from latentdiff.data.latents import segmap_of
    from latentdiff.data.shapes import write_dataset
    from latentdiff.eval.spatial import run_cases
    from latentdiff.pipeline import Pipeline

    write_dataset(tmp_path, 2, seed=90210, workers=1)
    records = load_folder(tmp_path)
    pipe = Pipeline.load(spatial_model_dir, device="cpu").attach_layout(spatial_model_dir / "layout_controlnet")
    pipe.attach_segmap(spatial_model_dir / "controlnet")
    metrics, tiles = run_cases(pipe, records, "segmap", 32, steps=2, region_phrases=True)
    assert metrics["region_phrases_bound"] == 2 and metrics["regional_text"] == 0.0  # the fixture's checkpoint: none
    seg = segmap_of(records[1], 32)
    spatial = Spatial(bind_regions(records[1].text, seg).layout, seg, layout_scale=pipe.layout_scale)
    ref = pipe.generate(records[1].text, seed=1, steps=2, height=32, width=32, spatial=spatial)[0]
    np.testing.assert_array_equal(tiles[3], np.asarray(ref))
    alone_metrics, alone = run_cases(pipe, records, "segmap", 32, steps=2)
    assert not np.array_equal(alone[3], tiles[3])
    assert "regional_text" not in alone_metrics  # no layout, no regional text
    shared, _ = run_cases(pipe, records[:1], "segmap", 32, steps=2, region_phrases=True, regional_text=0.5)
    assert shared["regional_text"] == 0.5  # as the images were drawn: from their records


def test_the_layout_checkpoints_region_guidance_is_the_text_guidance_of_region_phrases(spatial_model_dir, tmp_path,
                                                                                       capsys):
    """A layout ControlNet whose condition.json has region_guidance and regional_text sets the text guidance
    of images drawn with region phrases and the regional-text share of every layout, bound or from a file
    (recorded, so replay agrees); --guidance and --regional-text override them; without region phrases the
    model's own guidance stays."""
    import shutil

    from latentdiff.cli import main
    from latentdiff.errors import ConfigError
    from latentdiff.train.spatial import SpatialTrainConfig

    model = tmp_path / "model"
    shutil.copytree(spatial_model_dir, model)
    cond = json.loads((model / "layout_controlnet" / "condition.json").read_text())
    marker = model / "layout_controlnet" / "condition.json"
    marker.write_text(json.dumps({**cond, "region_guidance": 1.5, "regional_text": 0.25}))
    seg = _two_object_map(tmp_path)
    base = ["generate", PROMPT, "--model", str(model), "--steps", "2", "--device", "cpu", "--segmap", str(seg)]
    png, record, _, err = _run(main, capsys, base + ["--out", str(tmp_path / "a")])
    assert record["guidance"] == 1.5 and "text guidance 1.5, the layout checkpoint's region_guidance" in err
    assert record["extra"]["layout"]["regional_text"] == 0.25 and "regional text 0.25, the checkpoint's" in err
    _, record, _, err = _run(main, capsys, base + ["--out", str(tmp_path / "b"), "--guidance", "3",
                                                   "--regional-text", "0"])
    assert record["guidance"] == 3.0 and "region_guidance" not in err and "regional text" not in err
    assert "regional_text" not in record["extra"]["layout"]
    _, record, _, _ = _run(main, capsys, base + ["--out", str(tmp_path / "c"), "--no-region-phrases"])
    assert record["guidance"] == 4.0  # the model's
    assert "layout" not in record["extra"]  # no layout, so no regional text either
    assert main(["replay", str(png), "--segmap", str(seg), "--out", str(tmp_path / "r")]) == 0
    assert "identical to" in capsys.readouterr().out
    (tmp_path / "layout.json").write_text(json.dumps([{"phrase": "a red circle", "box": [2, 10, 12, 20]}]))
    layout_png, record, _, _ = _run(main, capsys, base[:8] + ["--layout", str(tmp_path / "layout.json"),
                                                              "--out", str(tmp_path / "e")])
    assert record["extra"]["layout"]["regional_text"] == 0.25 and record["guidance"] == 4.0
    assert main(["replay", str(layout_png), "--out", str(tmp_path / "r2")]) == 0
    assert "identical to" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="region_guidance: only a layout ControlNet records it"):
        SpatialTrainConfig(condition="segmap", region_guidance=2.0)
    with pytest.raises(ConfigError, match="region_guidance: expected 0..50"):
        SpatialTrainConfig(condition="layout", method="controlnet", region_guidance=-1.0)
    with pytest.raises(ConfigError, match="regional_text: only a layout ControlNet records it"):
        SpatialTrainConfig(condition="segmap", regional_text=0.5)
    with pytest.raises(ConfigError, match=r"regional_text: expected a share in \[0, 1\]"):
        SpatialTrainConfig(condition="layout", method="controlnet", regional_text=1.5)
    assert main(base + ["--regional-text", "2"]) == 2
    assert "--regional-text 2: expected a share in [0, 1]" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--model", str(model), "--regional-text", "0.5"]) == 2
    assert "--regional-text needs --layout FILE or --segmap FILE" in capsys.readouterr().err
    marker.write_text(json.dumps({**cond, "regional_text": 2}))
    assert main(base + ["--out", str(tmp_path / "d")]) == 2
    assert f"{marker}: regional_text 2: expected a share in [0, 1]" in capsys.readouterr().err
