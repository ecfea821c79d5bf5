#!/usr/bin/env python
"""The real-anatomy set, in the tutorial's layout, made from ``../shared/anatomy`` (never copied into
the repository; the set is written where ``--out`` says).

    python benchmarks/anatomy_set.py --anatomy_dir ../shared/anatomy --out /tmp/anatomy_set

writes three data folders, each ``CASE/CASE-image.nii.gz`` + ``CASE-label.nii.gz`` + ``provenance.json``
and a ``classes.json``:

- ``chambers_phantom_hu/`` and ``chambers_ct_hu/``: the tutorial's classes (1 LA, 2 LV, 3 RA, 4 RV,
  5 myocardium) on 64^3 voxels of 3 mm, intensities synthesised in the phantom's style and in a real
  CT's (``data.real_anatomy``):
  - ``strocchi2020_case01``: the four cavity surfaces of a heart-failure CT (Strocchi et al. 2020,
    CC BY 4.0), STL in LPS mm, closed and rasterised (volumes checked against the surfaces'); no
    myocardium;
  - ``bivme_patient1``: the biventricular labels fitted to a real cine MR (biv-me, Apache-2.0), 1 mm
    -> 3 mm: 1 LV cavity -> 2, 3 RV cavity -> 4, 2 myocardium -> 5 (LV and RV walls together, where
    the tutorial's myocardium is the LV's: said in its provenance); no atria.
- ``templates/``: the chambers' label maps at a finer grid, for anatomy-based phantoms
  (``sam3d-med phantom --template``): Strocchi's surfaces rasterised on 128^3 voxels of 1.5 mm, biv-me's
  1 mm labels renumbered to the tutorial's values (thin walls alias less than from the 3 mm crops);
- ``real_ct/ts_pulmonary_ct``: the real CTA (TotalSegmentator test data, Apache-2.0) cropped with
  ``sam3d-med crop`` around its heart (1) and pulmonary artery (2), its own intensities.

Prints each structure's volume before and after (surface or 1 mm labels vs the 3 mm labels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sam3d_med.data.classes import CLASSES_FILE, DEFAULT_CLASS_NAMES, class_names_document
from sam3d_med.data.crop import relabelled
from sam3d_med.data.real_anatomy import (HU_STYLES, labels_to_crop, surfaces_to_crop, synthesize_ct_hu,
                                         write_anatomy_case)
from sam3d_med.io.atomic import atomic_write_json
from sam3d_med.io.nifti import load_volume, save_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
STROCCHI_FILES = {1: "closed_volume_left_atrium.stl", 2: "closed_volume_left_ventricle.stl",
                  3: "closed_volume_right_atrium.stl", 4: "closed_volume_right_ventricle.stl"}
BIVME_TO_TUTORIAL = {1: 2, 2: 5, 3: 4}  # biv-me: 1 LV cavity, 2 myocardium (LV + RV walls), 3 RV cavity
STROCCHI = {"source": "Strocchi et al. 2020, 'A publicly available virtual cohort of four-chamber heart meshes', "
                      "case 01 (heart-failure CT), via ansys/pyansys-heart test assets "
                      "(tests/heart/assets/reference_models/FourChamber/closed_volume_*.stl)",
            "licence": "CC BY 4.0 (meshes); MIT (pyansys-heart)", "modality": "CT (surfaces only, no image)"}
BIVME = {"source": "UOA-Heart-Mechanics-Research/biv-me example/ (patient 1, end-diastolic frame): labels "
                   "rasterised from the biventricular meshes fitted to a 3 T cine MR, capped at the valve planes",
         "licence": "Apache-2.0", "modality": "MR (labels only used here)",
         "label_note": "myocardium (5) is the LV and RV walls together; the tutorial's myocardium is the LV's"}
TS_CT = {"source": "TotalSegmentator test data (tests/reference_files/pulmonary_report/models/: ct_cropped.nii.gz, "
                   "heart.nii.gz, pulmonary_artery.nii.gz)", "licence": "Apache-2.0",
         "modality": "contrast-enhanced chest CT (CTA), its own intensities",
         "made_by": "sam3d-med crop --labels 1,2 --size 64 --spacing 3 (heart 1, pulmonary artery 2)"}


def strocchi_surfaces(anatomy_dir: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    import trimesh

    surfaces = {}
    for value, name in STROCCHI_FILES.items():
        mesh = trimesh.load(anatomy_dir / "strocchi2020_case01" / name)  # merges the STL's repeated vertices
        surfaces[value] = (np.asarray(mesh.vertices) @ LPS_TO_RAS.T, np.asarray(mesh.faces))
    return surfaces


def strocchi_case(anatomy_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    return surfaces_to_crop(strocchi_surfaces(anatomy_dir))


def write_templates(anatomy_dir: Path, out: Path) -> dict[str, Path]:
    """Template label maps (tutorial numbering) of the two chamber sources at a finer grid."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}-label.nii.gz" for name in ("strocchi2020_case01", "bivme_patient1")}
    if not paths["strocchi2020_case01"].is_file():
        label, affine, _ = surfaces_to_crop(strocchi_surfaces(anatomy_dir), size=128, spacing_mm=1.5, oversample=2)
        save_volume(paths["strocchi2020_case01"], label, affine, dtype=np.uint8)
    if not paths["bivme_patient1"].is_file():
        source = load_volume(anatomy_dir / "bivme_patient1" / "labels_ED_1mm.nii.gz", "biv-me labels", canonical=False)
        save_volume(paths["bivme_patient1"], relabelled(source.data, BIVME_TO_TUTORIAL), source.affine,
                    dtype=np.uint8, like=source)
    return paths


