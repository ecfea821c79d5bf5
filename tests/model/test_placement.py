"""Fitting the predicted pose to the input slice (object frame): the placed shape's section on the
input plane lands on the mask; through the plane the model's placement is kept."""
import numpy as np
import torch

from sam3d_med.data.geometry import voxel_to_world
from sam3d_med.model.placement import fit_pose_to_input_planes, grid_points_mm, place_cubes_on_grid
from sam3d_med.model.pose import Pose

N = 32


def ellipsoid_cube_logits(radii=(0.4, 0.3, 0.2)):
    """Logits (1, 1, n, n, n) of an axis-aligned ellipsoid centred in the cube (cube coordinates)."""
    x = (torch.arange(N, dtype=torch.float32) + 0.5) / N - 0.5
    a, b, c = torch.meshgrid(x, x, x, indexing="ij")
    level = (a / radii[0]) ** 2 + (b / radii[1]) ** 2 + (c / radii[2]) ** 2
    return (10.0 * (1.0 - level))[None, None]


def oblique_affine(spacing=3.0, degrees=20.0):
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = [-40.0, 25.0, -60.0]
    return affine


def section(logits, pose, points, axis, index):
    placed = place_cubes_on_grid(logits, pose.rotation, pose.translation, pose.scale, points)[0]
    return (placed > 0).select(axis, index).numpy()


def test_the_fitted_section_lands_on_the_mask_on_an_oblique_grid():
    shape, affine, axis, index = (48, 48, 40), oblique_affine(), 2, 20
    points = grid_points_mm(shape, affine)
    logits = ellipsoid_cube_logits()
    centre = torch.tensor(voxel_to_world(np.array([24.0, 20.0, 20.0]), affine), dtype=torch.float32)
    truth = Pose(torch.eye(3)[None], centre[None], torch.full((1, 3), 90.0))
    mask = torch.from_numpy(section(logits, truth, points, axis, index))
    # the model's guess: 20 mm off within the plane, 3 mm through it, a third too small
    guess = Pose(torch.eye(3)[None], (centre + torch.tensor([16.0, -12.0, 3.0]))[None], torch.full((1, 3), 60.0))
    before = section(logits, guess, points, axis, index)
    fitted = fit_pose_to_input_planes(logits, guess, [points[0].select(axis, index)], [mask])
    after = section(logits, fitted, points, axis, index)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(before, mask.numpy()) < 0.5 and dice(after, mask.numpy()) > 0.9
    normal = torch.tensor(affine[:3, 2] / np.linalg.norm(affine[:3, 2]), dtype=torch.float32)
    plane_point = points[0, 0, 0, index]
    # through the plane the model's placement is kept, relative to the structure's size (the plane cuts
    # it at the same fraction of its height); within the plane it is the truth's
    offset = [float((pose.translation[0] - plane_point) @ normal) / float(pose.scale[0, 2]) for pose in (guess, fitted)]
    assert abs(offset[0] - offset[1]) < 1e-4 and abs(offset[0]) > 0.04
    in_plane_error = (fitted.translation[0] - centre) - ((fitted.translation[0] - centre) @ normal) * normal
    assert float(in_plane_error.norm()) < 3.0
    assert float((fitted.scale[0] / truth.scale[0] - 1).abs().max()) < 0.15  # the size, all three axes


def test_a_shape_that_misses_the_plane_is_brought_through_it():
    shape, affine, axis, index = (40, 40, 40), np.diag([3.0, 3.0, 3.0, 1.0]), 0, 20
    points = grid_points_mm(shape, affine)
    logits = ellipsoid_cube_logits((0.45, 0.45, 0.45))
    centre = torch.tensor([60.0, 60.0, 60.0])
    truth = Pose(torch.eye(3)[None], centre[None], torch.full((1, 3), 60.0))
    mask = torch.from_numpy(section(logits, truth, points, axis, index))
    guess = Pose(torch.eye(3)[None], (centre + torch.tensor([45.0, 0.0, 0.0]))[None], torch.full((1, 3), 60.0))
    assert not section(logits, guess, points, axis, index).any()
    fitted = fit_pose_to_input_planes(logits, guess, [points[0].select(axis, index)], [mask])
    after = section(logits, fitted, points, axis, index)
    assert 2 * (after & mask.numpy()).sum() / (after.sum() + mask.numpy().sum()) > 0.9


def test_an_empty_mask_keeps_the_pose():
    points = grid_points_mm((16, 16, 16), np.eye(4))
    guess = Pose(torch.eye(3)[None], torch.tensor([[8.0, 8.0, 8.0]]), torch.full((1, 3), 8.0))
    fitted = fit_pose_to_input_planes(ellipsoid_cube_logits(), guess, [points[0].select(2, 8)],
                                      [torch.zeros(16, 16, dtype=torch.bool)])
    assert torch.equal(fitted.translation, guess.translation) and torch.equal(fitted.scale, guess.scale)


