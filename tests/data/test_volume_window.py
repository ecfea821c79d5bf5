"""The volume frame's n^3 window of a grid: placement, round trips grid <-> window <-> world."""
import numpy as np
import pytest

from sam3d_med.data.geometry import voxel_to_world, world_grid
from sam3d_med.data.volume_window import VolumeWindow, window_around, window_around_plane
from sam3d_med.errors import InputError


def blob(shape, lo, hi):
    voxels = np.zeros(shape, dtype=bool)
    voxels[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = True
    return voxels


def test_an_n_cubed_grid_gets_the_identity_window():
    window = window_around(blob((64, 64, 64), (3, 40, 10), (20, 60, 30)), 64)
    assert window.is_identity and window.start == (0, 0, 0)


def test_the_window_holds_the_structures_centred_and_stays_inside_a_larger_grid():
    shape = (136, 136, 100)
    window = window_around(blob(shape, (50, 2, 70), (89, 30, 99)), 64)
    # axis 0: centred on 50..89 (centre 69.5 -> start 38); axis 1: clipped at 0; axis 2: clipped at 100 - 64
    assert window.start == (38, 0, 36)
    inside = window.take(blob(shape, (50, 2, 70), (89, 30, 99)), False)
    assert inside.sum() == blob(shape, (50, 2, 70), (89, 30, 99)).sum()  # nothing cut


def test_a_shorter_axis_is_padded_around_the_whole_grid():
    window = window_around(blob((66, 40, 63), (10, 5, 0), (50, 30, 62)), 64)
    assert window.start[1] <= 0 and window.start[1] + 64 >= 40  # the whole 40 voxels inside the window
    assert window.start[2] <= 0 and window.start[2] + 64 >= 63
    volume = np.random.default_rng(0).random((66, 40, 63)).astype(np.float32)
    taken = window.take(volume, -1.0)
    assert taken.shape == (64, 64, 64) and (taken == -1.0).sum() == 64**3 - 64 * 40 * 63 + (66 - 64) * 0
    back = window.put_back(taken, np.nan)
    covered = ~np.isnan(back)
    np.testing.assert_array_equal(back[covered], volume[covered])
    assert covered.sum() == 64 * 40 * 63  # axis 0: 64 of the 66 slices


def test_window_voxels_keep_their_world_positions():
    rng = np.random.default_rng(1)
    affine = np.eye(4)
    affine[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * 3.0
    affine[:3, 3] = rng.normal(size=3) * 50
    window = VolumeWindow((-3, 10, 7), 64, (60, 90, 80))
    window_world = world_grid(window.shape, window.affine(affine))
    grid_world = world_grid((60, 90, 80), affine)
    # window voxel [5, 6, 7] is grid voxel [2, 16, 14]
    np.testing.assert_allclose(window_world[:, 5, 6, 7], grid_world[:, 2, 16, 14], atol=1e-9)
    np.testing.assert_allclose(window_world[:, 0, 0, 0], voxel_to_world(np.array([-3.0, 10, 7]), affine), atol=1e-9)
    assert window.slice_index(0, 2) == 5 and window.slice_index(1, 5) is None and window.slice_index(2, 70) == 63


def test_planes_and_volumes_agree():
    volume = np.arange(50 * 70 * 30, dtype=np.float32).reshape(50, 70, 30)
    window = VolumeWindow((-4, 3, -20), 64, volume.shape)
    taken = window.take(volume, -1.0)
    for axis, grid_index in ((0, 10), (1, 40), (2, 5)):
        index = window.slice_index(axis, grid_index)
        plane = window.take_plane(np.take(volume, grid_index, axis=axis), axis, -1.0)
        np.testing.assert_array_equal(plane, np.take(taken, index, axis=axis))


def test_edge_padding_repeats_the_nearest_voxel():
    volume = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    taken = VolumeWindow((-2, -2, -2), 8, (4, 4, 4)).take(volume, None, edge=True)
    assert taken[0, 0, 0] == volume[0, 0, 0] and taken[7, 7, 7] == volume[3, 3, 3]
    np.testing.assert_array_equal(taken[2:6, 2:6, 2:6], volume)


def test_structures_larger_than_the_window_are_one_clear_error():
    with pytest.raises(InputError, match=r"span 70x10x10 voxels, more than the volume frame's 64\^3 window: "
                                         r"use data.target_frame=object"):
        window_around(blob((100, 64, 64), (5, 0, 0), (74, 9, 9)), 64)


def test_a_window_around_one_mask_is_centred_on_its_slice():
    mask = np.zeros((100, 80), dtype=bool)
    mask[60:70, 10:20] = True
    window = window_around_plane(mask, 1, 50, (100, 120, 80), 64)
    assert window.slice_index(1, 50) in (31, 32)  # the slice at the window's centre
    assert window.start[0] == int(np.floor(64.5 - 31.5))
