#!/usr/bin/env bash
# Pre-flight check of the device scripts on this CPU, before any device time is spent (about 2.5 min):
# scripts/gpu_default.sh on configs/tiny.yaml, scripts/gpu_derived.sh on that tiny model with configs/gpu/*.yaml
# shrunk to tiny sizes, then scripts/gpu_unpack.sh on what came out. Exits non-zero if any step fails or a
# packed artefact is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/latentdiff-gpu-dryrun}
rm -rf "$WORK" runs/tiny runs/tiny-data
mkdir -p "$WORK/configs" "$WORK/unpacked"
export OMP_WAIT_POLICY=PASSIVE

OUT="$WORK/out" EVAL_LIMIT=2 PY=$PY bash scripts/gpu_default.sh configs/tiny.yaml > "$WORK/default.log" 2>&1
$PY - "$WORK/configs" <<'EOF'
import sys
from pathlib import Path

import yaml

dest = Path(sys.argv[1])
for name in ("classifier", "inpaint", "layout", "segmap"):
    c = yaml.safe_load(Path(f"configs/gpu/{name}.yaml").read_text())
    c["out"] = f"{dest.parent}/runs/{name}"
    c["latent_cache"] = "runs/tiny/latents"
    c["data"] = {"folder": "runs/tiny-data", "shapes_num": 64, "shapes_seed": 0, "exclude_held_out": True, "holdout": 8}
    loop = c["classifier"]["loop"] if name == "classifier" else c["loop"]
    loop.update(steps=3, batch_size=4, warmup_steps=1, checkpoint_every=2, log_every=1)
    for k in ("validation_cases", "validation_steps"):
        if k in c:
            c[k] = 2
    (dest / f"{name}.yaml").write_text(yaml.safe_dump(c))
EOF
OUT="$WORK/out" PY=$PY CONFIGS="$WORK/configs" BASE=runs/tiny/model bash scripts/gpu_derived.sh > "$WORK/derived.log" 2>&1
(cd "$WORK/unpacked" && bash "$OLDPWD/scripts/gpu_unpack.sh" "$WORK/out")
need=(runs/tiny/ship/model_index.json runs/tiny/eval/report.md runs/tiny/times.json)
for n in classifier/final/config.json layout/layout/final/layout_controlnet/condition.json \
         segmap/segmap/final/controlnet/config.json inpaint/ship/model_index.json; do
    need+=("${WORK#/}/runs/$n")
done
missing=0
for f in "${need[@]}"; do [ -e "$WORK/unpacked/$f" ] || { echo "missing after unpack: $f"; missing=1; }; done
ls -l "$WORK/out"
[ $missing = 0 ] && echo "dry run OK: $WORK/out holds what a device call would bring back"
exit $missing
