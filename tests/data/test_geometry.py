import numpy as np
import pytest
from scipy import ndimage

from sam3d_med.data.geometry import (bounding_box, isotropic_grid, resample_isotropic, take_slice, world_grid,
                                     voxel_to_world, world_to_voxel)
from sam3d_med.data.phantom import orientation_affine
from tests.conftest import ellipsoid_mask


def oblique_affine():
    """A sheared, rotated, anisotropic affine: nothing axis-aligned about it."""
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag([0.8, 1.3, 2.1])
    affine[:3, :3] += 0.05 * rng.normal(size=(3, 3))
    affine[:3, 3] = [-91.0, 12.5, 260.0]
    return affine


@pytest.mark.parametrize("affine", [orientation_affine("LPS", 3.0, (6, 7, 8), (5, -30, 400)),
                                    orientation_affine("PIR", 1.5, (6, 7, 8), (0, 0, 0), oblique_deg=33),
                                    oblique_affine()])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_pointmap_is_affine_times_voxel_index(affine, axis):
    shape = (6, 7, 8)
    index = 3
    pointmap = take_slice(world_grid(shape, affine), axis, index, leading=1)
    other = [a for a in range(3) if a != axis]
    assert pointmap.shape == (3, shape[other[0]], shape[other[1]])
    for h in range(pointmap.shape[1]):
        for w in range(pointmap.shape[2]):
            ijk = [0, 0, 0]
            ijk[axis], ijk[other[0]], ijk[other[1]] = index, h, w
            expected = affine @ np.array([*ijk, 1.0])
            np.testing.assert_allclose(pointmap[:, h, w], expected[:3], atol=1e-9)
    # and back: world -> voxel gives the integer index again
    back = world_to_voxel(np.moveaxis(pointmap, 0, -1), affine)
    np.testing.assert_allclose(back[..., axis], index, atol=1e-9)


def test_take_slice_matches_index_convention():
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    assert take_slice(vol, 0, 2)[3, 4] == vol[2, 3, 4]
    assert take_slice(vol, 1, 2)[3, 4] == vol[3, 2, 4]
    assert take_slice(vol, 2, 2)[3, 4] == vol[3, 4, 2]
    chan = np.stack([vol, -vol])
    assert take_slice(chan, 2, 2, leading=1)[1, 3, 4] == -vol[3, 4, 2]


def test_world_voxel_round_trip():
    affine = oblique_affine()
    pts = np.random.default_rng(0).uniform(-5, 40, size=(20, 3))
    np.testing.assert_allclose(world_to_voxel(voxel_to_world(pts, affine), affine), pts, atol=1e-9)


def test_isotropic_grid_keeps_field_of_view():
    affine = orientation_affine("LAS", 1.5, (40, 40, 40), (10, 20, 30))
    shape, new_affine, _ = isotropic_grid((40, 40, 40), affine, 3.0)
    assert shape == (20, 20, 20)
    # outer corner of the first voxel (index -0.5) is the same world point on both grids
    np.testing.assert_allclose(voxel_to_world(np.full(3, -0.5), new_affine), voxel_to_world(np.full(3, -0.5), affine))


def test_resampling_keeps_world_position_of_a_structure():
    affine = orientation_affine("LPS", 1.5, (40, 40, 40), (-20, 35, 120), oblique_deg=10)
    mask = ellipsoid_mask()
    centroid_before = voxel_to_world(np.argwhere(mask).mean(0), affine)
    image = ndimage.gaussian_filter(mask.astype(np.float32) * 100.0, 1.0)
    res_mask, res_affine = resample_isotropic(mask.astype(np.uint8), affine, 3.0, order=0)
    res_image, res_affine2 = resample_isotropic(image, affine, 3.0, order=1)
    np.testing.assert_allclose(res_affine, res_affine2)
    centroid_after = voxel_to_world(np.argwhere(res_mask > 0).mean(0), res_affine)
    # Downsampling by 2 puts each new centre midway between two old ones, and nearest-neighbour
    # breaks those ties to one side: at most half an old voxel (0.75 mm) per axis.
    shift_old_voxels = world_to_voxel(centroid_after, affine) - world_to_voxel(centroid_before, affine)
    assert np.all(np.abs(shift_old_voxels) <= 0.5 + 1e-6)
    # linear interpolation: the value at a new voxel centre equals the old image at that world point
    new_ijk = np.array([10, 9, 11])
    old_ijk = world_to_voxel(voxel_to_world(new_ijk, res_affine), affine)
    expected = ndimage.map_coordinates(image, old_ijk[:, None], order=1)[0]
    assert res_image[tuple(new_ijk)] == pytest.approx(expected, rel=1e-5)


def test_resampling_is_identity_when_spacing_matches():
    affine = orientation_affine("RAS", 3.0, (8, 8, 8), (0, 0, 0))
    data = np.random.default_rng(0).normal(size=(8, 8, 8))
    out, out_affine = resample_isotropic(data, affine, 3.0, order=1)
    assert out is data and np.array_equal(out_affine, affine)


@pytest.mark.parametrize("margin", [0, 1, 3])
def test_bounding_box_matches_find_objects(margin):
    rng = np.random.default_rng(margin)
    for shape in [(9, 12, 7), (5, 6), (30,)]:
        for _ in range(5):
            mask = rng.random(shape) > 0.9
            mask[(0,) * len(shape)] = rng.random() > 0.5  # sometimes touching the array's corner
            if not mask.any():
                continue
            expected = ndimage.find_objects(mask.astype(np.uint8))[0]
            expected = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(expected, shape))
            assert bounding_box(mask, margin) == expected
    with pytest.raises(ValueError):
        bounding_box(np.zeros((3, 3), dtype=bool))
