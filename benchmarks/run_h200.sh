#!/usr/bin/env bash
# What the H200 runs, one device call per stage; results land in $OUT (benchmarks/results when unset).
#   bash benchmarks/run_h200.sh train   # train_benchmark.py at the full 31B widths (the current training table)
#   bash benchmarks/run_h200.sh bench   # train_benchmark.py + eval_benchmark.py at the full 31B widths
#   bash benchmarks/run_h200.sh gpu     # tests/test_gpu.py + entrypoint_check.py at 31B widths (this session's)
#   bash benchmarks/run_h200.sh check   # the first session's: entrypoint_check.py + tests/test_gpu.py + more
# The machine has torch but no bitsandbytes and no network: the wheels travel in .whl/ (see BENCHMARKS.md).
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', b.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case "${1:-bench}" in
train)  # the training table: reference and the project's variants side by side, one run, fused variant profiled
  timeout 540 python3 benchmarks/train_benchmark.py --out "$OUT" --tag ${TAG:-h200_31b_fused} --text-layers 60 --vision-layers 27 \
    --steps ${STEPS:-4} --deadline-s 420 --profile ours_bf16_b16_frozen_vision_fused
  ;;
bench)  # the first session's call: training and evaluation tables
  timeout 420 python3 benchmarks/train_benchmark.py --out "$OUT" --tag h200_31b --text-layers 60 --vision-layers 27 --deadline-s 330
  timeout 150 python3 benchmarks/eval_benchmark.py --out "$OUT" --tag h200_31b --text-layers 60 --vision-layers 27
  ;;
check)  # second call: the entrypoint and GPU tests, then the eval prototype and steady-state train figures
  timeout 330 python3 benchmarks/entrypoint_check.py --out "$OUT/entrypoint_h200.json"  # 170 s was too short
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
  timeout 90 python3 benchmarks/eval_benchmark.py --out "$OUT" --tag h200_31b_packed --text-layers 60 --vision-layers 27
  timeout 85 python3 benchmarks/train_benchmark.py --out "$OUT" --tag h200_31b_steady --text-layers 60 --vision-layers 27 --variants ours_bf16_b16,ours_bf16_b8 --steps 4 --deadline-s 45
  ;;
gpu)  # the GPU tests (fused kernels on by default with a GPU) and the entrypoint at 31B widths, killed and resumed
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
  timeout 240 python3 benchmarks/entrypoint_check.py --models mid --out "$OUT/entrypoint_h200_mid_fused.json"
  ;;
esac
