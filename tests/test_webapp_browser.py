"""The web app in a real browser: Debian's headless Chromium driven by selenium through Debian's
chromedriver (nothing is downloaded). Type a prompt, generate, see the image and its provenance; paint a
mask and inpaint; two pages generating at once both finish; bad uploads give a message in the page.
Skipped (with the reason) without selenium or chromium: `make test-ui` installs both and runs this."""
import io
import json
import os
import shutil
import urllib.request

import numpy as np
import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make test-ui installs it)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from latentdiff.web.server import make_server, serve_in_thread, url_of  # noqa: E402
from latentdiff.web.tasks import Limits  # noqa: E402

CHROMIUM = os.environ.get("LATENTDIFF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = os.environ.get("LATENTDIFF_CHROMEDRIVER") or shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not "
                                "installed (make test-ui installs them)")
WAIT = 120


def _serve(model_dir, inpaint_dir=None):
    from latentdiff.commands.serve import attach_spatial, load_inpaint_model
    from latentdiff.pipeline import Pipeline

    pipe = Pipeline.load(model_dir, device="cpu")
    attach_spatial(pipe, None, None)  # MODEL/layout_controlnet and MODEL/controlnet, as `latentdiff serve` does
    inpaint = load_inpaint_model(pipe, inpaint_dir and str(inpaint_dir), "cpu")  # as --inpaint-model DIR does
    srv = make_server(pipe, "127.0.0.1", 0, Limits(max_steps=200, max_images=4, max_side=256), inpaint_pipe=inpaint)
    serve_in_thread(srv)
    return srv


@pytest.fixture(scope="module")
def server(spatial_model_dir, tiny_inpaint_dir):
    """The tiny model with (untrained, opened) layout and segmentation checkpoints and a tiny inpainting model
    for the Inpaint panel: every panel works."""
    srv = _serve(spatial_model_dir, tiny_inpaint_dir)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def open_page(browser, server, panel="txt2img"):
    browser.get("about:blank")  # a fresh page: only the hash would change otherwise, and no reload happen
    browser.get(url_of(server) + f"#{panel}")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    browser.find_element(By.ID, f"tab-{panel}").click()


def fill(browser, element_id, text):
    el = browser.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(text))


def wait_for_image(browser, panel, count=1):
    """The gallery's first figure once ``count`` images are shown and decoded."""
    def shown(d):
        imgs = d.find_elements(By.CSS_SELECTOR, f"#{panel}-gallery img")
        ok = len(imgs) >= count and all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
        return imgs if ok else False
    WebDriverWait(browser, WAIT).until(shown)
    return browser.find_element(By.CSS_SELECTOR, f"#{panel}-gallery figure")


def wait_for_error(browser, panel):
    el = browser.find_element(By.ID, f"{panel}-error")
    WebDriverWait(browser, WAIT).until(lambda d: el.is_displayed() and el.text)
    return el.text


def png_of(browser, server, figure):
    href = figure.find_element(By.TAG_NAME, "a").get_attribute("href")
    with urllib.request.urlopen(href, timeout=WAIT) as r:
        return Image.open(io.BytesIO(r.read()))


def test_type_a_prompt_generate_see_image_and_provenance(browser, server):
    open_page(browser, server)
    fill(browser, "txt2img-prompt", "a green triangle")
    fill(browser, "txt2img-steps", 3)
    browser.find_element(By.CSS_SELECTOR, "#panel-txt2img .random-seed").click()
    seed = int(browser.find_element(By.ID, "txt2img-seed").get_attribute("value"))
    browser.find_element(By.ID, "txt2img-generate").click()
    fig = wait_for_image(browser, "txt2img")
    shown = json.loads(fig.find_element(By.CLASS_NAME, "provenance").text)
    assert shown["prompt"] == "a green triangle" and shown["steps"] == 3 and shown["seed"] == seed
    link = fig.find_element(By.TAG_NAME, "a")
    assert link.get_attribute("download").endswith(".png")
    with png_of(browser, server, fig) as png:
        assert json.loads(png.text["latentdiff"]) == shown  # the download keeps the metadata
    assert browser.find_element(By.ID, "txt2img-progress").get_attribute("value") == "1"


def _scene_file(tmp_path, size=(32, 32), name="scene.png"):
    rng = np.random.default_rng(1)
    path = tmp_path / name
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def upload_inpaint_image(browser, path, expect_preview=True):
    browser.find_element(By.ID, "inpaint-image").send_keys(str(path))
    hint = browser.find_element(By.ID, "inpaint-hint")
    want = "paint over" if expect_preview else "No preview"
    WebDriverWait(browser, WAIT).until(lambda d: want in hint.text)


