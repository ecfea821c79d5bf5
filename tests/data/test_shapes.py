import numpy as np

from sam3d_med.data.shapes import OBJECTS_PER_CASE, generate_shapes_case, write_shapes_dataset
from sam3d_med.io.nifti import load_volume


def test_generic_shape_cases_are_seeded_ct_like_and_labelled(tmp_path):
    image, label, affine = generate_shapes_case(np.random.default_rng([0, 1]))
    again, label_again, _ = generate_shapes_case(np.random.default_rng([0, 1]))
    assert np.array_equal(image, again) and np.array_equal(label, label_again)
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape == (64, 64, 64)
    assert set(np.unique(label)) <= set(range(OBJECTS_PER_CASE + 1)) and (label > 0).any()
    assert image.min() <= -900 and image.max() > 100  # air around the body, contrasted objects
    # every object shows against soft tissue (~40 HU), thin ones blurred (partial volume) but visible
    for value in np.unique(label)[1:]:
        assert float(np.abs(image[label == value].astype(float) - 40.0).max()) > 100.0
    folders = write_shapes_dataset(tmp_path, 2, seed=3)
    assert [f.name for f in folders] == ["s0001", "s0002"] and (tmp_path / "README_SYNTHETIC.txt").is_file()
    stored = load_volume(folders[0] / "s0001-label.nii.gz").data
    assert stored.shape == (64, 64, 64) and stored.max() >= 1
