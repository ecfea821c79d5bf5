import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from sam3d_med.data.phantom import orientation_affine
from sam3d_med.errors import InputError
from sam3d_med.io.nifti import load_volume, save_volume, voxel_spacing_mm


@pytest.mark.parametrize("axcodes,oblique", [("LAS", 0.0), ("PIR", 0.0), ("LPS", 20.0), ("RAS", 0.0)])
def test_canonical_keeps_every_voxel_at_its_world_position(tmp_path, axcodes, oblique):
    shape = (5, 6, 7)
    affine = orientation_affine(axcodes, 2.5, shape, centre_world_mm=(10.0, -40.0, 300.0), oblique_deg=oblique)
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    save_volume(tmp_path / "v.nii.gz", data, affine)
    vol = load_volume(tmp_path / "v.nii.gz")
    assert vol.axcodes == ("R", "A", "S")
    # Each original voxel's value is found in the canonical array at the voxel with the same world point.
    orig_ijk = np.indices(shape).reshape(3, -1).T
    world = orig_ijk @ affine[:3, :3].T + affine[:3, 3]
    canon_ijk = np.rint((world - vol.affine[:3, 3]) @ np.linalg.inv(vol.affine[:3, :3]).T).astype(int)
    assert np.array_equal(vol.data[tuple(canon_ijk.T)], data[tuple(orig_ijk.T)])
    np.testing.assert_allclose(voxel_spacing_mm(vol.affine), 2.5)


def test_save_sets_sform_and_qform(tmp_path):
    affine = orientation_affine("LPS", 3.0, (4, 4, 4), (1.0, 2.0, 3.0))
    save_volume(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.uint8), affine)
    img = nib.load(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(img.get_sform(), affine)
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)


def test_real_nibabel_file_loads_canonical():
    vol = load_volume(os.path.join(data_path, "anatomical.nii"))
    assert vol.data.ndim == 3 and vol.axcodes == ("R", "A", "S")


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        load_volume(tmp_path / "absent.nii.gz")
    with pytest.raises(InputError, match="3-D, got 4-D"):
        load_volume(os.path.join(data_path, "example4d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="3-D, got 2-D"):
        load_volume(tmp_path / "flat.nii.gz")
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="1 non-finite"):
        load_volume(tmp_path / "nan.nii.gz")
    good = gzip.compress(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)).to_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="cannot read") as info:
        load_volume(tmp_path / "cut.nii.gz")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(InputError, match="cannot read"):
        load_volume(tmp_path / "junk.nii.gz")


def test_grid_mismatch_says_what_differs_in_mm_and_what_to_do(tmp_path):
    from sam3d_med.io.nifti import grid_mismatch

    affine = orientation_affine("LAS", 3.0, (64, 64, 64), np.array([10.0, -20.0, 30.0]))
    save_volume(tmp_path / "image.nii.gz", np.zeros((64, 64, 64), np.int16), affine)
    shifted = affine.copy()
    shifted[:3, 3] += [3.0, 0.0, -1.5]
    save_volume(tmp_path / "label.nii.gz", np.zeros((64, 64, 64), np.uint8), shifted)
    image, label = load_volume(tmp_path / "image.nii.gz"), load_volume(tmp_path / "label.nii.gz")
    assert grid_mismatch(image, image) is None
    message = grid_mismatch(label, image)
    assert "origin shifted by [3.0, 0.0, -1.5] mm" in message and "resample it onto the image" in message
    assert "shape" not in message and "axes" not in message
    finer = affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    save_volume(tmp_path / "fine.nii.gz", np.zeros((128, 128, 128), np.uint8), finer)
    message = grid_mismatch(load_volume(tmp_path / "fine.nii.gz"), image)
    assert "shape (128, 128, 128) vs (64, 64, 64)" in message and "voxel size [1.5, 1.5, 1.5] vs [3.0, 3.0, 3.0] mm" in message


def test_class_name_file_format_errors_show_the_format(tmp_path):
    import json

    from sam3d_med.data.classes import read_class_names

    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"class_names": {"1": "a", "2": "b"}}))
    assert read_class_names(tmp_path) == {1: "a", 2: "b"}
    for content, got in ((["a", "b"], "got a list"), ({"class_names": ["a", "b"]}, "got a list"),
                         ({"names": {}}, 'got no "class_names"')):
        path.write_text(json.dumps(content))
        with pytest.raises(InputError, match=f'must map label values to names: {{"class_names": {{"1": .*{got}'):
            read_class_names(tmp_path)
    path.write_text(json.dumps({"class_names": {"0": "background", "1": "a"}}))
    with pytest.raises(InputError, match="label values start at 1"):
        read_class_names(tmp_path)