def test_several_draws_give_the_logit_of_their_mean_probability(tiny_model):
    from dataclasses import replace

    from sam3d_med.model.placement import reconstruct_on_grid
    from tests.model.conftest import condition_inputs

    tiny_model.eval()
    inputs = {**condition_inputs(batch=1, size=32), "pointmap_shift": torch.zeros(1, 3), "pointmap_scale": torch.ones(1)}
    points = grid_points_mm((12, 12, 12), np.diag([0.2, 0.2, 0.2, 1.0]) @ np.eye(4))
    one = replace(tiny_model.cfg.sampler, steps=2, samples=1)
    with torch.no_grad():
        draws = [reconstruct_on_grid(tiny_model, inputs, "object", points, seed=s, sampler=one).logits for s in (5, 6)]
        mean = reconstruct_on_grid(tiny_model, inputs, "object", points, seed=5, sampler=replace(one, samples=2))
    assert not torch.allclose(draws[0], draws[1])  # two different draws
    expected = (torch.sigmoid(draws[0]) + torch.sigmoid(draws[1])) / 2
    torch.testing.assert_close(torch.sigmoid(mean.logits), expected.clamp(1e-6, 1 - 1e-6), atol=1e-5, rtol=0)
    assert mean.cube_logits is None and mean.pose_world is None


def two_draws_on(points, affine):
    """Two object-frame draws (an ellipsoid cube at two nearby world poses) placed on a grid, as
    ``reconstruct_on_grid`` returns them, and the logits of their mean probability there."""
    from sam3d_med.model.placement import GridReconstruction, logit_of_mean_probability

    cube = ellipsoid_cube_logits()
    centre = torch.tensor(voxel_to_world(np.array([[11.5, 11.5, 11.5]]), affine)[0], dtype=torch.float32)
    draws = []
    for shift in ([0.0, 0.0, 0.0], [2.0, -1.5, 1.0]):
        pose = Pose(torch.eye(3)[None], (centre + torch.tensor(shift))[None], torch.full((1, 3), 40.0))
        draws.append(GridReconstruction(place_cubes_on_grid(cube, pose.rotation, pose.translation, pose.scale, points),
                                        cube, pose))
    return draws, logit_of_mean_probability([d.logits for d in draws])


def test_the_mean_of_draws_is_meshed_on_a_finer_grid_that_agrees_with_the_scan_grid():
    from sam3d_med.data.geometry import bounding_box
    from sam3d_med.eval.predict import finer_surface_grid, surface_of_logits
    from sam3d_med.model.placement import mean_of_draws_at

    affine = oblique_affine()
    points = grid_points_mm((24, 24, 24), affine)
    draws, coarse = two_draws_on(points, affine)
    coarse = coarse[0].numpy()
    fine_shape, fine_affine = finer_surface_grid(coarse, affine)
    np.testing.assert_allclose(np.linalg.norm(fine_affine[:3, :3], axis=0), 1.0)  # 3 mm / 3, same orientation
    fine = mean_of_draws_at(draws, 0, grid_points_mm(fine_shape, fine_affine)).numpy()
    assert fine.shape == fine_shape
    box = bounding_box(coarse > 0, margin=2)
    # every scan voxel centre is a fine voxel centre, with the same value there (round trip through world mm)
    np.testing.assert_allclose(fine[1::3, 1::3, 1::3], coarse[box], atol=1e-4)
    fine_mesh, coarse_mesh = surface_of_logits(fine, fine_affine), surface_of_logits(coarse, affine)
    assert len(fine_mesh.faces) > 4 * len(coarse_mesh.faces)
    assert abs(fine_mesh.volume / coarse_mesh.volume - 1) < 0.1
    assert finer_surface_grid(np.full((8, 8, 8), -5.0), affine) is None  # nothing predicted, no grid


def test_three_orthogonal_slices_fix_the_size_and_place_in_every_direction():
    """One slice leaves where it cuts the shape and its size through the plane to the model; with the
    three orthogonal slices through the structure the fit places and sizes it in 3-D."""
    from sam3d_med.data.input_slices import InputSlice, InputSlices
    from sam3d_med.model.placement import fit_pose_to_input_slices

    shape, affine = (48, 48, 48), np.diag([3.0, 3.0, 3.0, 1.0])
    points = grid_points_mm(shape, affine)
    logits = ellipsoid_cube_logits()
    centre = torch.tensor([70.0, 75.0, 68.0])
    truth = Pose(torch.eye(3)[None], centre[None], torch.full((1, 3), 90.0))
    true_grid = place_cubes_on_grid(logits, truth.rotation, truth.translation, truth.scale, points)[0] > 0
    planes = [(0, 23), (1, 25), (2, 22)]
    given = InputSlices(tuple(InputSlice(a, i, true_grid.select(a, i)) for a, i in planes))
    guess = Pose(torch.eye(3)[None], (centre + torch.tensor([12.0, -9.0, 10.0]))[None],
                 torch.tensor([[60.0, 110.0, 70.0]]))

    def dice(pose):
        placed = place_cubes_on_grid(logits, pose.rotation, pose.translation, pose.scale, points)[0] > 0
        return float(2 * (placed & true_grid).sum() / (placed.sum() + true_grid.sum()))

    one = fit_pose_to_input_slices(logits, guess, points, [InputSlices(given.slices[:1])])
    three = fit_pose_to_input_slices(logits, guess, points, [given])
    assert dice(guess) < 0.5 and dice(one) < 0.85 and dice(three) > 0.9, (dice(guess), dice(one), dice(three))
    assert float((three.translation[0] - centre).norm()) < 4.0
    assert float((three.scale[0] / truth.scale[0] - 1).abs().max()) < 0.1
