"""Object frame geometry: cube <-> world <-> scan grid round trips, normalisation, pose."""

import math

import numpy as np
import pytest
import torch

from sam3d_med.data.geometry import voxel_to_world, world_grid
from sam3d_med.data.object_frame import (ObjectCube, cube_pose_in_normalised_frame, cube_sdf_mm, normalisation_of_slice,
                                         object_cube, place_cubes_on_grid, sample_cube)
from sam3d_med.data.surfaces import signed_distance_mm
from sam3d_med.eval.metrics import segmentation_metrics
from sam3d_med.model.pose import Pose, decode_pose, encode_pose
from tests.conftest import ellipsoid_mask


def oblique_affine(spacing=(3.0, 2.5, 3.5), angle_deg=25.0, origin=(-40.0, 12.0, 70.0)):
    """An LPS-like oblique grid: rotated about z and y, flipped x and y, anisotropic voxels."""
    a = math.radians(angle_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(a / 2), 0, math.sin(a / 2)], [0, 1, 0], [-math.sin(a / 2), 0, math.cos(a / 2)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.mark.parametrize("affine", [np.diag([3.0, 3.0, 3.0, 1.0]), oblique_affine()])
def test_cube_holds_the_structure_and_round_trips_to_the_scan_grid(affine):
    mask = ellipsoid_mask((40, 40, 40), centre=(20, 18, 22), semi_axes=(8, 5, 10))
    cube = object_cube(mask, affine, margin=0.1)
    # every voxel centre of the structure lies inside the cube, with the margin to spare
    inside = np.abs(cube.to_cube(voxel_to_world(np.argwhere(mask).astype(float), affine))).max()
    assert inside < 0.5 / 1.1 + 1e-6
    sdf = signed_distance_mm(mask, np.linalg.norm(affine[:3, :3], axis=0))
    n = 64
    cube_occ = cube_sdf_mm(sdf, affine, cube, n) < 0
    # the cube's cells are finer than the scan: the structure spans most of them along its long axis
    assert 0.05 < cube_occ.mean() < 0.6
    # place the cube back on the scan grid with its own pose: the same structure, voxel for voxel
    logits = torch.from_numpy(np.where(cube_occ, 5.0, -5.0).astype(np.float32))[None, None]
    points = torch.from_numpy(np.moveaxis(world_grid(mask.shape, affine, np.float32), 0, -1))[None]
    placed = place_cubes_on_grid(logits, torch.eye(3)[None], torch.tensor([cube.centre_mm], dtype=torch.float32),
                                 torch.full((1, 3), cube.side_mm), points)[0].numpy()
    assert segmentation_metrics(placed > 0, mask, np.linalg.norm(affine[:3, :3], axis=0))["dice"] > 0.95


def test_cube_cells_and_sampling_conventions():
    cube = ObjectCube((10.0, -5.0, 3.0), 64.0)
    cells = cube.cell_centres_mm(4)
    assert np.allclose(cells[0, 0, 0], np.array([10 - 24.0, -5 - 24.0, 3 - 24.0]))  # (0.5 / 4 - 0.5) * 64 = -24
    assert np.allclose(cells[3, 1, 2] - cells[2, 1, 2], [16.0, 0, 0])  # first array axis along R
    assert np.allclose(cube.to_cube(cells[1, 2, 3]), [(1.5 / 4) - 0.5, (2.5 / 4) - 0.5, (3.5 / 4) - 0.5])
    values = torch.arange(64, dtype=torch.float32).reshape(1, 1, 4, 4, 4)
    x = torch.tensor([[[(1.5 / 4) - 0.5, (2.5 / 4) - 0.5, (3.5 / 4) - 0.5], [0.9, 0.0, 0.0]]])
    sampled = sample_cube(values, x, outside=-7.0)
    assert torch.allclose(sampled, torch.tensor([[1 * 16 + 2 * 4 + 3, -7.0]]))  # cell [1, 2, 3]; beyond: outside


def test_normalisation_follows_the_official_definition():
    g = np.random.default_rng(0)
    points = g.normal(size=(3, 20, 20)) * 30 + np.array([5.0, -10.0, 40.0])[:, None, None]
    points[:, :2] = np.nan  # invalid pixels
    mask = np.zeros((20, 20), bool)
    mask[5:9, 6:12] = True
    shift, scale = normalisation_of_slice(points, mask)
    assert np.allclose(shift, np.median(points[:, mask], axis=1))
    valid = np.isfinite(points).all(0)
    assert math.isclose(scale, float(np.median(np.abs(points[:, valid] - shift[:, None]).max(0))))
    assert normalisation_of_slice(points, np.zeros((20, 20), bool)) == (pytest.approx(np.zeros(3)), 1.0)


def test_pose_target_places_the_cube_back_in_world_millimetres():
    """Normalised pose (as a flow target, through the release's latent convention) -> world pose."""
    cube = ObjectCube((12.0, -30.0, 55.0), 48.0)
    shift, scale = np.array([10.0, -33.0, 50.0]), 70.0
    rotation, translation, scales = cube_pose_in_normalised_frame(cube, shift, scale)
    pose = Pose(torch.tensor(rotation, dtype=torch.float32)[None], torch.tensor(translation, dtype=torch.float32)[None],
                torch.tensor(scales, dtype=torch.float32)[None])
    world = decode_pose(encode_pose(pose)).in_metric_frame(torch.tensor([[scale]]), torch.tensor(shift, dtype=torch.float32))
    x = torch.tensor([0.25, -0.5, 0.1])
    p = world.rotation[0] @ (world.scale[0] * x) + world.translation[0]
    assert torch.allclose(p, torch.tensor(cube.centre_mm) + cube.side_mm * x, atol=1e-3)
