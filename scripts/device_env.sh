# Sourced by the device scripts (gpu_default.sh, gpu_derived.sh): the log under $OUT, elapsed-time stamps,
# the carried wheels (installed into /tmp/site when the machine lacks diffusers or open_clip), the
# environment, and two helpers.      LOG=name.txt; source scripts/device_env.sh
: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
exec > >(tee "$OUT/${LOG:-log.txt}") 2>&1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
PY=${PY:-python3}
if ! $PY -c "import diffusers, open_clip" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the carried wheels in .whl"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

recipe_out() {  # recipe_out CONFIG: the recipe's output folder
    $PY -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['out'])" "$1"
}

pack() {  # pack NAME PATH...: a tar of the paths that exist, split into <= 15 MiB parts $OUT/NAME.tar.partNN
    local name=$1; shift
    local have=(); for p in "$@"; do [ -e "$p" ] && have+=("$p"); done
    [ ${#have[@]} -gt 0 ] || { stamp "nothing to pack for $name"; return 0; }
    tar -cf - "${have[@]}" | split -b 15M -d - "$OUT/$name.tar.part"
    stamp "packed $name: $(ls "$OUT" | grep -c "^$name.tar.part") part(s), $(du -shc "$OUT/$name".tar.part* | tail -1 | cut -f1)"
}
