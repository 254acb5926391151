#!/usr/bin/env bash
# Ship a trained model folder (with its companions installed: scripts/companions.sh ... --install does that) as
# the package's default model, in fp16, and keep every other shipped model whole.
#   bash scripts/ship_default.sh MODEL        e.g. runs/default_v2_rel/model
# The inpainting model (latentdiff/assets/inpaint_model) stores its frozen VAE, text encoder and tokenizer as
# links into default_model/ (scripts/link_shared_weights.py). A new default model brings other files, so those
# links are first replaced by the files they point at; linking then runs again and stores once whatever is
# still identical. Check afterwards: `make test` (tests/test_assets.py) and the behaviour fingerprint
# (`python tests/behaviour_hashes.py --record`, then `--record-cpu` on a second CPU kind).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ $# -eq 1 ] || { echo "usage: $0 MODEL" >&2; exit 2; }
MODEL=${1%/}
[ -f "$MODEL/model_index.json" ] && [ -d "$MODEL/unet" ] || {
  echo "$MODEL: not a model folder (no model_index.json or unet/)" >&2; exit 2; }
ASSETS=latentdiff/assets
# every link under assets/ other than default_model/ that points into default_model/ becomes a plain copy
find "$ASSETS" -path "$ASSETS/default_model" -prune -o -type l -print | while read -r link; do
  target=$(readlink -f "$link")
  case "$target" in "$(readlink -f "$ASSETS/default_model")"/*)
    cp --remove-destination "$target" "$link"; echo "unlinked $link" ;; esac
done
rm -rf "$ASSETS/default_model.new"
"$PY" -m latentdiff.cli export --model "$MODEL" --format diffusers --dtype fp16 --out "$ASSETS/default_model.new"
rm -rf "$ASSETS/default_model"
mv "$ASSETS/default_model.new" "$ASSETS/default_model"
"$PY" scripts/link_shared_weights.py
echo "shipped $MODEL as $ASSETS/default_model"
