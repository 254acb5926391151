#!/usr/bin/env bash
# The device tool sends the working tree (64 MiB at most); the shipped models make it ~96 MB. A GPU
# session holds them outside the tree for its device calls and puts them back afterwards:
#     bash scripts/device_tree.sh hold       # before the first device call
#     bash scripts/device_tree.sh restore    # right after the last one (and before any commit)
#     bash scripts/device_tree.sh size       # what would travel, in MiB
set -euo pipefail
cd "$(dirname "$0")/.."
HOLD=${DEVICE_HOLD:-/tmp/latentdiff-held-assets}
BIG=(latentdiff/assets/default_model latentdiff/assets/inpaint_model)
size() {  # tracked files present + untracked files not ignored
    { git ls-files -z; git ls-files -z --others --exclude-standard; } | { xargs -0 du -cb 2>/dev/null || true; } \
        | awk '$2 == "total" {s += $1} END {printf "%.1f MiB would travel (limit 64 MiB, carried paths extra)\n", s / 1048576}'
}
case "${1:-}" in
    hold)
        mkdir -p "$HOLD"
        for d in "${BIG[@]}"; do
            [ -e "$HOLD/$(basename "$d")" ] && { echo "$HOLD/$(basename "$d") exists: restore first"; exit 1; }
            [ -d "$d" ] && mv "$d" "$HOLD/" && echo "held $d in $HOLD"
        done
        size ;;
    restore)
        for d in "${BIG[@]}"; do
            [ -d "$HOLD/$(basename "$d")" ] && mv "$HOLD/$(basename "$d")" "$d" && echo "restored $d"
        done
        git status --short latentdiff/assets | head -5 ;;
    size) size ;;
    *) echo "usage: device_tree.sh hold|restore|size"; exit 2 ;;
esac
