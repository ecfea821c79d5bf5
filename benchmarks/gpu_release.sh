#!/usr/bin/env bash
# The GPU figures of the release-size model (random weights) in one call: training step time and
# peak memory (batch 1/2/4, with and without gradient checkpointing, bf16 frozen weights and fp32),
# the flow-only step, sampling a reconstruction (25 steps, guidance) at batch 1 and 8, a decoder
# inversion step, and the fp16/bf16 velocity error. Writes JSON and the log under $OUT (or
# gpu_out/). Needs torch with CUDA, peft, pyyaml, tqdm, numpy (no other project dependency).
#
#   OUT=gpu_out bash benchmarks/gpu_release.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, peft; print('torch', torch.__version__, 'peft', peft.__version__, 'cuda', torch.version.cuda)"
  $PY benchmarks/bench_model.py --preset sam3d --device cuda --weights bf16 --batch 1,2,4 --warmup 1 --repeats 3 \
      --json "$OUT/train_bf16.json"
  $PY benchmarks/bench_model.py --preset sam3d --device cuda --weights fp32 --batch 4 --warmup 1 --repeats 3 \
      --json "$OUT/train_fp32.json"
  $PY benchmarks/bench_model.py --preset sam3d --device cuda --weights bf16 --objective flow --batch 4 --warmup 1 \
      --repeats 3 --json "$OUT/train_flow_only.json"
  $PY benchmarks/bench_inference.py --preset sam3d --device cuda --batch 1,8 --repeats 1 --precision \
      --json "$OUT/inference.json"
} 2>&1 | tee "$OUT/gpu_release.log"
