"""Behaviour fingerprint: the pixels of a fixed set of generations through the CLI, as sha256 hashes.

    python tests/behaviour_hashes.py             # print the hashes of this checkout as JSON
    python tests/behaviour_hashes.py --record    # write them to tests/data/behaviour_hashes.json
    python tests/behaviour_hashes.py --record-cpu  # add this CPU's hashes of the same behaviour (see below)

A refactor must leave every image byte-identical (issue #29): tests/test_behaviour.py runs this in a
subprocess and compares with the recorded file. Floating-point results depend on the CPU's instruction set
and on thread count, so the run pins both before torch is imported: one thread, ATen's default (non-vector
specialised) kernels, oneDNN limited to SSE4.1 and MKL in its conditional-numerical-reproducibility mode
(``MKL_CBWR=COMPATIBLE``), which Intel documents as giving the same results on every x86 CPU. That is not
quite enough: with all of it pinned, an Intel Xeon with AMX drew 4 of the 11 cases differently from the AMD
EPYC they were recorded on, on the same code (2026-12-07; the cause is not found). So the file may also hold
other CPUs' hashes of the recorded behaviour (``also``: ``{"cpu": lscpu's model name, "images": ...}``,
added with ``--record-cpu`` from a checkout whose behaviour is the recorded one); the test accepts the images
when they equal the primary set or one of those. A behaviour change changes the images on every CPU, so it
matches none of them. On a CPU with no recorded set (``cpu`` of the primary set, or one of ``also``) a mismatch
says nothing about behaviour, so the test skips there, naming the CPU; record its set with ``--record-cpu``
from a checkout whose behaviour is the recorded one.

The cases cover every sampler, negative prompts, guidance scales, classifier guidance, a layout, a
segmentation map, layout + map together, and inpainting with the inpainting model and by blending. They
use the shipped models; the recorded file names their weights' hashes, so a new shipped model is reported
as such rather than as a behaviour change.
"""
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

PINNED = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
          "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
RECORD = Path(__file__).parent / "data" / "behaviour_hashes.json"


def cases(tmp: Path) -> dict[str, list[str]]:
    """Case name -> CLI arguments (after the command), with input files written into ``tmp``."""
    import numpy as np
    from PIL import Image

    from latentdiff.data.shapes import render, scene_for_index

    rgb, seg = render(scene_for_index(seed=1, index=5, objects=(2, 2))[0])
    Image.fromarray(rgb).save(tmp / "scene.png")
    Image.fromarray(seg).save(tmp / "seg.png")
    mask = np.zeros(seg.shape, np.uint8)
    mask[4:32, 4:32] = 255
    Image.fromarray(mask).save(tmp / "mask.png")
    (tmp / "layout.json").write_text(json.dumps([{"phrase": "a red circle", "box": [4, 4, 28, 28]},
                                                 {"phrase": "a green triangle", "box": [36, 36, 60, 60]}]))
    common = ["--steps", "5", "--device", "cpu"]
    gen = ["generate", "a large red circle in the top left", *common]
    return {
        "ddpm": [*gen, "--sampler", "ddpm", "--num-images", "2", "--seed", "3"],
        "ddim_negative": [*gen, "--sampler", "ddim", "--negative-prompt", "a blue square", "--guidance", "6"],
        "dpmpp_two": ["generate", "a green triangle to the left of a yellow square", *common, "--sampler", "dpm++",
                      "--seed", "11"],
        "euler_unconditional": ["generate", "", *common, "--sampler", "euler", "--guidance", "1", "--seed", "5"],
        "classifier": ["generate", "", *common, "--classifier-guidance", "square", "--classifier-scale", "5",
                       "--seed", "2"],
        "layout": ["generate", "a red circle and a green triangle", *common, "--layout", str(tmp / "layout.json"),
                   "--seed", "7"],
        "segmap": ["generate", "a red circle and a blue square", *common, "--segmap", str(tmp / "seg.png"),
                   "--seed", "8"],
        "layout_segmap": ["generate", "a red circle", *common, "--layout", str(tmp / "layout.json"),
                          "--segmap", str(tmp / "seg.png"), "--layout-scale", "2", "--segmap-scale", "1.5"],
        "inpaint_model": ["inpaint", "a yellow triangle", "--image", str(tmp / "scene.png"), "--mask",
                          str(tmp / "mask.png"), "--model", str(_inpaint_model()), *common, "--seed", "4"],
        "inpaint_blend": ["inpaint", "a yellow triangle", "--image", str(tmp / "scene.png"), "--mask",
                          str(tmp / "mask.png"), "--mode", "blend", "--mask-blur", "2", *common, "--seed", "4"],
        "inpaint_repaint": ["inpaint", "a green circle", "--image", str(tmp / "scene.png"), "--mask",
                            str(tmp / "mask.png"), "--mode", "blend", "--sampler", "ddpm", "--resample", "2",
                            *common],
    }


def _inpaint_model() -> Path:
    return Path(__file__).resolve().parent.parent / "latentdiff" / "assets" / "inpaint_model"


def weights() -> dict[str, str]:
    """The shipped models' weights hashes (what the images depend on besides the code)."""
    from latentdiff.provenance import weights_hash

    root = Path(__file__).resolve().parent.parent / "latentdiff" / "assets"
    return {name: weights_hash(sorted((root / name).rglob("*.safetensors")), root / name) for name in
            ("default_model", "inpaint_model")}


def run() -> dict:
    """Run every case in this process (the environment must already be pinned) and hash its images' pixels."""
    import numpy as np
    from PIL import Image

    from latentdiff.cli import main

    out: dict = {"weights": weights(), "images": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, argv in cases(tmp).items():
            folder = tmp / name
            code = main([*argv, "--out", str(folder)])
            if code != 0:
                raise SystemExit(f"case {name}: exit {code}")
            pngs = sorted(folder.glob("*.png"))
            if not pngs:
                raise SystemExit(f"case {name}: no image written")
            out["images"][name] = [hashlib.sha256(np.asarray(Image.open(p).convert("RGB")).tobytes()).hexdigest()
                                   for p in pngs]
    return out


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in PINNED.items()):  # pin before torch is imported: re-exec
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED})
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    result = run()
    if "--record" in sys.argv[1:]:
        from latentdiff.speed import cpu_model_name

        result["cpu"] = cpu_model_name()  # the CPU that drew the primary set
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"wrote {RECORD}")
    elif "--record-cpu" in sys.argv[1:]:
        from latentdiff.speed import cpu_model_name

        recorded = json.loads(RECORD.read_text())
        if result["weights"] != recorded["weights"]:
            raise SystemExit("the shipped weights differ from the recorded ones: --record, not --record-cpu")
        name = cpu_model_name()
        recorded["also"] = [a for a in recorded.get("also", []) if a["cpu"] != name]
        if result["images"] != recorded["images"]:
            recorded["also"].append({"cpu": name, "images": result["images"]})
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        print(f"wrote {RECORD} ({name})")
    else:
        print(json.dumps(result, sort_keys=True))
