"""Behaviour unchanged: a fixed set of generations (every sampler, guidance, classifier guidance, layout,
segmentation map, inpainting) gives byte-identical pixels to the recorded ones (tests/behaviour_hashes.py)."""
import json
import subprocess
import sys
from pathlib import Path

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
    changed = sorted(name for name in recorded["images"] if now["images"][name] != recorded["images"][name])
    assert not changed, f"images differ from the recorded ones in the cases {changed}"