def test_paint_a_mask_and_inpaint(browser, server, tmp_path):
    open_page(browser, server, "inpaint")
    assert browser.find_element(By.ID, "inpaint-model").text == "Repainted by the inpainting model tiny_inpaint."
    scene = _scene_file(tmp_path)
    upload_inpaint_image(browser, scene)
    canvas = browser.find_element(By.ID, "inpaint-canvas")
    # a diagonal stroke through the middle of the 320-px canvas (the 32-px image's centre ± 4 px)
    ActionChains(browser).move_to_element_with_offset(canvas, -40, -40).click_and_hold() \
        .move_by_offset(40, 40).move_by_offset(40, 40).release().perform()
    fill(browser, "inpaint-prompt", "a blue square")
    fill(browser, "inpaint-steps", 3)
    browser.find_element(By.ID, "inpaint-generate").click()
    fig = wait_for_image(browser, "inpaint")
    record = json.loads(fig.find_element(By.CLASS_NAME, "provenance").text)
    assert record["prompt"] == "a blue square" and "inpaint" in record["extra"]
    assert record["model_name"] == "tiny_inpaint" and record["extra"]["inpaint"]["mode"] == "model"
    with png_of(browser, server, fig) as png, Image.open(scene) as src:
        out, inp = np.asarray(png.convert("RGB")), np.asarray(src.convert("RGB"))
    border = np.zeros((32, 32), bool)
    border[:3], border[-3:], border[:, :3], border[:, -3:] = True, True, True, True
    assert np.array_equal(out[border], inp[border])  # far from the stroke: the input, exactly
    assert not np.array_equal(out[13:19, 13:19], inp[13:19, 13:19])  # the painted middle was repainted


def test_two_pages_generating_at_once_both_finish(browser, server):
    pages = []
    for i in range(2):
        if i:
            browser.switch_to.new_window("tab")
        open_page(browser, server)
        fill(browser, "txt2img-prompt", f"page {i}")
        fill(browser, "txt2img-steps", 60)
        pages.append(browser.current_window_handle)
    for handle in pages:  # click both before either can finish
        browser.switch_to.window(handle)
        browser.find_element(By.ID, "txt2img-generate").click()
    prompts = []
    for handle in pages:
        browser.switch_to.window(handle)
        fig = wait_for_image(browser, "txt2img")
        prompts.append(json.loads(fig.find_element(By.CLASS_NAME, "provenance").text)["prompt"])
    assert prompts == ["page 0", "page 1"]
    first, second = list(server.app.queue.jobs.values())[-2:]
    assert second.created < first.finished  # the second was asked for while the first still ran
    browser.switch_to.window(pages[1])
    browser.close()
    browser.switch_to.window(pages[0])


def test_bad_uploads_show_a_message_and_the_page_goes_on(browser, server, tmp_path):
    open_page(browser, server, "inpaint")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    upload_inpaint_image(browser, text, expect_preview=False)
    browser.find_element(By.ID, "inpaint-generate").click()
    assert "image: not an image" in wait_for_error(browser, "inpaint")

    huge = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(huge)
    upload_inpaint_image(browser, huge, expect_preview=False)
    browser.find_element(By.ID, "inpaint-generate").click()
    assert "10000x10000 pixels; the largest side allowed is 256 px" in wait_for_error(browser, "inpaint")

    upload_inpaint_image(browser, _scene_file(tmp_path))
    small = tmp_path / "mask16.png"
    Image.new("L", (16, 16), 255).save(small)
    browser.find_element(By.ID, "inpaint-mask-file").send_keys(str(small))
    WebDriverWait(browser, WAIT).until(lambda d: "mask16.png" in d.find_element(By.ID, "inpaint-hint").text)
    browser.find_element(By.ID, "inpaint-generate").click()
    assert "mask: size 16x16 differs from image's 32x32" in wait_for_error(browser, "inpaint")

    browser.find_element(By.ID, "tab-txt2img").click()  # the server still serves
    fill(browser, "txt2img-prompt", "after the bad uploads")
    fill(browser, "txt2img-steps", 2)
    browser.find_element(By.ID, "txt2img-generate").click()
    fig = wait_for_image(browser, "txt2img")
    assert "after the bad uploads" in fig.find_element(By.CLASS_NAME, "provenance").text


