"""The device scripts (scripts/gpu_default.sh, gpu_derived.sh, gpu_unpack.sh) run end to end on the CPU with
tiny recipes and bring back every artefact a GPU call would (scripts/gpu_dryrun.sh; ~2.5 min, slow)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_scripts_dry_run(tmp_path):
    env = {**os.environ, "PY": sys.executable, "WORK": str(tmp_path / "dry"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", "scripts/gpu_dryrun.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run OK" in proc.stdout
