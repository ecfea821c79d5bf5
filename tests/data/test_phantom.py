import numpy as np
import pytest

from sam3d_med.data.classes import read_class_names
from sam3d_med.data.geometry import voxel_to_world
from sam3d_med.data.phantom import generate_case, write_phantom_dataset
from sam3d_med.io.nifti import load_volume

LA, LV, RA, RV, MYO = 1, 2, 3, 4, 5


def centroid_world(case, value):
    return voxel_to_world(np.argwhere(case.label == value).mean(0), case.affine)


def test_deterministic_for_a_seed_and_varies_between_cases():
    a = generate_case(np.random.default_rng([5, 1]))
    b = generate_case(np.random.default_rng([5, 1]))
    c = generate_case(np.random.default_rng([5, 2]))
    assert np.array_equal(a.image_hu, b.image_hu) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("seed", range(4))
def test_plausible_anatomy(seed):
    case = generate_case(np.random.default_rng([11, seed]))
    assert case.label.shape == (64, 64, 64) and case.image_hu.dtype == np.int16
    assert set(np.unique(case.label)) == {0, 1, 2, 3, 4, 5}
    assert not case.label[[0, -1]].any() and not case.label[:, [0, -1]].any() and not case.label[:, :, [0, -1]].any()
    # RAS+ world: +x = patient right, +z = superior
    assert centroid_world(case, RV)[0] > centroid_world(case, LV)[0]
    assert centroid_world(case, RA)[0] > centroid_world(case, LA)[0]
    assert centroid_world(case, LA)[2] > centroid_world(case, LV)[2]
    assert centroid_world(case, RA)[2] > centroid_world(case, RV)[2]
    # the myocardium wraps the LV cavity: most LV voxels next to the cavity's outside are myocardium
    from scipy import ndimage
    ring = ndimage.binary_dilation(case.label == LV) & (case.label != LV)
    assert (case.label[ring] == MYO).mean() > 0.6
    # intensities: left blood pool brighter than myocardium, myocardium brighter than fat/lung
    mean_hu = {v: case.image_hu[case.label == v].mean() for v in (LV, MYO)}
    assert mean_hu[LV] > mean_hu[MYO] + 100
    assert mean_hu[MYO] > case.image_hu[case.label == 0].mean()


def test_anatomy_is_the_same_in_every_file_orientation(tmp_path):
    write_phantom_dataset(tmp_path / "las", 1, seed=3, axcodes="LAS")
    write_phantom_dataset(tmp_path / "pir", 1, seed=3, axcodes="PIR")
    a = load_volume(tmp_path / "las/s0001/s0001-label.nii.gz")
    b = load_volume(tmp_path / "pir/s0001/s0001-label.nii.gz")
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    assert np.array_equal(a.data, b.data)


def test_dataset_layout_and_class_names(tmp_path):
    write_phantom_dataset(tmp_path, 2, seed=0)
    assert (tmp_path / "s0002" / "s0002-image.nii.gz").is_file()
    assert (tmp_path / "s0002" / "s0002-label.nii.gz").is_file()
    assert "SYNTHETIC" in (tmp_path / "README_SYNTHETIC.txt").read_text()
    assert read_class_names(tmp_path)[2] == "left_ventricle"
    img = load_volume(tmp_path / "s0001" / "s0001-image.nii.gz")
    assert np.abs(img.affine[:3, 3]).max() > 50  # a scanner-like, non-zero origin


def test_a_folder_holding_another_data_set_is_refused(tmp_path):
    from sam3d_med.errors import InputError

    write_phantom_dataset(tmp_path / "set", 1, seed=3)
    write_phantom_dataset(tmp_path / "set", 1, seed=3)  # the same set again: fine
    write_phantom_dataset(tmp_path / "set", 1, seed=3, first_index=2)  # more of its cases: fine
    with pytest.raises(InputError, match=r"holds another synthetic data set \(different: seed\)"):
        write_phantom_dataset(tmp_path / "set", 1, seed=4)
    (tmp_path / "real" / "case1").mkdir(parents=True)
    with pytest.raises(InputError, match="not a synthetic data set"):
        write_phantom_dataset(tmp_path / "real", 1, seed=3)
    assert sorted(p.name for p in (tmp_path / "set").iterdir() if p.is_dir()) == ["s0001", "s0002"]
