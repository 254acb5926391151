"""Behaviour unchanged: a fixed set of generations (every sampler, guidance, classifier guidance, layout,
segmentation map, inpainting) gives byte-identical pixels to the recorded ones (tests/behaviour_hashes.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def test_images_are_byte_identical_to_the_recorded_ones():
    recorded = json.loads((HERE / "data" / "behaviour_hashes.json").read_text())
    done = subprocess.run([sys.executable, str(HERE / "behaviour_hashes.py")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    now = json.loads(done.stdout.strip().splitlines()[-1])
    assert now["weights"] == recorded["weights"], (
        "the shipped weights changed: record the new model's images with `python tests/behaviour_hashes.py "
        "--record` in the commit that ships it")
    assert set(now["images"]) == set(recorded["images"])
    # the recorded behaviour as drawn on the CPU it was recorded on, and on other CPUs (behaviour_hashes.py)
    sets = [(recorded.get("cpu", "recorded"), recorded["images"])] + [(a["cpu"], a["images"])
                                                                      for a in recorded.get("also", [])]
    if any(now["images"] == images for _, images in sets):
        return
    from latentdiff.speed import cpu_model_name

    cpu = cpu_model_name()
    if cpu not in {name for name, _ in sets}:  # last-bit differences between CPUs (behaviour_hashes.py)
        pytest.skip(f"images recorded on {sorted(name for name, _ in sets)} only, and this CPU ({cpu}) draws "
                    "some cases differently: record its set with `python tests/behaviour_hashes.py --record-cpu` "
                    "from a checkout with the recorded behaviour")
    changed = {cpu: sorted(n for n in images if now["images"][n] != images[n]) for cpu, images in sets}
    raise AssertionError(f"images differ from every recorded set; cases that differ, per set: {changed}")
