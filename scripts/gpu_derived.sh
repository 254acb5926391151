#!/usr/bin/env bash
# Train what depends on the default model on the GPU (configs/gpu/*.yaml: the latent classifier, the
# inpainting model, the layout and segmentation (ControlNet) adapters, each time-limited: 30 + 50 + 40 + 40 s,
# about 4-5 minutes in all with loading) and bring them back through $OUT as derived.tar.part* (scripts/gpu_unpack.sh).
#
# Best right after scripts/gpu_default.sh on the still-warm machine, where runs/default_gpu/model is.
# In a later call, carry the shipped fp16 model instead and point BASE at it:
#     BASE=runs/default_gpu/ship bash scripts/gpu_derived.sh      # carry [".whl", "runs/default_gpu/ship"]
# CPU dry run here: scripts/gpu_dryrun.sh (runs this on a tiny model with CONFIGS pointing at shrunk copies).
set -uo pipefail
BASE=${BASE:-runs/default_gpu/model}
CONFIGS=${CONFIGS:-configs/gpu}
LOG=derived_log.txt; source scripts/device_env.sh
[ -f "$BASE/model_index.json" ] || { echo "$BASE: no model folder (run scripts/gpu_default.sh first, or set BASE)"; exit 1; }

stamp "classifier";  $PY -m latentdiff.cli train-classifier "$CONFIGS/classifier.yaml" --model "$BASE" --resume || stamp "classifier failed"
stamp "inpaint";     $PY -m latentdiff.cli train-inpaint "$CONFIGS/inpaint.yaml" --base-model "$BASE" --resume || stamp "inpaint failed"
stamp "layout";      $PY -m latentdiff.cli train-spatial "$CONFIGS/layout.yaml" --model "$BASE" --resume || stamp "layout failed"
stamp "segmap";      $PY -m latentdiff.cli train-spatial "$CONFIGS/segmap.yaml" --model "$BASE" --resume || stamp "segmap failed"

INPAINT=$(recipe_out "$CONFIGS/inpaint.yaml")
if [ -f "$INPAINT/model/model_index.json" ]; then  # fp16, without the CLIP towers (they ship with the default model)
    rm -rf "$INPAINT/ship"
    $PY -m latentdiff.cli export --model "$INPAINT/model" --format diffusers --dtype fp16 --out "$INPAINT/ship" \
        && rm -rf "$INPAINT/ship/clip"
fi
o=$(recipe_out "$CONFIGS/classifier.yaml"); keep=("$o/final" "$o/metrics.json" "$o/log.jsonl")
for c in layout segmap; do  # the adapters live in OUT/<condition>/final/{layout_controlnet,controlnet}
    o=$(recipe_out "$CONFIGS/$c.yaml")/$c; keep+=("$o/final" "$o/metrics.json" "$o/log.jsonl")
done
keep+=("$INPAINT/ship" "$INPAINT/metrics.json" "$INPAINT/inpaint/metrics.json" "$INPAINT/inpaint/log.jsonl")
pack derived "${keep[@]}"
