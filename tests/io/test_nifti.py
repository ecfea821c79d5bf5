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


def two_form_image(path, data, shift_x_mm=15.0):
    """A NIfTI whose sform (code 2, aligned) and qform (code 1, scanner) disagree by ``shift_x_mm`` in x."""
    sform = orientation_affine("LAS", 3.0, data.shape, (0.0, 0.0, 0.0))
    qform = sform.copy()
    qform[0, 3] += shift_x_mm
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    nib.save(img, path)
    return sform, qform


def itk_like_affine(path):
    """The transform a qform-first reader uses (ITK, the reader of 3D Slicer and ITK-SNAP, where both
    forms are set and the qform is valid)."""
    qform, code = nib.load(path).get_qform(coded=True)
    return qform if code else nib.load(path).affine


def test_two_header_forms_are_named_and_kept_on_outputs(tmp_path):
    """sform and qform 15 mm apart: one warning naming both and the one used; an output on the input's
    grid carries both forms and codes, so nibabel (sform) and ITK (qform) readers each put input and
    output at the same place: 0 mm apart."""
    from sam3d_med.io.nifti import GeometryWarning

    data = np.zeros((6, 6, 6), np.int16)
    sform, qform = two_form_image(tmp_path / "scan.nii.gz", data)
    with pytest.warns(GeometryWarning, match=r"sform \(code 2\) and qform \(code 1\) disagree, by up to 15.0 mm: "
                                             r"sam3d-med uses the sform .*ITK-based viewers .* may use the qform"):
        scan = load_volume(tmp_path / "scan.nii.gz", canonical=False)
    np.testing.assert_allclose(scan.affine, sform)
    save_volume(tmp_path / "out.nii.gz", np.ones((6, 6, 6), np.uint8), scan.affine, like=scan)
    out = nib.load(tmp_path / "out.nii.gz")
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    np.testing.assert_allclose(out.affine, nib.load(tmp_path / "scan.nii.gz").affine)  # nibabel: the sform
    np.testing.assert_allclose(itk_like_affine(tmp_path / "out.nii.gz"), itk_like_affine(tmp_path / "scan.nii.gz"),
                               atol=1e-4)  # ITK: the qform
    # without an input to follow, both forms are the affine (code 1)
    save_volume(tmp_path / "new.nii.gz", np.ones((6, 6, 6), np.uint8), scan.affine)
    np.testing.assert_allclose(itk_like_affine(tmp_path / "new.nii.gz"), sform, atol=1e-4)


def test_one_rule_for_a_label_on_its_image_grid(tmp_path):
    """Accepted: the label's voxels coincide with the image's in the world, in any stored order (reordered,
    with a warning). Refused with what differs in mm and axes: a header that puts them elsewhere."""
    from sam3d_med.io.nifti import GeometryWarning, Volume, label_on_image_grid

    shape = (5, 6, 7)
    affine = orientation_affine("LAS", 3.0, shape, (10.0, -40.0, 300.0))
    image = Volume(np.zeros(shape, np.int16), affine)
    label = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    assert label_on_image_grid(Volume(label, affine), image, "same.nii.gz").data is label
    # the same label stored in the other order along j (LPS), its header keeping every voxel in place
    reordered = affine.copy()
    reordered[:3, 3] += affine[:3, 1] * (shape[1] - 1)
    reordered[:3, 1] *= -1
    with pytest.warns(GeometryWarning, match="stored in voxel order LPS, the image in LAS: reordered"):
        back = label_on_image_grid(Volume(label[:, ::-1, :], reordered), image, "lps.nii.gz")
    np.testing.assert_array_equal(back.data, label)
    # permuted axes too (stored k, i, j)
    permuted = affine[:, [2, 0, 1, 3]]
    with pytest.warns(GeometryWarning, match="reordered onto the image's grid"):
        np.testing.assert_array_equal(label_on_image_grid(Volume(np.transpose(label, (2, 0, 1)), permuted), image,
                                                          "kij.nii.gz").data, label)
    # a header that mirrors the label front to back in the world (LPS with the image's origin): refused
    mirrored = affine.copy()
    mirrored[:3, 1] *= -1
    with pytest.raises(InputError, match=r"mirror.nii.gz: label grid does not match the image grid \(axes LPS vs LAS; "
                                         r"voxel centres span .* \(centre shifted by \[0.0, -15.0, 0.0\] mm along R, A, S\)"):
        label_on_image_grid(Volume(label, mirrored), image, "mirror.nii.gz")
