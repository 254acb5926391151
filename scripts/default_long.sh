#!/usr/bin/env bash
# The default model's long CPU recipe (configs/default_long.yaml): the shipped U-Net trained on, over as
# many sessions as it takes.
#   bash scripts/default_long.sh init    # once: runs/default_long from runs/default (the shipped run)
#   bash scripts/default_long.sh train   # go on from the newest checkpoint; Ctrl-C / SIGTERM stop cleanly
#   bash scripts/default_long.sh status  # steps done, last loss
# init needs runs/default (`latentdiff train configs/default.yaml`; `make default-model` runs it first): its
# finished VAE and CLIP stages and latent cache are reused as they are, and its step-2000 U-Net checkpoint
# becomes the first checkpoint. SRC, DST, STEP and CONFIG choose another run, for example the v2 recipe's:
#   SRC=runs/default_v2 DST=runs/default_v2_long STEP=8000 CONFIG=configs/default_v2_long.yaml bash scripts/default_long.sh init
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${SRC:-runs/default}
DST=${DST:-runs/default_long}
STEP=${STEP:-2000}
CONFIG=${CONFIG:-configs/default_long.yaml}
CKPT=ckpt-$(printf %07d "$STEP")
PY=${PY:-.venv/bin/python}
# OpenMP threads wait actively unless the caller asks otherwise: PASSIVE cost 23 % of the U-Net's training
# speed on an idle 2-core Xeon (BENCHMARKS.md); set OMP_WAIT_POLICY=PASSIVE when another job shares the cores
export HF_HUB_OFFLINE=1
case "${1:-}" in
  init)
    [ -e "$DST" ] && { echo "$DST exists already; 'train' goes on with it" >&2; exit 2; }
    for need in "$SRC/vae/DONE" "$SRC/clip/DONE" "$SRC/unet/checkpoints/$CKPT"; do
      [ -e "$need" ] || { echo "$need: missing; train $SRC's recipe to U-Net step $STEP first" >&2; exit 2; }
    done
    mkdir -p "$DST/unet/checkpoints"
    cp -r "$SRC/vae" "$SRC/clip" "$DST/"
    ln -s "$(realpath "$SRC/latents")" "$DST/latents"
    cp -r "$SRC/unet/checkpoints/$CKPT" "$DST/unet/checkpoints/"
    echo "$CKPT" > "$DST/unet/checkpoints/latest"
    echo "$DST: ready at U-Net step $STEP; now: bash $0 train (with the same SRC, DST, STEP and CONFIG)"
    ;;
  train)
    [ -e "$DST/unet/checkpoints/latest" ] || { echo "$DST: not set up; run: bash $0 init" >&2; exit 2; }
    exec "$PY" train.py "$CONFIG" --out "$DST" --resume
    ;;
  status)
    echo "checkpoint: $(cat "$DST/unet/checkpoints/latest" 2>/dev/null || echo none)"
    tail -n 1 "$DST/unet/log.jsonl" 2>/dev/null || true
    ;;
  *) echo "usage: $0 init|train|status" >&2; exit 2 ;;
esac