def test_draw_a_layout_and_generate(browser, server):
    open_page(browser, server, "layout")
    assert not browser.find_element(By.ID, "layout-unavailable").is_displayed()
    canvas = browser.find_element(By.ID, "layout-canvas")  # 320 px; drag over its top-left quarter
    ActionChains(browser).move_to_element_with_offset(canvas, -100, -100).click_and_hold() \
        .move_by_offset(60, 60).move_by_offset(40, 40).release().perform()
    phrases = browser.find_elements(By.CSS_SELECTOR, "#layout-boxes input.phrase")
    assert len(phrases) == 1
    phrases[0].send_keys("a red circle")
    fill(browser, "layout-prompt", "a red circle")
    fill(browser, "layout-steps", 3)
    fill(browser, "layout-scale", 2)
    browser.find_element(By.ID, "layout-generate").click()
    fig = wait_for_image(browser, "layout")
    record = json.loads(fig.find_element(By.CLASS_NAME, "provenance").text)
    layout = record["extra"]["layout"]
    assert layout["scale"] == 2 and [b["phrase"] for b in layout["boxes"]] == ["a red circle"]
    x0, y0, x1, y1 = layout["boxes"][0]["box"]
    assert 0 <= x0 < x1 <= 0.5 + 1e-6 and 0 <= y0 < y1 <= 0.5 + 1e-6
    browser.find_element(By.ID, "layout-clear").click()
    browser.find_element(By.ID, "layout-generate").click()
    assert "boxes: draw at least one box on the canvas" in wait_for_error(browser, "layout")


def test_upload_a_segmentation_map_and_generate(browser, server, tmp_path):
    open_page(browser, server, "segmap")
    seg = np.zeros((32, 32), np.uint8)
    seg[4:20, 8:24] = 2
    Image.fromarray(seg, mode="L").save(tmp_path / "seg.png")
    Image.fromarray(seg * 3, mode="L").save(tmp_path / "bad.png")  # class 6 is not a shapes class
    browser.find_element(By.ID, "segmap-file").send_keys(str(tmp_path / "bad.png"))
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "segmap-preview").is_displayed())
    browser.find_element(By.ID, "segmap-generate").click()
    assert "segmap: unknown class ids [6]; expected 0..4" in wait_for_error(browser, "segmap")
    browser.find_element(By.ID, "segmap-file").send_keys(str(tmp_path / "seg.png"))
    fill(browser, "segmap-prompt", "a blue square")
    fill(browser, "segmap-steps", 3)
    browser.find_element(By.ID, "segmap-generate").click()
    fig = wait_for_image(browser, "segmap")
    record = json.loads(fig.find_element(By.CLASS_NAME, "provenance").text)
    assert record["prompt"] == "a blue square" and record["extra"]["segmap"]["classes"] == [0, 2]
    # the preview paints class 2 (square) in the shapes palette, not near-black
    rgb = browser.execute_script("const c = document.getElementById('segmap-preview');"
                                 "return Array.from(c.getContext('2d').getImageData(12, 10, 1, 1).data)")
    assert rgb[:3] == [60, 110, 220]


def test_panels_without_checkpoints_say_how_to_get_them(browser, tiny_model_dir):
    plain = _serve(tiny_model_dir)
    try:
        open_page(browser, plain, "layout")
        note = browser.find_element(By.ID, "layout-unavailable")
        assert note.is_displayed() and "latentdiff train-spatial configs/layout_controlnet.yaml --install" in note.text
        assert not browser.find_element(By.ID, "layout-generate").is_enabled()
        browser.find_element(By.ID, "tab-segmap").click()
        assert "segmentation ControlNet" in browser.find_element(By.ID, "segmap-unavailable").text
        assert not browser.find_element(By.ID, "segmap-generate").is_enabled()
    finally:
        plain.shutdown()
        plain.server_close()


# --- other pages, and the token (issue #31) ----------------------------------------------------------------

