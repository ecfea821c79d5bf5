#!/usr/bin/env bash
# Tutorial step 3: fine-tuning. A thin wrapper that turns the tutorial's options into Hydra overrides
# for scripts/train_medical_hydra.py (configs/train.yaml); every other argument passes through.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

usage() {
    cat <<'EOF_USAGE'
Usage: ./scripts/run_medical_pipeline.sh [options] [key=value ...]

Options (each becomes a Hydra override of configs/train.yaml):
  --gpu N                      train on GPU N (device=cuda:N); a GPU that is not there is one line naming those there are
  --batch_size N               training.batch_size
  --epochs N                   training.epochs
  --preprocess_crop_size H,W   data.preprocess_crop_size (square, e.g. 256,256)
  --lora_rank N                lora.rank, and lora.alpha = 2N unless lora.alpha=... is given
  --resume PATH                training.resume: continue from a checkpoint (e.g. checkpoints/medical/last.pt)
  --data DIR                   data.slice_cache_dir (default dataset/ts_processed)
  -h, --help                   this help

Other arguments go to Hydra unchanged, e.g. model=tiny training.learning_rate=1e-4 loss.w_sdf_loss=0.5.
Outputs: checkpoints/medical/{best,last,epoch_N}.pt and outputs/DATE/TIME/train.log.
EOF_USAGE
}

overrides=()
lora_rank=""
alpha_given=0
need_value() { [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --gpu) need_value "$@"; overrides+=("device=cuda:$2"); shift 2 ;;
        --batch_size) need_value "$@"; overrides+=("training.batch_size=$2"); shift 2 ;;
        --epochs) need_value "$@"; overrides+=("training.epochs=$2"); shift 2 ;;
        --preprocess_crop_size) need_value "$@"; overrides+=("data.preprocess_crop_size=[$2]"); shift 2 ;;
        --lora_rank) need_value "$@"; lora_rank="$2"; shift 2 ;;
        --resume) need_value "$@"; overrides+=("training.resume=$2"); shift 2 ;;
        --data) need_value "$@"; overrides+=("data.slice_cache_dir=$2"); shift 2 ;;
        --*) echo "error: unknown option $1 (see --help; Hydra overrides are written key=value)" >&2; exit 2 ;;
        *) case "$1" in lora.alpha=*) alpha_given=1 ;; esac; overrides+=("$1"); shift ;;
    esac
done
if [ -n "$lora_rank" ]; then
    overrides+=("lora.rank=$lora_rank")
    [ "$alpha_given" = 1 ] || overrides+=("lora.alpha=$((2 * lora_rank))")
fi
# errors about these settings name this script's options (sam3d_med.train.hydra_entry)
export SAM3D_MED_OPTION_NAMES="training.batch_size=--batch_size,training.epochs=--epochs,\
data.preprocess_crop_size=--preprocess_crop_size,lora.rank=--lora_rank,training.resume=--resume,data.slice_cache_dir=--data"
echo "+ $PYTHON $HERE/train_medical_hydra.py ${overrides[*]}" >&2
exec "$PYTHON" "$HERE/train_medical_hydra.py" "${overrides[@]}"
