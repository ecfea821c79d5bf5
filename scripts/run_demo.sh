#!/usr/bin/env bash
# The whole demo on CPU (`make demo`), the user's tutorial on the default path: the rehearsal release
# (a small base packaged exactly like Meta's, release/rehearsal) served by a local stand-in Hub and
# downloaded with step 1's real code -> synthetic heart phantoms preprocessed (step 2) -> LoRA
# fine-tuning of the downloaded base with model=sam3d (step 3) -> evaluation beside the baselines on
# new phantoms (step 4) -> figures, meshes and the HTML report (step 5).
set -euo pipefail
OUT="${1:-demo_output}"
mkdir -p "$OUT"
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true' EXIT

echo "== 1/5 weights (tutorial step 1): the rehearsal release from a stand-in Hub on this machine -> $OUT/checkpoints/hf"
rm -f "$OUT/hub_endpoint"
sam3d-med serve-release release/rehearsal --endpoint_file "$OUT/hub_endpoint" &
SERVER=$!
for _ in $(seq 1 100); do [ -s "$OUT/hub_endpoint" ] && break; sleep 0.1; done
HF_ENDPOINT="$(cat "$OUT/hub_endpoint")" HF_HOME="$OUT/hf_home" HF_HUB_DISABLE_TELEMETRY=1 \
    python scripts/download_hf_checkpoints.py --repo facebook/sam-3d-objects --out "$OUT/checkpoints/hf"
kill "$SERVER" && wait "$SERVER" 2>/dev/null || true
SERVER=""
sam3d-med model-info --preset sam3d --config_dir "$OUT/checkpoints/hf" | sed -n 1,2p

echo "== 2/5 synthetic heart phantom (SYNTHETIC data, not patient images) and preprocessing (tutorial step 2)"
sam3d-med phantom --out "$OUT/raw" --cases 12 --seed 0
python scripts/reprocess_ts_nifti.py --original_nifti_dir "$OUT/raw" --out "$OUT/ts_processed" \
    --classes 5 --extract_mesh --spacing 3.0

echo "== 3/5 LoRA fine-tuning of the downloaded base (tutorial step 3, default model=sam3d, object frame)"
python scripts/train_medical_hydra.py experiment=demo_cpu model.checkpoint_dir="$OUT/checkpoints/hf" \
    data.slice_cache_dir="$OUT/ts_processed" training.epochs=6 training.max_steps_per_epoch=40 \
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
