#!/usr/bin/env bash
# Train what depends on the default model on the GPU (configs/gpu/*.yaml: the latent classifier, the
# inpainting model, the layout (GLIGEN) and segmentation (ControlNet) adapters, each time-limited: 30 + 50 + 40 + 40 s,
# about 4-5 minutes in all with loading) and bring them back through $OUT as derived.tar.part* (scripts/gpu_unpack.sh).
#
# Best right after scripts/gpu_default.sh on the still-warm machine, where runs/default_gpu/model is.
# In a later call, carry the shipped fp16 model instead and point BASE at it:
#     BASE=runs/default_gpu/ship bash scripts/gpu_derived.sh      # carry [".whl", "runs/default_gpu/ship"]
# CPU dry run here (tiny configs, seconds each):
#     OUT=/tmp/gpu_out PY=.venv/bin/python CONFIGS=/tmp/derived_tiny BASE=runs/tiny/model bash scripts/gpu_derived.sh
set -uo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
BASE=${BASE:-runs/default_gpu/model}
CONFIGS=${CONFIGS:-configs/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/derived_log.txt") 2>&1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
PY=${PY:-python3}
if ! $PY -c "import diffusers, open_clip" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the carried wheels in .whl"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
[ -f "$BASE/model_index.json" ] || { echo "$BASE: no model folder (run scripts/gpu_default.sh first, or set BASE)"; exit 1; }
out_of() { $PY -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['out'])" "$1"; }

stamp "classifier";  $PY -m latentdiff.cli train-classifier "$CONFIGS/classifier.yaml" --model "$BASE" --resume || stamp "classifier failed"
stamp "inpaint";     $PY -m latentdiff.cli train-inpaint "$CONFIGS/inpaint.yaml" --base-model "$BASE" --resume || stamp "inpaint failed"
stamp "layout";      $PY -m latentdiff.cli train-spatial "$CONFIGS/layout.yaml" --model "$BASE" --resume || stamp "layout failed"
stamp "segmap";      $PY -m latentdiff.cli train-spatial "$CONFIGS/segmap.yaml" --model "$BASE" --resume || stamp "segmap failed"

INPAINT=$(out_of "$CONFIGS/inpaint.yaml")
if [ -f "$INPAINT/model/model_index.json" ]; then  # fp16, without the CLIP towers (they ship with the default model)
    rm -rf "$INPAINT/ship"
    $PY -m latentdiff.cli export --model "$INPAINT/model" --format diffusers --dtype fp16 --out "$INPAINT/ship" \
        && rm -rf "$INPAINT/ship/clip"
fi
o=$(out_of "$CONFIGS/classifier.yaml"); keep=("$o/final" "$o/metrics.json" "$o/log.jsonl")
for c in layout segmap; do  # the adapters live in OUT/<condition>/final/{gligen,controlnet}
    o=$(out_of "$CONFIGS/$c.yaml")/$c; keep+=("$o/final" "$o/metrics.json" "$o/log.jsonl")
done
keep+=("$INPAINT/ship" "$INPAINT/metrics.json" "$INPAINT/inpaint/metrics.json" "$INPAINT/inpaint/log.jsonl")
have=(); for p in "${keep[@]}"; do [ -e "$p" ] && have+=("$p"); done
[ ${#have[@]} -gt 0 ] && tar -cf - "${have[@]}" | split -b 15M -d - "$OUT/derived.tar.part"
stamp "packed: $(ls "$OUT" | grep -c '^derived.tar.part') part(s), $(du -shc "$OUT"/derived.tar.part* 2>/dev/null | tail -1 | cut -f1)"
