#!/usr/bin/env bash
# On the GPU machine (device tool, from the repository root, carrying .whl made by bench/gpu_wheels.sh):
#     bash bench/gpu_sd15.sh
# 1. installs the carried wheels into /tmp/site (the image has torch but no diffusers),
# 2. runs the CUDA tests of tests/test_speed.py (CUDA graphs, no host sync per step; ~1 min),
# 3. runs bench/gpu_sd15.py (starts no work after 450 s), writing $OUT/sd15.json, $OUT/sd15.log, $OUT/gpu_tests.log.
# Total under 10 minutes; give the call timeout_s=600.
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
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_speed.py -k cuda 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
timeout 500 python3 bench/gpu_sd15.py --budget-s 450 --out "$OUT/sd15.json" 2>&1 | tee "$OUT/sd15.log" | grep -v Warning
