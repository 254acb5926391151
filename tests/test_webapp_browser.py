"""The web app in a real browser: Debian's headless Chromium driven by selenium through Debian's
chromedriver (nothing is downloaded). Type a prompt, generate, see the image and its provenance; paint a
mask and inpaint; two pages generating at once both finish; bad uploads give a message in the page.
Skipped (with the reason) without selenium or chromium: `make test-ui` installs both and runs this."""
import io
import json
import os
import shutil
import time
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


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from latentdiff.pipeline import Pipeline

    srv = make_server(Pipeline.load(tiny_model_dir, device="cpu"), "127.0.0.1", 0,
                      Limits(max_steps=200, max_images=4, max_side=256))
    serve_in_thread(srv)
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


def test_layout_panel_draws_boxes_and_says_it_is_not_available(browser, server):
    open_page(browser, server, "layout")
    note = browser.find_element(By.ID, "layout-unavailable")
    assert note.is_displayed() and "Not available in this build" in note.text
    assert not browser.find_element(By.ID, "layout-generate").is_enabled()
    canvas = browser.find_element(By.ID, "layout-canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, -100, -100).click_and_hold() \
        .move_by_offset(60, 60).move_by_offset(40, 40).release().perform()
    phrases = browser.find_elements(By.CSS_SELECTOR, "#layout-boxes input.phrase")
    assert len(phrases) == 1
    phrases[0].send_keys("a red circle")
    boxes = browser.execute_script("return EXTRA.layout().boxes")
    assert len(boxes) == 1 and boxes[0]["phrase"] == "a red circle"
    assert 0 <= boxes[0]["x0"] < boxes[0]["x1"] <= 0.5 + 1e-6 and 0 <= boxes[0]["y0"] < boxes[0]["y1"] <= 0.5 + 1e-6
    browser.find_element(By.ID, "tab-segmap").click()
    assert "Not available in this build" in browser.find_element(By.ID, "segmap-unavailable").text
