import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sam3d_med.data.phantom import orientation_affine
from sam3d_med.data.real_anatomy import synthesize_ct_hu, write_anatomy_case
from sam3d_med.io.nifti import load_volume

REPO = Path(__file__).resolve().parents[2]
# the shared real anatomy beside the checkout (../shared/anatomy), or where SAM3D_MED_ANATOMY_DIR says
ANATOMY = Path(os.environ.get("SAM3D_MED_ANATOMY_DIR", REPO.parent / "shared" / "anatomy"))


def chambers(shape=(40, 40, 40)):
    label = np.zeros(shape, dtype=np.uint8)
    label[8:18, 10:30, 10:30] = 2  # LV
    label[20:32, 10:30, 10:30] = 4  # RV, a 2-voxel gap from the LV (the septum)
    label[8:30, 10:30, 31:37] = 1  # LA
    return label


def test_intensities_follow_the_style_and_the_seed():
    label = chambers()
    affine = orientation_affine("RAS", 3.0, label.shape, (0.0, 0.0, 0.0))
    phantom = synthesize_ct_hu(label, affine, np.random.default_rng(3), "phantom")
    ct = synthesize_ct_hu(label, affine, np.random.default_rng(3), "ct")
    assert np.array_equal(phantom, synthesize_ct_hu(label, affine, np.random.default_rng(3), "phantom"))
    core = ndimage.binary_erosion(label == 2, iterations=2)
    assert 260 < phantom[core].mean() < 380 and 430 < ct[core].mean() < 540
    # no myocardium label: an unlabelled wall of myocardial intensity between the cavities
    septum = (label == 0) & ndimage.binary_dilation(label == 2, iterations=1) & ndimage.binary_dilation(label == 4, iterations=2)
    assert septum.any() and 60 < ct[septum].mean() < 260


def test_a_case_says_which_classes_it_lacks(tmp_path):
    label = chambers()
    affine = orientation_affine("RAS", 3.0, label.shape, (0.0, 0.0, 0.0))
    folder = write_anatomy_case(tmp_path, "c1", synthesize_ct_hu(label, affine, np.random.default_rng(0)), label,
                                affine, {"source": "a test"})
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["classes_absent"] == ["right_atrium", "myocardium"]
    assert np.array_equal(load_volume(folder / "c1-label.nii.gz", canonical=False).data, label)


@pytest.mark.skipif(not (ANATOMY / "strocchi2020_case01").is_dir(),
                    reason=f"the shared real anatomy ({ANATOMY}) is not beside this checkout (SAM3D_MED_ANATOMY_DIR)")
def test_the_real_anatomy_set_keeps_every_structure_volume(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from anatomy_set import build
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    checks = build(ANATOMY, tmp_path)
    for value, v in checks["strocchi2020_case01"].items():  # rasterised at 3 mm vs the closed surface
        assert v["labelled_ml"] == pytest.approx(v["surface_ml"], rel=0.03), value
    # the capped surfaces' volumes; the shared README lists the open surfaces' (LA 89.9, LV 171.6, RA 193.0,
    # RV 234.8 ml): capping the valve and vein openings adds at most 0.7 ml
    assert [round(v["surface_ml"]) for v in checks["strocchi2020_case01"].values()] == [90, 172, 194, 235]
    for value, v in checks["bivme_patient1"].items():  # 1 mm labels -> 3 mm
        assert v["labelled_ml"] == pytest.approx(v["source_1mm_ml"], rel=0.03), value
    for style in ("phantom", "ct"):
        labels = load_volume(tmp_path / f"chambers_{style}_hu/bivme_patient1/bivme_patient1-label.nii.gz").data
        assert sorted(np.unique(labels).astype(int)) == [0, 2, 4, 5]
    ct = load_volume(tmp_path / "real_ct/ts_pulmonary_ct/ts_pulmonary_ct-image.nii.gz").data
    heart = load_volume(tmp_path / "real_ct/ts_pulmonary_ct/ts_pulmonary_ct-label.nii.gz").data == 1
    assert 560 < heart.sum() * 0.027 < 700 and 350 < np.median(ct[heart]) < 550  # its own intensities
