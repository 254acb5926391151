#!/usr/bin/env bash
# Train the default model from scratch on one leased GPU, in one call of under 10 minutes, and bring it
# back through $OUT: configs/default_gpu.yaml (every stage has a time limit), fp16 export, then the #4
# evaluation (held-out accuracy at the default guidance and the w sweep), packed as <= 15 MiB parts.
#
# On the device machine (repo root; the wheels of diffusers and open_clip in .whl, see docs/gpu.md):
#     bash scripts/gpu_default.sh                     # device tool: carry [".whl"], timeout_s 600
# Here, a CPU dry run of the same steps on the tiny recipe (a minute or two):
#     OUT=/tmp/gpu_out EVAL_LIMIT=2 PY=.venv/bin/python bash scripts/gpu_default.sh configs/tiny.yaml
# Back here: scripts/gpu_unpack.sh DIR (DIR: where the device tool put the files) rebuilds the run folder.
set -uo pipefail
CONFIG=${1:-configs/default_gpu.yaml}
EVAL_LIMIT=${EVAL_LIMIT:-0}        # 0: all 50 held-out prompts
EVAL_DEADLINE_S=${EVAL_DEADLINE_S:-540}  # skip the evaluation when training ends later than this
CALL_LIMIT_S=${CALL_LIMIT_S:-590}        # the evaluation is cut off here (the device call ends at 600 s)
LOG=log.txt; source scripts/device_env.sh
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, '| diffusers', \
diffusers.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, \
'| cuda', torch.cuda.is_available())" || exit 1
if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then  # the GPU-only training tests
    timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_train_speed.py -k gpu 2>&1 | tail -3
fi
RUN=$(recipe_out "$CONFIG") || exit 1

stamp "train $CONFIG -> $RUN"
$PY -m latentdiff.cli train "$CONFIG" --resume || { stamp "training failed"; TRAIN_FAILED=1; }
stamp "training ended"
cat "$RUN/times.json" 2>/dev/null
for s in vae clip unet; do echo "$s metrics: $(cat "$RUN/$s/metrics.json" 2>/dev/null | tr -d '\n ')"; done

# pack the run first, so the model comes back even if the evaluation runs out of time
if [ -f "$RUN/model/model_index.json" ]; then
    $PY -m latentdiff.cli export --model "$RUN/model" --format diffusers --dtype fp16 --out "$RUN/ship" \
        || stamp "export failed"
fi
pack run "$RUN/ship" "$RUN/times.json" "$RUN/config.json" "$RUN"/*/metrics.json "$RUN"/*/log.jsonl "$RUN"/unet/val
[ -n "${TRAIN_FAILED:-}" ] && exit 1

if [ $(( $(date +%s) - T0 )) -gt "$EVAL_DEADLINE_S" ]; then
    stamp "no time left for the evaluation (deadline ${EVAL_DEADLINE_S} s)"; exit 0
fi
stamp "evaluate $RUN/ship"
timeout $(( CALL_LIMIT_S - ($(date +%s) - T0) )) $PY -m latentdiff.cli eval --model "$RUN/ship" --sections accuracy,guidance --limit "$EVAL_LIMIT" --batch-size 64 --out "$RUN/eval" \
    --device auto || stamp "evaluation failed"
pack eval "$RUN/eval"
stamp "done"
