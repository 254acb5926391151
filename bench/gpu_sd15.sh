#!/usr/bin/env bash
# On the GPU machine (device tool, from the repository root, carrying .whl made by scripts/device_wheels.sh;
# see BENCHMARKS.md for the 64 MiB limit on what a call carries):
#     bash bench/gpu_sd15.sh
# 1. installs the carried wheels into /tmp/site (the image has torch but no diffusers),
# 2. runs bench/gpu_sd15.py (starts no work after 440 s; killed at 480 s), writing $OUT/sd15.json and sd15.log,
# 3. runs the CUDA tests of tests/test_speed.py and tests/test_train_speed.py (killed at 90 s): gpu_tests.log.
# At most ~9.5 minutes in all; give the call timeout_s=600.
set -u
OUT="${OUT:-/tmp/sd15_out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv | tee "$OUT/gpu.txt"
timeout 480 python3 bench/gpu_sd15.py --budget-s 440 --out "$OUT/sd15.json" 2>&1 | tee "$OUT/sd15.log" | grep -v Warning
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_speed.py tests/test_train_speed.py -k "cuda or gpu" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
