#!/usr/bin/env bash
# The whole demo on CPU (`make demo`): synthetic phantom -> preprocessing. Later stages (training,
# evaluation, visualization) join this script as they are built.
set -euo pipefail
OUT="${1:-demo_output}"
mkdir -p "$OUT"
echo "== 1/2 synthetic heart phantom (SYNTHETIC data, not patient images) -> $OUT/raw"
sam3d-med phantom --out "$OUT/raw" --cases 12 --seed 0
echo "== 2/2 preprocessing (tutorial step 2) -> $OUT/ts_processed"
python scripts/reprocess_ts_nifti.py --original_nifti_dir "$OUT/raw" --out "$OUT/ts_processed" \
    --classes 5 --extract_mesh --spacing 3.0
python - "$OUT/ts_processed" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
n_slices = sum(len(c["slices"]) for c in m["cases"])
print(f"cache: {len(m['cases'])} cases, {n_slices} slice files, classes {m['class_names']}")
PY
echo "demo finished: outputs in $OUT/"
