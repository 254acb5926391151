#!/usr/bin/env bash
# Run HERE, not on the GPU machine: puts the wheels the GPU image lacks (diffusers; the pinned transformers
# and peft) into .whl/ of this checkout and git-ignores it, so a device call can carry them (`carry: [".whl"]`).
# Pure-Python wheels, ~21 MB. bench/gpu_sd15.sh installs them there.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
"${PYTHON:-.venv/bin/python}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 transformers==5.24.0 peft==0.21.2
ls -l .whl
