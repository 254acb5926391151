#!/usr/bin/env bash
# Run HERE, not on the GPU machine: adds the wheels the GPU image lacks to .whl/ of this checkout and
# git-ignores it, so a device call can carry them (`carry: [".whl"]`); bench/gpu_sd15.sh installs them there.
#   bash bench/gpu_wheels.sh            # diffusers 0.42.1 (+ importlib_metadata): ~6.4 MB
#   PINNED=1 bash bench/gpu_wheels.sh   # also the pinned transformers 5.24.0 and peft 0.21.2 (the image has
#                                       # transformers 5.17.0 and its own peft): ~20 MB more
# A package that already has a wheel in .whl/ is skipped: two versions of one package stop the install there.
# Mind the device tool's 64 MiB limit on what travels (tracked files + .whl).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
specs="diffusers==0.42.1 importlib_metadata==10.2.0"
[ "${PINNED:-0}" = 1 ] && specs="$specs transformers==5.24.0 peft==0.21.2"
for spec in $specs; do
    name="${spec%%==*}"
    if ls .whl/"${name}"-*.whl >/dev/null 2>&1; then echo "have $(ls .whl/"${name}"-*.whl)"; continue; fi
    "${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl "$spec"
done
ls -l .whl
