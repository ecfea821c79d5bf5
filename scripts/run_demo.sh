#!/usr/bin/env bash
# The whole demo on CPU (`make demo`): synthetic phantom -> preprocessing -> training the tiny model
# -> evaluation on separate synthetic test cases -> figures, meshes and the HTML report.
set -euo pipefail
OUT="${1:-demo_output}"
mkdir -p "$OUT"
echo "== 1/5 synthetic heart phantom (SYNTHETIC data, not patient images) -> $OUT/raw"
sam3d-med phantom --out "$OUT/raw" --cases 12 --seed 0
echo "== 2/5 preprocessing (tutorial step 2) -> $OUT/ts_processed"
python scripts/reprocess_ts_nifti.py --original_nifti_dir "$OUT/raw" --out "$OUT/ts_processed" \
    --classes 5 --extract_mesh --spacing 3.0
python - "$OUT/ts_processed" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
n_slices = sum(len(c["slices"]) for c in m["cases"])
print(f"cache: {len(m['cases'])} cases, {n_slices} slice files, classes {m['class_names']}")
PY
echo "== 3/5 training the tiny model on CPU (tutorial step 3; no pretrained weights exist for it, so it"
echo "       trains all its own weights: experiment=demo_tiny). About 5 minutes."
python scripts/train_medical_hydra.py experiment=demo_tiny data.slice_cache_dir="$OUT/ts_processed" \
    training.epochs=6 training.max_steps_per_epoch=60 \
    training.checkpoint_dir="$OUT/checkpoints/medical" hydra.run.dir="$OUT/outputs/train"
echo "== 4/5 evaluation (tutorial step 4) on 3 new synthetic cases -> $OUT/results/evaluation"
sam3d-med phantom --out "$OUT/test_raw" --cases 3 --seed 99 --first_index 101
python scripts/reprocess_ts_nifti.py --original_nifti_dir "$OUT/test_raw" --out "$OUT/ts_processed_test" \
    --classes 5 --spacing 3.0 --no_progress
python scripts/eval_medical.py --checkpoint "$OUT/checkpoints/medical/best.pt" --data_root "$OUT/ts_processed_test" \
    --output_dir "$OUT/results/evaluation" --batch_size 8 --save_viz
echo "== 5/5 visualization (tutorial step 5) -> $OUT/results"
CKPT="$OUT/checkpoints/medical/best.pt"
python scripts/visualize_comparison.py --checkpoint "$CKPT" --volume "$OUT/test_raw/s0101/s0101-image.nii.gz" \
    --label "$OUT/test_raw/s0101/s0101-label.nii.gz" --slice_idx 32 --axis 2 --output "$OUT/results/comparison.png"
sam3d-med export-slice --image "$OUT/test_raw/s0101/s0101-image.nii.gz" --label "$OUT/test_raw/s0101/s0101-label.nii.gz" \
    --slice_idx 32 --out "$OUT/png_input"
python scripts/visualize_finetuned.py --lora_checkpoint "$CKPT" --image "$OUT/png_input/image.png" \
    --mask_dir "$OUT/png_input/masks" --mask_index 0 --output_dir "$OUT/results/visualizations"
sam3d-med report "$OUT/results/evaluation"
echo "demo finished: outputs in $OUT/ (training log and curves.png in $OUT/outputs/train, metrics and figures in"
echo "$OUT/results). Open the report: $OUT/results/evaluation/report.html"
