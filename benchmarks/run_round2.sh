#!/usr/bin/env bash
# Performance round 2 (issue 17) on one H200, in two device calls of at most 10 minutes each. Each call keeps
# to WALL seconds (default 570) of its own: every script gets the time left (minus a margin) as its timeout
# and writes its JSON after every variant / method / depth, so whatever is cut off, what ran is kept.
#
# From the repository root, with the wheels in .whl/ (carry: [".whl"]; liger_kernel-0.8.5 among them for the
# Liger variant, which is recorded as not run when liger_kernel cannot be imported):
#
#   OUT=$OUT bash benchmarks/run_round2.sh train   # the training variants side by side (tag h200_round2_train)
#   OUT=$OUT bash benchmarks/run_round2.sh eval    # evaluation and scorer agreement (tags h200_round2_eval,
#                                                  # h200_round2_gemma3_agreement, h200_round2_gemma4_agreement)
#
#   train  train_benchmark.py, 60 + 27 layers, STEPS (default 5, the first untimed: medians over 4) of 16
#          samples: reference; fused; fused + the LoRA epilogue (fuse_lora_epilogue); fused + cached features; fused with the last KEEP (default 2) decoder
#          layers keeping their activations (selective checkpointing); the same with KEEP2 (default 6);
#          Liger's kernels in place of the fused ones; fused with the vision LoRA trained. New variants start
#          until DEADLINE (default 400) seconds into the script.
#   eval   eval_benchmark.py, 60 + 27 layers, 32 images: greedy generate x3 (median), score_classes, the
#          packed scorer at 8, 16 and 32 images per forward x3 (median); then scorer_agreement.py for Gemma 3
#          at 27B widths (4 and 62 text layers, 3 images), then, while time is left, Gemma 4 (4 and 60 layers).
#
# KEEP: a trial at 12 layers (31B widths, batch 16) measured 1.35-2 GiB more peak per layer kept, on the
# fused variant's 27.7 GiB at 60 layers: KEEP=2 stays under 32 GiB, KEEP2=6 under 40.
#
# CPU=1 tries the same commands on a CPU with narrow widths and few layers (no wheels installed; run it
# with PYTHONPATH=src and the project's venv python as PYTHON): a typo fails here, not on the GPU.
#
# Afterwards (with the run folders under benchmarks/results/, or --results pointing at them):
#   python benchmarks/summarize.py --train h200_round2_train --eval h200_round2_eval \
#       --agreement h200_round2_gemma4_agreement --agreement-gemma3 h200_round2_gemma3_agreement
set -u -o pipefail
OUT=${OUT:-benchmarks/results}
STAGE=${1:-}
WALL=${WALL:-570}
STARTED=$(date +%s)
PYTHON=${PYTHON:-python3}
KEEP=${KEEP:-2}
KEEP2=${KEEP2:-6}

if [ "${CPU:-0}" = 1 ]; then
  MODEL=(--widths narrow --device cpu --text-layers "${TEXT_LAYERS:-10}" --vision-layers 1)
  GEMMA3_LAYERS=(2 4); GEMMA4_LAYERS=(2 4); STEPS=${STEPS:-2}; IMAGES=4; BATCHES=2,4; AGREE=(--widths narrow --device cpu)
else
  MODEL=(--text-layers "${TEXT_LAYERS:-60}" --vision-layers 27)
  GEMMA3_LAYERS=(4 62); GEMMA4_LAYERS=(4 60); STEPS=${STEPS:-5}; IMAGES=32; BATCHES=8,16,32; AGREE=()
fi
# A quicker try on the GPU: e.g. TEXT_LAYERS=12 AGREE_LAYERS="2 4" (the agreement's depths, both families).
[ -n "${AGREE_LAYERS:-}" ] && read -r -a GEMMA3_LAYERS <<< "$AGREE_LAYERS" && GEMMA4_LAYERS=("${GEMMA3_LAYERS[@]}")

left() {  # seconds left for the next command: the wall budget minus what has run, minus a margin
  echo $(( WALL - ($(date +%s) - STARTED) - ${1:-10} ))
}

run() {  # run "$@" under the time left; skip it when too little is left
  local t; t=$(left)
  if [ "$t" -lt "${MIN_S:-30}" ]; then echo "skipped (only ${t}s left): $*"; return 0; fi
  echo "== $(date -u +%H:%M:%S) (${t}s left): $*"
  timeout --signal=TERM --kill-after=5 "$t" "$PYTHON" "$@" || echo "exit $?: $*"
}

setup() {
  if [ "${CPU:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
  export PYTHONUNBUFFERED=1
  "$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  "$PYTHON" -c "import liger_kernel.transformers as l; print('liger_kernel', l.apply_liger_kernel_to_gemma4.__module__)" 2>&1 | tail -1
}

stage() {
  setup
  case "$STAGE" in
  train)
    local fused=ours_bf16_b16_frozen_vision_fused
    local variants="reference,$fused,${fused}_epilogue,${fused}_cached,${fused}_keep$KEEP,ours_bf16_b16_frozen_vision_liger,ours_bf16_b16_fused,${fused}_keep$KEEP2"
    [ "${CPU:-0}" = 1 ] && variants=${variants#reference,}  # the full-vocabulary reference takes many minutes on a CPU
    MIN_S=60 run benchmarks/train_benchmark.py --out "$OUT" --tag "${TAG:-h200_round2_train}" "${MODEL[@]}" \
      --steps "$STEPS" --ref-steps 2 --deadline-s "${DEADLINE:-400}" --variants "${TRAIN_VARIANTS:-$variants}"
    ;;
  eval)
    MIN_S=60 run benchmarks/eval_benchmark.py --out "$OUT" --tag h200_round2_eval "${MODEL[@]}" --images "$IMAGES" \
      --batch "${BATCHES%%,*}" --batches "$BATCHES" --repeats 3
    MIN_S=60 run benchmarks/scorer_agreement.py --out "$OUT" --tag h200_round2_gemma3_agreement --family gemma3 \
      --text-layers "${GEMMA3_LAYERS[@]}" --vision-layers "${MODEL[-1]}" --images 3 "${AGREE[@]}"
    MIN_S=120 run benchmarks/scorer_agreement.py --out "$OUT" --tag h200_round2_gemma4_agreement --family gemma4 \
      --text-layers "${GEMMA4_LAYERS[@]}" --vision-layers "${MODEL[-1]}" --images 3 "${AGREE[@]}"
    ;;
  esac
  echo "== done in $(( $(date +%s) - STARTED ))s"
}

case "$STAGE" in
train) LOG=$OUT/${TAG:-h200_round2_train}/train.log ;;
eval)  LOG=$OUT/h200_round2_eval/eval.log ;;
*) echo "unknown stage '$STAGE': train or eval" >&2; exit 2 ;;
esac
mkdir -p "$(dirname "$LOG")"
stage 2>&1 | grep --line-buffered -v -E 'Warning:|warnings\.warn|it/s\]' | tee "$LOG"
