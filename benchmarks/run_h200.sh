#!/usr/bin/env bash
# The GPU runs behind BENCHMARKS.md: Gemma 4 QLoRA training and evaluation at the real 31B widths (random
# weights, NF4) and the training entrypoint with real 4-bit, on one NVIDIA H200 (143,771 MiB) with torch
# 2.11.0+cu130. That machine has torch but no bitsandbytes and no network: transformers, peft, bitsandbytes
# and the rest travel as wheels in .whl/ (BENCHMARKS.md, "How to reproduce", says how to fetch them), which
# this script installs into /tmp/site.
#
# Call it from the repository root, one stage per call (each fits in 10 minutes):
#
#   OUT=benchmarks/results bash benchmarks/run_h200.sh STAGE
#
#   train       train_benchmark.py, 60 + 27 layers: the reference recipe and the project's variants side by
#               side, the fused variant profiled. TAG (default h200_31b_fused) and STEPS (default 4); the
#               training table is STEPS=6 TAG=h200_31b_fused_6steps
#   gpu         pytest tests/test_gpu.py, then entrypoint_check.py on the 31B-wide model with 4 + 2 layers:
#               trained, killed after its first checkpoint, resumed (tag h200_entrypoint_mid_fused)
#   entrypoint  entrypoint_check.py on the 31B-wide model alone, eager kernels (tag h200_entrypoint_mid)
#   eval        eval_benchmark.py, 60 + 27 layers: greedy generate x3 against class scoring (tag h200_31b_packed)
#   agreement   scorer_agreement.py at 4 and 60 text layers (tag h200_scorer_agreement)
#   bench       train_benchmark.py's levers one by one, eager kernels, and eval_benchmark.py (tag h200_31b)
#   check       entrypoint_check.py on the tiny gemma4-31b, eager kernels (tag h200_entrypoint_tiny),
#               pytest tests/test_gpu.py, eval_benchmark.py (tag h200_31b_packed, as the eval stage) and a
#               steady-state train_benchmark.py of two variants (tag h200_31b_steady)
#   ddp         ddp_benchmark.py, 60 + 27 layers, on 1 then 2 GPUs under torchrun (the nvidia-h200-x2 machine):
#               samples/s, scaling and peak memory per GPU (TAG, default h200x2_31b_ddp; STEPS, default 4)
#   (no stage: bench)
#
# Results: each run writes its JSON to $OUT/<tag>/ (train.json, eval.json, entrypoint.json,
# scorer_agreement.json); OUT defaults to benchmarks/results. The stage's whole output, warnings and progress
# bars left out, goes to the screen and to a log beside its runs, $OUT/<tag>/<stage>.log (the case at the end
# names each; the train stage's is $OUT/$TAG/train.log). summarize.py reads the run folders under
# benchmarks/results (copy them there when OUT was elsewhere) and writes benchmarks/results/summary.json:
#   python benchmarks/summarize.py --train h200_31b_fused_6steps --eval h200_31b_packed
set -u -o pipefail
OUT=${OUT:-benchmarks/results}
STAGE=${1:-bench}

stage() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
  python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', b.__version__, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  case "$STAGE" in
  train)
    timeout 540 python3 benchmarks/train_benchmark.py --out "$OUT" --tag "${TAG:-h200_31b_fused}" --text-layers 60 --vision-layers 27 \
      --steps "${STEPS:-4}" --deadline-s 420 --profile ours_bf16_b16_frozen_vision_fused
    ;;
  gpu)
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
    timeout 240 python3 benchmarks/entrypoint_check.py --models mid --out "$OUT" --tag h200_entrypoint_mid_fused
    ;;
  entrypoint)
    timeout 330 python3 benchmarks/entrypoint_check.py --models mid --eager --out "$OUT" --tag h200_entrypoint_mid
    ;;
  eval)
    timeout 300 python3 benchmarks/eval_benchmark.py --out "$OUT" --tag h200_31b_packed --text-layers 60 --vision-layers 27
    ;;
  agreement)
    timeout 540 python3 benchmarks/scorer_agreement.py --out "$OUT" --tag h200_scorer_agreement --text-layers 4 60 --vision-layers 27
    ;;
  bench)
    timeout 420 python3 benchmarks/train_benchmark.py --out "$OUT" --tag h200_31b --text-layers 60 --vision-layers 27 --deadline-s 330 \
      --variants reference,ours_as_was_b8,ours_bf16_b8,ours_bf16_b8_frozen_vision,ours_bf16_b16_frozen_vision
    timeout 150 python3 benchmarks/eval_benchmark.py --out "$OUT" --tag h200_31b --text-layers 60 --vision-layers 27 --batches 8 --repeats 1
    ;;
  ddp)
    timeout 560 python3 benchmarks/ddp_benchmark.py --out "$OUT" --tag "${TAG:-h200x2_31b_ddp}" \
      --text-layers 60 --vision-layers 27 --gpus 1,2 --steps "${STEPS:-4}" --timeout-s 270
    ;;
  check)
    timeout 330 python3 benchmarks/entrypoint_check.py --models tiny --eager --out "$OUT" --tag h200_entrypoint_tiny
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
    timeout 90 python3 benchmarks/eval_benchmark.py --out "$OUT" --tag h200_31b_packed --text-layers 60 --vision-layers 27 --batches 8 --repeats 1
    timeout 85 python3 benchmarks/train_benchmark.py --out "$OUT" --tag h200_31b_steady --text-layers 60 --vision-layers 27 \
      --variants ours_bf16_b16,ours_bf16_b8 --steps 4 --deadline-s 45
    ;;
  esac
}

case "$STAGE" in
train)      LOG=$OUT/${TAG:-h200_31b_fused}/train.log ;;
gpu)        LOG=$OUT/h200_entrypoint_mid_fused/gpu.log ;;
entrypoint) LOG=$OUT/h200_entrypoint_mid/entrypoint.log ;;
eval)       LOG=$OUT/h200_31b_packed/eval.log ;;
agreement)  LOG=$OUT/h200_scorer_agreement/scorer_agreement.log ;;
bench)      LOG=$OUT/h200_31b/bench.log ;;
check)      LOG=$OUT/h200_entrypoint_tiny/check.log ;;
ddp)        LOG=$OUT/${TAG:-h200x2_31b_ddp}/ddp.log ;;
*) echo "unknown stage '$STAGE': train, gpu, entrypoint, eval, agreement, bench, check or ddp" >&2; exit 2 ;;
esac
mkdir -p "$(dirname "$LOG")"
stage 2>&1 | grep --line-buffered -v -E 'Warning:|warnings\.warn|it/s\]' | tee "$LOG"
