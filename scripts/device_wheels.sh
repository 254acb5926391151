#!/usr/bin/env bash
# Fetch the wheels the device machine lacks or has in other versions than our pins (its image has torch,
# accelerate, safetensors, transformers 5.17 and peft; not diffusers or open_clip) into .whl/ (ignored by
# git), for the device tool's `carry: [".whl"]` (~23 MB).
# The device scripts install them with pip --no-index --target /tmp/site when diffusers is missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 importlib_metadata==10.2.0 \
    transformers==5.24.0 peft==0.21.2
du -sh .whl
