"""The web app's server on a tiny model, over HTTP (no browser): requests queue and all finish, progress
counts steps, cancel stops a running request, limits and bad uploads are refused with a message while
the server keeps serving, the PNGs carry their provenance. The browser test is tests/test_webapp_browser.py."""
import base64
import http.client
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentdiff.web.server import make_server, serve_in_thread, url_of
from latentdiff.web.tasks import Limits

TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    srv = make_server(pipe, "127.0.0.1", 0, Limits(max_steps=1000, max_images=4, max_side=256))
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def call(server, path, body=None):
    """(status, JSON reply) of GET path, or POST when body is given."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url_of(server) + path.lstrip("/"), data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def fetch(server, path) -> bytes:
    with urllib.request.urlopen(url_of(server) + path.lstrip("/"), timeout=TIMEOUT) as r:
        return r.read()


def wait(server, job_id, until=("done", "error", "cancelled")):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        status, job = call(server, f"/api/jobs/{job_id}")
        assert status == 200
        if job["state"] in until:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']} after {TIMEOUT} s")


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def txt2img(**kw):
    return {"kind": "txt2img", "prompt": "a red circle", "steps": 2, "sampler": "ddim", "seed": 3, **kw}


def test_info_names_the_model_its_defaults_and_what_is_available(server):
    status, info = call(server, "/api/info")
    assert status == 200 and info["model"] == "tiny_model"
    assert info["defaults"]["height"] == info["defaults"]["width"] == 32
    assert info["limits"] == {"max_steps": 1000, "max_images": 4, "max_side": 256, "max_batch_pixels": 2**18,
                              "max_prompt_chars": 10_000}
    assert info["features"] == {"layout": False, "segmap": False}  # the tiny model has no layout or map checkpoint
    assert "latentdiff train-spatial configs/layout_controlnet.yaml --install" in info["unavailable"]["layout"]
    assert "latentdiff serve --segmap-model DIR" in info["unavailable"]["segmap"]
    assert b"<canvas id=\"inpaint-canvas\"" in fetch(server, "/")
    assert info["inpaint_model"] == "tiny_model" and not info["inpaint_dedicated"]  # no inpainting model: blends


def test_txt2img_png_carries_the_record_the_page_shows(server):
    status, reply = call(server, "/api/jobs", txt2img(num_images=2, negative_prompt="blue"))
    assert status == 202
    job = wait(server, reply["id"])
    assert job["state"] == "done" and job["done"] == job["total"] == 2
    assert [im["record"]["seed"] for im in job["images"]] == [3, 4]
    for im in job["images"]:
        with Image.open(io.BytesIO(fetch(server, im["url"]))) as png:
            assert png.size == (32, 32)
            assert json.loads(png.text["latentdiff"]) == im["record"]
        assert im["record"]["prompt"] == "a red circle" and im["record"]["negative_prompt"] == "blue"


def test_same_request_same_pixels_as_the_library(server):
    _, reply = call(server, "/api/jobs", txt2img(guidance=2.5))
    job = wait(server, reply["id"])
    pipe = server.app.pipe
    ref = pipe.generate("a red circle", steps=2, sampler="ddim", seed=3, guidance=2.5)[0]
    with Image.open(io.BytesIO(fetch(server, job["images"][0]["url"]))) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(ref))


def test_concurrent_requests_queue_and_all_finish(server):
    replies = [None] * 3

    def post(i):
        replies[i] = call(server, "/api/jobs", txt2img(prompt=f"shape {i}", steps=3, seed=i))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 202 for status, _ in replies)
    jobs = [wait(server, r["id"]) for _, r in replies]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert sorted(j["images"][0]["record"]["prompt"] for j in jobs) == ["shape 0", "shape 1", "shape 2"]


def test_cancel_stops_a_running_request_and_the_next_one_runs(server):
    _, long = call(server, "/api/jobs", txt2img(steps=1000, sampler="ddpm"))
    _, queued = call(server, "/api/jobs", txt2img(steps=2))
    running = wait(server, long["id"], until=("running",))
    _, behind = call(server, f"/api/jobs/{queued['id']}")
    assert behind["state"] == "queued" and behind["position"] == 1
    deadline = time.time() + TIMEOUT
    while call(server, f"/api/jobs/{long['id']}")[1]["done"] < 1 and time.time() < deadline:
        time.sleep(0.01)
    status, _ = call(server, f"/api/jobs/{long['id']}/cancel", {})
    assert status == 200 and running["total"] == 1000
    stopped = wait(server, long["id"])
    assert stopped["state"] == "cancelled" and 1 <= stopped["done"] < 1000 and stopped["images"] == []
    assert wait(server, queued["id"])["state"] == "done"


@pytest.mark.parametrize("change, message", [
    ({"steps": 1001}, "steps 1001: expected 1..1000"),
    ({"num_images": 5}, "num_images 5: expected 1..4"),
    ({"width": 10000}, "width 10000: expected 1..256"),
    ({"width": 30}, "width 30: expected a positive multiple of 4"),
    ({"seed": "abc"}, "seed 'abc': expected a whole number"),
    ({"sampler": "plms"}, "unknown sampler 'plms'"),
    ({"guidance": "nan"}, "guidance 'nan': expected a finite number"),
    ({"kind": "video"}, "kind 'video': expected one of txt2img, inpaint, layout, segmap"),
    ({"kind": "layout", "boxes": [{"phrase": "a star", "x0": 0, "y0": 0, "x1": 0.5, "y1": 0.5}]},
     "layout conditioning needs a layout checkpoint and this model has none"),
    ({"kind": "segmap"}, "segmentation-map conditioning needs a segmentation ControlNet and this model has none"),
])
def test_bad_requests_are_refused_with_a_message(server, change, message):
    status, reply = call(server, "/api/jobs", txt2img(**change))
    assert status == 400 and message in reply["error"]


def _scene(size=(32, 32)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size=(32, 32)):
    m = np.zeros((size[1], size[0]), np.uint8)
    m[8:20, 8:20] = 255
    return Image.fromarray(m)


def inpaint_req(image, mask, **kw):
    return {"kind": "inpaint", "prompt": "a blue square", "steps": 2, "sampler": "ddim", "image": image,
            "mask": mask, **kw}


def test_inpaint_keeps_pixels_far_from_the_mask(server):
    scene = _scene()
    status, reply = call(server, "/api/jobs", inpaint_req(data_url(scene), data_url(_mask())))
    assert status == 202
    job = wait(server, reply["id"])
    assert job["state"] == "done" and "inpaint" in job["images"][0]["record"]["extra"]
    with Image.open(io.BytesIO(fetch(server, job["images"][0]["url"]))) as png:
        out = np.asarray(png.convert("RGB"))
    far = np.ones((32, 32), bool)
    far[8 - 5:20 + 5, 8 - 5:20 + 5] = False  # beyond the mask and its 4 px feathering
    assert np.array_equal(out[far], np.asarray(scene)[far])
    assert not np.array_equal(out[8:20, 8:20], np.asarray(scene)[8:20, 8:20])


@pytest.fixture(scope="module")
def inpaint_server(tiny_model_dir, tiny_inpaint_dir):
    """The tiny model served with a dedicated inpainting model for the Inpaint panel."""
    from latentdiff.pipeline import Pipeline

    pipe, inpaint = (Pipeline.load(d, device="cpu") for d in (tiny_model_dir, tiny_inpaint_dir))
    srv = make_server(pipe, "127.0.0.1", 0, Limits(max_steps=100, max_images=4, max_side=256), inpaint_pipe=inpaint)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_dedicated_inpainting_model_runs_the_inpaint_panel_and_only_it(inpaint_server):
    _, info = call(inpaint_server, "/api/info")
    assert (info["model"], info["inpaint_model"], info["inpaint_dedicated"]) == ("tiny_model", "tiny_inpaint", True)
    scene, mask = _scene(), _mask()
    _, reply = call(inpaint_server, "/api/jobs", inpaint_req(data_url(scene), data_url(mask), seed=2))
    job = wait(inpaint_server, reply["id"])
    assert job["state"] == "done" and job["done"] == job["total"] == 2  # progress counts the inpainting U-Net
    record = job["images"][0]["record"]
    assert record["model_name"] == "tiny_inpaint" and record["extra"]["inpaint"]["mode"] == "model"
    ref = inpaint_server.app.inpaint_pipe.inpaint("a blue square", scene, mask, steps=2, sampler="ddim", seed=2)[0]
    with Image.open(io.BytesIO(fetch(inpaint_server, job["images"][0]["url"]))) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(ref))
    _, reply = call(inpaint_server, "/api/jobs", txt2img())
    job = wait(inpaint_server, reply["id"])
    assert job["state"] == "done" and job["images"][0]["record"]["model_name"] == "tiny_model"


def test_serve_picks_the_inpainting_model_as_latentdiff_inpaint_does(tiny_model_dir, tiny_inpaint_dir, tmp_path):
    """The default model gets the shipped inpainting model; another model none unless --inpaint-model names
    one, which must be an inpainting model; 'none' turns it off."""
    from latentdiff.commands.serve import load_inpaint_model
    from latentdiff.errors import UserError
    from latentdiff.inpaint import INPAINT_MODEL_DIR
    from latentdiff.pipeline import Pipeline

    tiny = Pipeline.load(tiny_model_dir, device="cpu")
    assert load_inpaint_model(tiny, None, "cpu") is None and load_inpaint_model(tiny, "none", "cpu") is None
    assert load_inpaint_model(tiny, str(tiny_inpaint_dir), "cpu").name == "tiny_inpaint"
    with pytest.raises(UserError, match=r"--inpaint-model .*tiny_model: not an inpainting model \(its U-Net takes 4 "
                                        r"input channels, an inpainting one 9\)"):
        load_inpaint_model(tiny, str(tiny_model_dir), "cpu")
    with pytest.raises(UserError, match="no such folder"):
        load_inpaint_model(tiny, str(tmp_path / "missing"), "cpu")
    default = Pipeline.load(None, device="cpu")
    assert load_inpaint_model(default, "none", "cpu") is None
    shipped = load_inpaint_model(default, None, "cpu")
    assert shipped.is_inpainting and shipped.path is not None and Path(shipped.path) == INPAINT_MODEL_DIR


def _huge_png() -> str:
    buf = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buf, format="PNG")  # ~12 kB on disk, 10^8 pixels decoded
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("image, mask, message", [
    ("data:text/plain;base64," + base64.b64encode(b"hello, not an image").decode(), None,
     "image: not an image"),
    ("data:image/png;base64,@@@", None, "image: the upload is not base64 data"),
    (None, None, "image: no image uploaded"),
    ("scene", "small mask", "mask: size 16x16 differs from image's 32x32"),
    ("huge", None, "image: the image is 10000x10000 pixels; the largest side allowed is 256 px"),
    ("scene", None, "mask: no image uploaded"),
])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, image, mask, message):
    image = {"scene": data_url(_scene()), "huge": _huge_png()}.get(image, image)
    mask = {"small mask": data_url(_mask((16, 16)))}.get(mask, mask)
    status, reply = call(server, "/api/jobs", inpaint_req(image, mask))
    assert status == 400 and message in reply["error"], reply
    assert call(server, "/api/info")[0] == 200


def test_after_bad_uploads_requests_still_run(server):
    for image in ("data:image/png;base64,@@@", _huge_png(), data_url(_scene())):
        assert call(server, "/api/jobs", inpaint_req(image, data_url(_mask((16, 16)))))[0] == 400
    _, ok = call(server, "/api/jobs", inpaint_req(data_url(_scene()), data_url(_mask()), steps=1))
    assert wait(server, ok["id"])["state"] == "done"


def test_broken_json_and_oversized_bodies_are_refused(server):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=TIMEOUT)
    conn.request("POST", "/api/jobs", body=b"{not json", headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 400 and "not valid JSON" in json.loads(r.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=TIMEOUT)
    conn.putrequest("POST", "/api/jobs")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()  # the body is never sent: the server answers from the header
    r = conn.getresponse()
    assert r.status == 413 and "uploads may total" in json.loads(r.read())["error"]
    conn.close()
    assert call(server, "/api/info")[0] == 200


def test_a_failing_job_reports_its_error_and_the_worker_goes_on(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.app.pipe, "generate", broken)
    _, reply = call(server, "/api/jobs", txt2img())
    job = wait(server, reply["id"])
    assert job["state"] == "error" and job["error"] == "internal error: RuntimeError: boom"
    monkeypatch.undo()
    _, reply = call(server, "/api/jobs", txt2img())
    assert wait(server, reply["id"])["state"] == "done"


# --- layout and segmentation maps (a model folder with layout checkpoints and controlnet/) ----------

@pytest.fixture(scope="module")
def spatial_server(spatial_model_dir):
    from latentdiff.commands.serve import attach_spatial
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(spatial_model_dir, device="cpu")
    attach_spatial(pipe, None, None)  # as `latentdiff serve --model DIR`: MODEL/layout_controlnet, MODEL/controlnet
    srv = make_server(pipe, "127.0.0.1", 0, Limits(max_steps=100, max_images=4, max_side=256))
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


BOX = {"phrase": "a red circle", "x0": 0.05, "y0": 0.05, "x1": 0.45, "y1": 0.45}


def _segmap(size=(32, 32), value=1) -> Image.Image:
    seg = np.zeros(size[::-1], np.uint8)
    seg[2:14, 2:14] = value
    return Image.fromarray(seg, mode="L")


def test_layout_and_segmap_requests_give_the_library_pixels_and_record(spatial_server):
    from latentdiff.layout import LayoutEntry, Spatial

    status, info = call(spatial_server, "/api/info")
    assert info["features"] == {"layout": True, "segmap": True} and info["unavailable"] == {}
    assert info["max_boxes"] == 10
    pipe = spatial_server.app.pipe
    common = {"prompt": "a red circle", "steps": 2, "sampler": "ddim", "seed": 5, "guidance": 2.0}
    _, reply = call(spatial_server, "/api/jobs", {"kind": "layout", "boxes": [BOX], "layout_scale": "1.5", **common})
    job = wait(spatial_server, reply["id"])
    assert job["state"] == "done", job
    record = job["images"][0]["record"]
    assert record["extra"]["layout"] == {"boxes": [{"phrase": "a red circle", "box": [0.05, 0.05, 0.45, 0.45]}],
                                         "scale": 1.5}
    ref = pipe.generate(spatial=Spatial(layout=[LayoutEntry("a red circle", (0.05, 0.05, 0.45, 0.45))],
                                        layout_scale=1.5), **common)[0]
    with Image.open(io.BytesIO(fetch(spatial_server, job["images"][0]["url"]))) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(ref))

    _, reply = call(spatial_server, "/api/jobs", {"kind": "segmap", "segmap": data_url(_segmap()), **common})
    job = wait(spatial_server, reply["id"])
    assert job["state"] == "done", job
    record = job["images"][0]["record"]
    assert record["extra"]["segmap"]["classes"] == [0, 1] and (record["width"], record["height"]) == (32, 32)
    # "a red circle" binds to the map's one circle region (region phrases, on by default): a layout too
    region = LayoutEntry("a red circle", (2 / 32, 2 / 32, 14 / 32, 14 / 32))
    assert record["extra"]["layout"] == {"boxes": [{"phrase": region.phrase, "box": list(region.box)}],
                                         "scale": pipe.layout_scale, "region_phrases": True}
    bound = pipe.generate(spatial=Spatial([region], np.asarray(_segmap()), layout_scale=pipe.layout_scale,
                                          region_phrases=True), **common)[0]
    with Image.open(io.BytesIO(fetch(spatial_server, job["images"][0]["url"]))) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(bound))

    _, reply = call(spatial_server, "/api/jobs", {"kind": "segmap", "segmap": data_url(_segmap()),
                                                  "region_phrases": False, **common})
    job = wait(spatial_server, reply["id"])
    assert job["state"] == "done", job
    assert "layout" not in job["images"][0]["record"]["extra"]
    ref = pipe.generate(spatial=Spatial(segmap=np.asarray(_segmap())), **common)[0]
    with Image.open(io.BytesIO(fetch(spatial_server, job["images"][0]["url"]))) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(ref))
    plain = pipe.generate(**common)[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(ref))  # the map reached the network
    assert not np.array_equal(np.asarray(bound), np.asarray(ref))  # and so did the region phrase


def test_the_layout_and_map_panels_use_the_layout_checkpoints_regional_text(spatial_model_dir, tmp_path):
    """Layouts in the web app, drawn boxes or region phrases, take the layout checkpoint's regional_text, as
    the CLI does; without region phrases the map has no layout and no regional text."""
    import shutil

    from latentdiff.commands.serve import attach_spatial
    from latentdiff.pipeline import Pipeline
    from latentdiff.web.server import App
    from latentdiff.web.tasks import plan_layout, plan_segmap

    model = tmp_path / "model"
    shutil.copytree(spatial_model_dir, model)
    marker = model / "layout_controlnet" / "condition.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "regional_text": 0.25, "region_guidance": 1.5}))
    pipe = Pipeline.load(model, device="cpu")
    attach_spatial(pipe, None, None)
    calls = []

    class Spy:
        def generate(self, **kwargs):
            calls.append(kwargs)
            return []
    for regions in (True, False):
        req = {"kind": "segmap", "prompt": "a red circle", "segmap": data_url(_segmap()), "steps": 1,
               "region_phrases": regions, "guidance": ""}  # a blank field, as the page sends it
        plan_segmap(pipe, req, Limits()).run(Spy())
    plan_layout(pipe, {"kind": "layout", "prompt": "a red circle", "boxes": [BOX], "steps": 1}, Limits()).run(Spy())
    bound, alone, drawn = (c["spatial"] for c in calls)
    assert drawn.regional_text == 0.25 and [e.phrase for e in drawn.layout] == ["a red circle"]
    assert bound.region_phrases and bound.regional_text == 0.25 and [e.phrase for e in bound.layout] == ["a red circle"]
    assert alone.layout is None and alone.regional_text == 0.0
    assert [c["guidance"] for c in calls] == [1.5, 4.0, 4.0]  # region phrases: the checkpoint's region_guidance
    assert App(pipe).info()["region_guidance"] == 1.5  # the page leaves the map panel's guidance blank for it


@pytest.mark.parametrize("request_, message", [
    ({"kind": "layout", "boxes": []}, "boxes: draw at least one box on the canvas"),
    ({"kind": "layout", "boxes": [BOX] * 11}, "boxes: 11 boxes; this model supports at most 10"),
    ({"kind": "layout", "boxes": [{**BOX, "phrase": " "}]}, "box 1: give it a phrase"),
    ({"kind": "layout", "boxes": [{**BOX, "x1": 1.5}]}, "box 1: (0.05, 0.05, 1.5, 0.45) is not a box inside"),
    ({"kind": "layout", "boxes": [BOX], "layout_scale": "lots"}, "layout_scale 'lots': expected a number"),
    ({"kind": "layout", "boxes": [BOX], "layout_scale": 99}, "layout_scale 99: expected 0..50"),
    ({"kind": "segmap"}, "segmap: no image uploaded"),
    ({"kind": "segmap", "segmap": "unknown ids"}, "segmap: unknown class ids [7]; expected 0..4"),
    ({"kind": "segmap", "segmap": "rgb"}, "segmap: mode RGB: expected a single-channel (L) or palette (P) PNG"),
    ({"kind": "segmap", "segmap": "odd size"},
     "segmap: the image is generated at the map's size, 32x30: height 30: expected a positive multiple of 4"),
    ({"kind": "segmap", "segmap": "ok", "region_phrases": "yes"}, "region_phrases 'yes': expected true or false"),
])
def test_bad_layouts_and_maps_are_refused_with_a_message(spatial_server, request_, message):
    uploads = {"unknown ids": data_url(_segmap(value=7)), "rgb": data_url(_segmap().convert("RGB")),
               "odd size": data_url(_segmap((32, 30))), "ok": data_url(_segmap())}
    if request_.get("segmap") in uploads:
        request_ = {**request_, "segmap": uploads[request_["segmap"]]}
    status, reply = call(spatial_server, "/api/jobs", {"prompt": "x", "steps": 1, **request_})
    assert status == 400 and message in reply["error"], reply
    assert call(spatial_server, "/api/info")[0] == 200


def test_serve_names_a_missing_checkpoint_folder(tiny_model_dir, tmp_path, capsys):
    from latentdiff.cli import main

    assert main(["serve", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "0",
                 "--layout-model", str(tmp_path / "nope")]) == 2
    assert f"--layout-model {tmp_path / 'nope'}: folder not found" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: over a minute on a busy 2-core machine
def test_serve_command_prints_the_loopback_url_and_serves(tiny_model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "serve", "--model", str(tiny_model_dir),
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, proc.stderr.read() if not line else line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=TIMEOUT) as r:
            assert json.loads(r.read())["model"] == "tiny_model"
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def test_serve_refuses_a_bad_port_in_one_line(capsys):
    from latentdiff.cli import main

    assert main(["serve", "--port", "http"]) == 2
    assert capsys.readouterr().err.strip() == "latentdiff serve: error: --port 'http': expected an integer"


def test_serve_refuses_a_bad_speed_in_one_line(tiny_model_dir, capsys):
    from latentdiff.cli import main

    assert main(["serve", "--model", str(tiny_model_dir), "--device", "cpu", "--port", "0", "--speed", "warp"]) == 2
    err = capsys.readouterr().err
    assert "--speed 'warp': unknown word 'warp'" in err and err.count("\n") == 1


def test_info_shows_the_model_defaults_even_beyond_the_limits(tiny_model_dir):
    """`--max-steps 20` with a model whose default is 25 steps: the page still loads (a request with 25 is
    refused with a message)."""
    from latentdiff.pipeline import Pipeline
    from latentdiff.web.server import App

    app = App(Pipeline.load(tiny_model_dir, device="cpu"), Limits(max_steps=20, max_side=16))
    info = app.info()
    assert info["defaults"]["steps"] == 25 and info["defaults"]["height"] == 32 and info["limits"]["max_steps"] == 20
