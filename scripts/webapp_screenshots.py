"""Screenshots of each panel of the web app (docs/img/webapp_*.png), taken in Debian's headless Chromium.

    .venv/bin/python scripts/webapp_screenshots.py --out docs/img      (the default model)
    (or: make ui-screenshots; MODEL=DIR for another model)

Starts ``latentdiff serve``'s server in-process on a free loopback port, then: text-to-image (prompt,
generate), inpainting (a generated scene uploaded, a stroke painted, inpaint), layout (two boxes with
phrases) and segmentation map (a class-index map uploaded); the last two generate when the model has
layout_controlnet/ (or gligen/) and controlnet/ checkpoints (or --layout-model / --segmap-model), and show the
panel's "not available" note otherwise. The Inpaint panel uses the shipped inpainting model with the default
model, as ``latentdiff serve`` does (--inpaint-model DIR|none otherwise). CPU cost: two generations and one
inpainting at --steps steps (default 20): well under a minute with the default model on 2 cores. Needs selenium
and chromium (make test-ui).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentdiff.commands.serve import attach_spatial, load_inpaint_model  # noqa: E402
from latentdiff.pipeline import Pipeline  # noqa: E402
from latentdiff.web.server import make_server, serve_in_thread, url_of  # noqa: E402


def chrome(width: int = 1280, height: int = 1400):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the default model)")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--layout-model", default=None, help="layout checkpoint (default: MODEL/layout_controlnet, else "
                    "MODEL/gligen, if present)")
    ap.add_argument("--segmap-model", default=None, help="segmentation ControlNet (default: MODEL/controlnet)")
    ap.add_argument("--inpaint-model", default=None,
                    help="the Inpaint panel's model, as for latentdiff serve (default: the shipped inpainting "
                         "model when MODEL is not given)")
    args = ap.parse_args(argv)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(args.model, device="cpu")
    attach_spatial(pipe, args.layout_model, args.segmap_model)
    server = make_server(pipe, "127.0.0.1", 0, inpaint_pipe=load_inpaint_model(pipe, args.inpaint_model, "cpu"))
    serve_in_thread(server)
    tmp = Path(tempfile.mkdtemp())
    scene = tmp / "scene.png"
    pipe.generate("a large blue square and a small red circle", seed=7, steps=args.steps)[0].save(scene)
    size = Image.open(scene).size
    segmap = tmp / "segmap.png"  # class indices: 2 a square on the left, 1 a circle top right
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).rectangle([size[0] // 8, size[1] // 4, size[0] // 2, size[1] * 3 // 4], fill=2)
    ImageDraw.Draw(img).ellipse([size[0] // 2 + 2, size[1] // 8, size[0] * 7 // 8, size[1] // 2], fill=1)
    img.save(segmap)
    d = chrome()
    wait = WebDriverWait(d, 600)

    def fill(element_id, text):
        el = d.find_element(By.ID, element_id)
        el.clear()
        el.send_keys(str(text))

    def generate(panel):
        n = len(d.find_elements(By.CSS_SELECTOR, f"#{panel}-gallery img"))
        d.find_element(By.ID, f"{panel}-generate").click()
        wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, f"#{panel}-gallery img")) > n)
        time.sleep(0.5)

    try:
        d.get(url_of(server))
        wait.until(lambda _: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        fill("txt2img-prompt", "a small red circle above a large blue square")
        fill("txt2img-steps", args.steps)
        fill("txt2img-num_images", 2)
        generate("txt2img")
        d.save_screenshot(str(out / "webapp_txt2img.png"))

        d.find_element(By.ID, "tab-inpaint").click()
        d.find_element(By.ID, "inpaint-image").send_keys(str(scene))
        wait.until(lambda _: "paint over" in d.find_element(By.ID, "inpaint-hint").text)
        canvas = d.find_element(By.ID, "inpaint-canvas")
        ActionChains(d).move_to_element_with_offset(canvas, -50, -20).click_and_hold().move_by_offset(50, 20) \
            .move_by_offset(50, 20).release().perform()
        fill("inpaint-prompt", "a green triangle")
        fill("inpaint-steps", args.steps)
        generate("inpaint")
        d.save_screenshot(str(out / "webapp_inpaint.png"))

        d.find_element(By.ID, "tab-layout").click()
        canvas = d.find_element(By.ID, "layout-canvas")
        for (x, y), (dx, dy), phrase in (((-140, -130), (120, 110), "a red circle"),
                                         ((10, 0), (130, 140), "a blue square")):
            ActionChains(d).move_to_element_with_offset(canvas, x, y).click_and_hold().move_by_offset(dx, dy) \
                .release().perform()
            d.find_elements(By.CSS_SELECTOR, "#layout-boxes input.phrase")[-1].send_keys(phrase)
        fill("layout-prompt", "a red circle and a blue square")
        if d.find_element(By.ID, "layout-generate").is_enabled():
            fill("layout-steps", args.steps)
            generate("layout")
        d.save_screenshot(str(out / "webapp_layout.png"))

        d.find_element(By.ID, "tab-segmap").click()
        d.find_element(By.ID, "segmap-file").send_keys(str(segmap))
        fill("segmap-prompt", "a red square and a blue circle")
        if d.find_element(By.ID, "segmap-generate").is_enabled():
            fill("segmap-steps", args.steps)
            generate("segmap")
        d.save_screenshot(str(out / "webapp_segmap.png"))
    finally:
        d.quit()
        server.shutdown()
    for name in ("txt2img", "inpaint", "layout", "segmap"):
        print(out / f"webapp_{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
