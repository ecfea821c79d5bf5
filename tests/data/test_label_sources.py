"""Named label sources for `crop --labels`, checked against TotalSegmentator's published label tables."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from sam3d_med.data.classes import DEFAULT_CLASS_NAMES
from sam3d_med.data.crop import parse_label_map
from sam3d_med.errors import InputError
from tests.data.test_crop import label_geometry, whole_scan

# Excerpts of the published tables: totalsegmentator/map_to_binary.py, class_map, wasserth/TotalSegmentator at
# commit 0e65a44 ("total_v1", "heartchambers_highres", and "total", the v2 task).
PUBLISHED = {
    "total_v1": {44: "heart_myocardium", 45: "heart_atrium_left", 46: "heart_ventricle_left",
                 47: "heart_atrium_right", 48: "heart_ventricle_right", 49: "pulmonary_artery"},
    "heartchambers_highres": {1: "heart_myocardium", 2: "heart_atrium_left", 3: "heart_ventricle_left",
                              4: "heart_atrium_right", 5: "heart_ventricle_right", 6: "aorta", 7: "pulmonary_artery"},
    "total": {51: "heart", 52: "aorta", 53: "pulmonary_vein"},
}
# the tutorial's classes in TotalSegmentator's words
TUTORIAL = {"left_atrium": "heart_atrium_left", "left_ventricle": "heart_ventricle_left",
            "right_atrium": "heart_atrium_right", "right_ventricle": "heart_ventricle_right",
            "myocardium": "heart_myocardium"}


@pytest.mark.parametrize("name, table, expected", [
    ("totalseg_v1", "total_v1", {45: 1, 46: 2, 47: 3, 48: 4, 44: 5}),
    ("heartchambers_highres", "heartchambers_highres", {2: 1, 3: 2, 4: 3, 5: 4, 1: 5}),
])
def test_named_sources_follow_the_published_tables(name, table, expected):
    mapping = parse_label_map(name, available=[])
    assert mapping == expected
    for source, target in mapping.items():  # each source value is, in the table, the structure of its class
        assert PUBLISHED[table][source] == TUTORIAL[DEFAULT_CLASS_NAMES[target]]


@pytest.mark.parametrize("name", ["totalseg_v2", "total"])
def test_v2_total_has_no_chambers_and_says_what_to_run(name):
    assert "heart_atrium_left" not in PUBLISHED["total"].values()
    with pytest.raises(InputError, match="has no heart chambers .*51 is the whole heart.*heartchambers_highres"):
        parse_label_map(name, available=[51, 52])


def test_crop_of_heartchambers_output_gives_the_tutorials_classes(tmp_path):
    """A scan segmented in heartchambers_highres numbering (1 myocardium, 2 LA, 3 LV, 4 RA, 5 RV):
    `--labels heartchambers_highres` puts each structure at its tutorial value, names them in
    classes.json, and keeps it where it is in the world."""
    scan = whole_scan(tmp_path)  # labels 51..55 = the tutorial's 1..5 + 50
    source = nib.load(scan["label"])
    values = np.asarray(source.dataobj)
    highres = np.zeros_like(values)
    for tutorial, chamber in {1: 2, 2: 3, 3: 4, 4: 5, 5: 1}.items():
        highres[values == tutorial + 50] = chamber
    nib.save(nib.Nifti1Image(highres, source.affine), tmp_path / "highres.nii.gz")
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "crop", "--image", str(scan["image"]), "--label",
                           str(tmp_path / "highres.nii.gz"), "--out", str(tmp_path / "data"), "--case_id", "s0001",
                           "--labels", "heartchambers_highres"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = json.loads((tmp_path / "data" / "classes.json").read_text())["class_names"]
    assert names == {str(k): v for k, v in DEFAULT_CLASS_NAMES.items()}
    for value in range(1, 6):
        centroid, _ = label_geometry(tmp_path / "data" / "s0001" / "s0001-label.nii.gz", value)
        centroid_0, _ = label_geometry(scan["label"], value + 50)
        assert np.linalg.norm(centroid - centroid_0) < 1.0, value