EVIL_PAGE = """<!doctype html><html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" target="sink" method="POST" enctype="text/plain" action="{app}api/jobs">
<input name='{{"kind": "txt2img", "prompt": "queued by a form elsewhere", "steps": 2, "x": "' value='"}}'>
</form>
<img id="img" src="{app}api/images/{job}/0.png">
<script>
const app = "{app}", body = JSON.stringify({{kind: "txt2img", prompt: "queued by another page", steps: 2}});
const results = {{}};
async function attempt(name, fn) {{
  try {{ results[name] = await fn(); }} catch (e) {{ results[name] = "blocked: " + e.message; }}
}}
(async () => {{
  // a "simple" request: no preflight, the page cannot read the answer but the server would act on it
  await attempt("post_text_plain", async () => (await fetch(app + "api/jobs", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body}})).type);
  await attempt("post_json", async () => "read " + (await (await fetch(app + "api/jobs", {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body}})).text()));
  await attempt("read_info", async () => "read " + (await (await fetch(app + "api/info")).text()));
  await attempt("read_job", async () => "read " + (await (await fetch(app + "api/jobs/{job}")).text()));
  await attempt("read_image", async () => "read " + (await (await fetch(app + "api/images/{job}/0.png")).blob()).size);
  await new Promise(done => {{
    document.getElementById("sink").onload = done; setTimeout(done, 5000);
    document.getElementById("form").submit();
  }});
  const img = document.getElementById("img");
  await new Promise(done => img.complete ? done() : (img.onload = img.onerror = done));
  results.img_width = img.naturalWidth;
  window.results = results;
  document.body.dataset.done = "1";
}})();
</script></body></html>"""


def _serve_page(html: str):
    """A page on another loopback port: the attacker's."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("site", ["127.0.0.1", "localhost"])  # another port of the same site; another site
def test_a_page_from_elsewhere_cannot_queue_a_job_or_read_a_result(browser, server, site):
    job = server.app.submit({"kind": "txt2img", "prompt": "mine", "steps": 2})["id"]
    WebDriverWait(browser, WAIT).until(lambda d: server.app.queue.get(job).state == "done")
    before = set(server.app.queue.jobs)
    evil = _serve_page(EVIL_PAGE.format(app=url_of(server), job=job))
    try:
        browser.get(f"http://{site}:{evil.server_address[1]}/")
        WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done"))
        results = browser.execute_script("return window.results")
    finally:
        evil.shutdown()
        evil.server_close()
    assert set(server.app.queue.jobs) == before, "another page queued a job"
    for name in ("post_json", "read_info", "read_job", "read_image"):
        assert results[name].startswith("blocked"), (name, results[name])
    assert results["img_width"] == 0  # not even shown in the other page
    open_page(browser, server)  # and the app's own page still works
    fill(browser, "txt2img-prompt", "still mine")
    fill(browser, "txt2img-steps", 2)
    browser.find_element(By.ID, "txt2img-generate").click()
    assert "still mine" in wait_for_image(browser, "txt2img").find_element(By.CLASS_NAME, "provenance").text


def test_a_server_with_a_token_works_from_its_url_only(browser, tiny_model_dir):
    from latentdiff.pipeline import Pipeline
    from latentdiff.web.server import make_server, page_url

    srv = make_server(Pipeline.load(tiny_model_dir, device="cpu"), "127.0.0.1", 0, Limits(max_steps=20, max_side=64),
                      auth="on")
    serve_in_thread(srv)
    try:
        browser.get("about:blank")
        browser.get(url_of(srv))  # without the token: the page says what to do
        WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        note = browser.find_element(By.ID, "page-error")
        assert note.is_displayed() and "this server needs its token" in note.text
        browser.get(page_url(srv))  # the printed URL: the token goes into a cookie, and out of the address bar
        WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
                                           == "1")
        assert "token" not in browser.current_url
        fill(browser, "txt2img-prompt", "with the token")
        fill(browser, "txt2img-steps", 2)
        browser.find_element(By.ID, "txt2img-generate").click()
        fig = wait_for_image(browser, "txt2img")
        assert "with the token" in fig.find_element(By.CLASS_NAME, "provenance").text
        import time

        slow = srv.app.pipe.unet.register_forward_hook(lambda *args: time.sleep(0.2))  # 20 steps: 4 s
        try:  # the Cancel button goes through too (a JSON POST, with the cookie)
            fill(browser, "txt2img-steps", 20)
            browser.find_element(By.ID, "txt2img-generate").click()
            cancel = browser.find_element(By.ID, "txt2img-cancel")
            WebDriverWait(browser, WAIT).until(lambda d: cancel.is_enabled())
            cancel.click()
            status = browser.find_element(By.ID, "txt2img-status")
            WebDriverWait(browser, WAIT).until(lambda d: status.text == "cancelled")
        finally:
            slow.remove()
        assert not browser.find_element(By.ID, "page-error").is_displayed()
    finally:
        srv.shutdown()
        srv.server_close()
