#!/usr/bin/env bash
# The default training path on a GPU, end to end, with the rehearsal release (release/rehearsal: the
# release's file layout, YAML schema, Lightning checkpoint, fp16 decoder, no encoder): phantoms ->
# preprocessing -> decoder-inversion targets -> LoRA training with model=sam3d on CUDA (frozen weights
# in bf16, training.gradient_checkpointing=auto deciding from the memory estimate) -> evaluation. A
# smoke run of the CUDA-only code paths, not a benchmark. Writes the logs under $OUT (or gpu_out/).
#
#   OUT=gpu_out bash benchmarks/gpu_release_path.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
W=$(mktemp -d)
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  $PY - <<'PYEOF' || exit 3
import importlib.util, sys
needed = ["torch", "hydra", "omegaconf", "nibabel", "scipy", "skimage", "trimesh", "matplotlib", "tensorboard",
          "safetensors", "huggingface_hub", "peft", "tqdm", "yaml", "filelock"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
print("missing packages:", missing or "none")
sys.exit(3 if missing else 0)
PYEOF
  $PY -m sam3d_med.cli phantom --out "$W/raw" --cases 8 --seed 0 &&
  $PY -m sam3d_med.cli preprocess --original_nifti_dir "$W/raw" --out "$W/cache" --classes 5 --no_progress &&
  $PY scripts/train_medical_hydra.py experiment=demo_cpu device=cuda model.checkpoint_dir=release/rehearsal/checkpoints \
      data.slice_cache_dir="$W/cache" training.epochs=2 training.max_steps_per_epoch=20 \
      training.checkpoint_dir="$W/ckpt" hydra.run.dir="$OUT/train" &&
  $PY -m sam3d_med.cli phantom --out "$W/test_raw" --cases 2 --seed 99 --first_index 101 &&
  $PY -m sam3d_med.cli preprocess --original_nifti_dir "$W/test_raw" --out "$W/test_cache" --classes 5 --no_progress &&
  $PY scripts/eval_medical.py --checkpoint "$W/ckpt/best.pt" --data_root "$W/test_cache" --output_dir "$OUT/eval" \
      --batch_size 8 --device cuda
  echo "exit status $?"
} 2>&1 | tee "$OUT/gpu_release_path.log"
