#!/usr/bin/env bash
# Rebuild what scripts/gpu_default.sh packed on the device machine: the run folder (fp16 model in
# RUN/ship, logs, metrics, times) and the evaluation report, under the current folder.
#     bash scripts/gpu_unpack.sh DIR        (DIR: where the device tool put the returned files)
set -euo pipefail
DIR=${1:?usage: gpu_unpack.sh DIR}
for name in run eval derived; do
    parts=("$DIR/$name".tar.part*)
    [ -e "${parts[0]}" ] || { echo "$DIR: no $name.tar.part* files"; continue; }
    cat "${parts[@]}" | tar -xf -
    echo "unpacked $name (${#parts[@]} part(s))"
done