def bivme_case(anatomy_dir: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    source = load_volume(anatomy_dir / "bivme_patient1" / "labels_ED_1mm.nii.gz", "biv-me labels")
    label, affine = labels_to_crop(source, BIVME_TO_TUTORIAL)
    ml = float(np.prod(source.spacing_mm)) / 1000.0
    volumes = {target: {"source_1mm_ml": float((source.data == value).sum() * ml),
                        "labelled_ml": float((label == target).sum() * 0.027)}
               for value, target in BIVME_TO_TUTORIAL.items()}
    return label, affine, volumes


def real_ct_case(anatomy_dir: Path, out_dir: Path) -> Path:
    """The real CT through the ``sam3d-med crop`` command (its labels merged into one file first)."""
    ct_dir = anatomy_dir / "ts_pulmonary_ct"
    heart = load_volume(ct_dir / "heart.nii.gz", "heart", canonical=False)
    artery = load_volume(ct_dir / "pulmonary_artery.nii.gz", "pulmonary artery", canonical=False)
    merged = np.zeros(heart.data.shape, dtype=np.uint8)
    merged[heart.data > 0] = 1
    merged[artery.data > 0] = 2  # the artery wins where the two masks overlap (provenance says how much)
    voxel_ml = float(np.prod(heart.spacing_mm)) / 1000.0
    overlap_ml = float(((heart.data > 0) & (artery.data > 0)).sum() * voxel_ml)
    source_ml = {"heart": float((heart.data > 0).sum() * voxel_ml), "pulmonary_artery": float((artery.data > 0).sum() * voxel_ml)}
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.nii.gz"
        save_volume(labels, merged, heart.affine, dtype=np.uint8, like=heart)
        subprocess.run([sys.executable, "-m", "sam3d_med.cli", "crop", "--image", str(ct_dir / "ct.nii.gz"),
                        "--label", str(labels), "--out", str(out_dir), "--case_id", "ts_pulmonary_ct",
                        "--labels", "1,2", "--class_names", "heart,pulmonary_artery"], check=True)
    folder = out_dir / "ts_pulmonary_ct"
    labels = load_volume(folder / "ts_pulmonary_ct-label.nii.gz", "label").data
    crop_ml = {name: float((labels == value).sum() * 0.027) for value, name in ((1, "heart"), (2, "pulmonary_artery"))}
    atomic_write_json(folder / "provenance.json", {
        **TS_CT, "source_ml": source_ml, "crop_ml": crop_ml, "overlap_ml": overlap_ml,
        "label_note": f"the source masks overlap by {overlap_ml:.1f} ml (the artery's root inside the heart mask); "
                      f"the artery's label wins there, so the heart label is the heart mask without it"})
    return folder


def build(anatomy_dir: Path, out: Path, seed: int = 0) -> dict:
    """Write the set under ``out``; returns the volume checks per case."""
    cases = {"strocchi2020_case01": (strocchi_case(anatomy_dir), STROCCHI),
             "bivme_patient1": (bivme_case(anatomy_dir), BIVME)}
    for style in HU_STYLES:
        folder = out / f"chambers_{style}_hu"
        doc = class_names_document(DEFAULT_CLASS_NAMES)
        doc.update(real_anatomy=True, intensities=f"synthesised, style {style!r} (sam3d_med.data.real_anatomy)")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / CLASSES_FILE, doc)
        for n, (case_id, ((label, affine, _), provenance)) in enumerate(cases.items()):
            image = synthesize_ct_hu(label, affine, np.random.default_rng([seed, n]), style)
            write_anatomy_case(folder, case_id, image, label, affine,
                               {**provenance, "intensities": f"synthesised, style {style!r}", "grid": "64^3, 3 mm, RAS"})
    real_ct_case(anatomy_dir, out / "real_ct")
    write_templates(anatomy_dir, out / "templates")
    return {case_id: volumes for case_id, ((_, _, volumes), _) in cases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy_dir", default=os.environ.get("SAM3D_MED_ANATOMY_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "anatomy")),
                        help="../shared/anatomy beside the checkout, or SAM3D_MED_ANATOMY_DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    anatomy_dir = Path(args.anatomy_dir)
    if not (anatomy_dir / "strocchi2020_case01").is_dir():
        raise SystemExit(f"{anatomy_dir}: not the shared anatomy folder (strocchi2020_case01/ missing)")
    checks = build(anatomy_dir, Path(args.out), args.seed)
    print(f"{'case':<22}{'class':<18}{'source ml':>10}{'3 mm labels ml':>16}")
    for case_id, volumes in checks.items():
        for value, v in volumes.items():
            source = v.get("surface_ml", v.get("source_1mm_ml"))
            print(f"{case_id:<22}{DEFAULT_CLASS_NAMES[value]:<18}{source:>10.1f}{v['labelled_ml']:>16.1f}")
    real = json.loads((Path(args.out) / "real_ct" / "ts_pulmonary_ct" / "provenance.json").read_text())
    for name in ("heart", "pulmonary_artery"):
        print(f"{'ts_pulmonary_ct':<22}{name:<18}{real['source_ml'][name]:>10.1f}{real['crop_ml'][name]:>16.1f}")
    print(f"(ts_pulmonary_ct: {real['label_note']})")


if __name__ == "__main__":
    main()
