#!/usr/bin/env bash
# Retrain a text-to-image model's companions against it, after its U-Net changed: the layout condition
# (a ControlNet on the boxes' picture; `gligen`: GLIGEN's gated layers, configs/layout.yaml), the
# segmentation-map condition (ControlNet), the dedicated inpainting model and, when asked, the classifier
# for classifier guidance (it sees only the VAE's latents, so a new U-Net on the same VAE does not need it).
#   bash scripts/companions.sh MODEL [PART ...]     PART: layout gligen segmap inpaint classifier
#                                                   (default: layout segmap inpaint)
# MODEL is an fp32 model folder that training assembled (e.g. runs/default_long/model). Each part trains
# into runs/<MODEL's run>-<part> with --resume, so running the same command again goes on where an
# interrupted run stopped (Ctrl-C stops cleanly). layout, segmap and the classifier are installed into MODEL
# (--install: copied in and registered in MODEL/latentdiff.json, whose map the CLI reads); the inpainting
# model runs every phase of configs/inpaint.yaml (runs/<run>-inpaint, -inpaint2, ... -inpaint7) and is left
# in runs/<run>-inpaint7/model (ship it with `latentdiff export ... --out latentdiff/assets/inpaint_model`, see
# the Makefile's inpaint-model target). Time on 2 CPU cores (2026-11-29), each alone: gligen 11 min (0.62
# step/s), segmap ~12 min (0.58 step/s), inpaint phase 1 ~21 min (all seven phases: hours, docs/inpaint.md),
# classifier ~14 min; about 35 min each when two share the cores; layout (3,000 + 4,000 steps) about 90 min
# on the 2026-12-03 machine (1.3 step/s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# OpenMP threads wait actively unless the caller asks otherwise: PASSIVE cost 23 % of the U-Net's training
# speed on an idle 2-core Xeon (BENCHMARKS.md); set OMP_WAIT_POLICY=PASSIVE when another job shares the cores
export HF_HUB_OFFLINE=1
[ $# -ge 1 ] || { echo "usage: $0 MODEL [layout|segmap|inpaint|classifier ...]" >&2; exit 2; }
MODEL=${1%/}; shift
[ -f "$MODEL/model_index.json" ] && [ -d "$MODEL/unet" ] || {
  echo "$MODEL: not a model folder (no model_index.json or unet/); give the folder training assembled" >&2; exit 2; }
# runs/default_long/model -> runs/default_long; any other folder -> itself
RUN=$(dirname "$MODEL"); [ "$(basename "$MODEL")" = model ] || RUN=$MODEL
PARTS=("$@"); [ ${#PARTS[@]} -gt 0 ] || PARTS=(layout segmap inpaint)
for part in "${PARTS[@]}"; do
  case "$part" in layout|gligen|segmap|inpaint|classifier) ;; *)
    echo "$part: unknown part; expected layout, gligen, segmap, inpaint or classifier" >&2; exit 2 ;; esac
done
# the model's run keeps the latents its VAE made of the training images: reuse them (the cache key includes
# the VAE's weights, so a cache of another VAE is never taken for this one's)
CACHE=(); [ -d "$RUN/latents" ] && CACHE=(--latent-cache "$RUN/latents")
ld() { "$PY" -m latentdiff.cli "$@" "${CACHE[@]}"; }
for part in "${PARTS[@]}"; do
  echo "== $part (into $RUN-$part)"
  case "$part" in
    layout)  # two phases: the second starts from the first's ControlNet
      ld train-spatial configs/layout_controlnet.yaml --model "$MODEL" --out "$RUN-$part" --resume
      ld train-spatial configs/layout_controlnet2.yaml --model "$MODEL" --out "$RUN-${part}2" --resume --install \
        --init "$RUN-$part/layout/final/layout_controlnet" ;;
    gligen) ld train-spatial configs/layout.yaml --model "$MODEL" --out "$RUN-$part" --resume --install ;;
    segmap) ld train-spatial configs/segmap.yaml --model "$MODEL" --out "$RUN-$part" --resume --install ;;
    inpaint) ld train-inpaint configs/inpaint.yaml --model "$MODEL" --out "$RUN-$part" --resume ;;
    classifier)
      ld train-classifier configs/classifier.yaml --model "$MODEL" --out "$RUN-$part" --resume --install ;;
  esac
done
echo "done: ${PARTS[*]} for $MODEL"
