"""Reconstructions on a scan's grid, in either target frame.

- ``volume`` frame: the decoded occupancy *is* the scan's n^3 grid.
- ``object`` frame: the decoded occupancy is the structure in its own cube; the decoded pose (in the
  normalised pointmap frame) is brought back to world mm with the sample's normalisation
  (world = normalised * scale + shift) and the cube is sampled at every voxel centre of the grid
  (trilinear in the cube; ``OUTSIDE_LOGIT`` beyond it).

The input slice is ground truth, given by the user, and is used twice (``input_planes``): the
predicted pose is first fitted to it (``fit_pose_to_input_planes``: the placed shape's cross-section
on the input plane is moved and scaled in the plane onto the mask, as SAM3D's layout
post-optimisation fits the pose to the input mask and pointmap), then ``impose_input_slice`` makes
the prediction equal the input mask on that plane.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data.geometry import world_grid
from ..data.object_frame import place_cubes_on_grid, sample_cube, world_to_cube
from .pose import Pose
from .sam3d import SparseStructureModel

SLICE_LOGIT = 20.0  # |logit| written on the input plane (p = 1 - 2e-9 inside, 2e-9 outside)
PROBABILITY_FLOOR = 1e-6  # mean probabilities of several draws are clamped to [floor, 1 - floor] before the logit


@dataclass
class GridReconstruction:
    logits: torch.Tensor  # (B, I, J, K) float32 on the grid
    cube_logits: torch.Tensor | None = None  # (B, 1, n, n, n) object frame: the shape in its cube
    pose_world: Pose | None = None  # object frame: cube -> world mm (p = R (s x) + t)
    draws: list["GridReconstruction"] | None = None  # object frame, several draws: each one's cube and pose


def mean_of_draws_at(draws: list[GridReconstruction], sample: int, points_mm: torch.Tensor) -> torch.Tensor:
    """Logits of the mean probability of object-frame ``draws`` (cube and world pose each) for batch
    element ``sample``, at any points ``points_mm`` (1, I, J, K, 3) world mm: (I, J, K). What
    ``reconstruct_on_grid`` averages on the grid, anywhere else (a finer grid for the surface)."""
    return logit_of_mean_probability([place_cubes_on_grid(
        d.cube_logits[sample:sample + 1], d.pose_world.rotation[sample:sample + 1],
        d.pose_world.translation[sample:sample + 1], d.pose_world.scale[sample:sample + 1],
        points_mm.to(d.cube_logits.device))[0] for d in draws])


def logit_of_mean_probability(logits: list[torch.Tensor]) -> torch.Tensor:
    """Logits of the mean probability of several draws' logits (clamped to [floor, 1 - floor] first)."""
    probability = sum(torch.sigmoid(x.float()) for x in logits) / len(logits)
    return torch.logit(probability.clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))


def grid_points_mm(shape_ijk, affine: np.ndarray, device=None) -> torch.Tensor:
    """(1, I, J, K, 3) float32 world mm of a grid's voxel centres."""
    points = np.moveaxis(world_grid(tuple(shape_ijk), affine, dtype=np.float32), 0, -1)
    return torch.from_numpy(np.ascontiguousarray(points))[None].to(device)


def grid_points_of_affines(affines: torch.Tensor, shape_ijk) -> torch.Tensor:
    """(B, I, J, K, 3) float32 world mm of the voxel centres of grids (``shape_ijk``, affines (B, 4, 4))."""
    axes = [torch.arange(n, dtype=torch.float64, device=affines.device) for n in shape_ijk]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (I, J, K, 3)
    affines = affines.double()
    world = torch.einsum("bxy,ijky->bijkx", affines[:, :3, :3], ijk) + affines[:, None, None, None, :3, 3]
    return world.float()


def reconstruct_on_grid(model: SparseStructureModel, inputs: dict[str, torch.Tensor], frame: str,
                        grid_points: torch.Tensor | None = None, *, seed: int = 0, sampler=None,
                        one_step: bool = False, input_planes=None) -> GridReconstruction:
    """A batch of ``condition_inputs`` (with ``pointmap_shift`` (B, 3) and ``pointmap_scale`` (B,) in
    the object frame) -> logits on the grid whose voxel centres are ``grid_points`` ((1 or B, I, J, K, 3)
    world mm; object frame only: in the volume frame the grid is the model's own).
    ``input_planes``: (axes, indices, masks) of each sample's input slice on that grid; given, the
    object frame's pose is fitted to it (``fit_pose_to_input_planes``). With ``sampler.samples`` > 1
    the logits are those of the mean probability of that many draws (seeds ``seed`` onwards): there is
    no single cube or pose, and in the object frame ``draws`` holds each draw's (``mean_of_draws_at``)."""
    samples = int(getattr(sampler, "samples", 1) or 1)
    if samples > 1:
        one = replace(sampler, samples=1)
        draws = [reconstruct_on_grid(model, inputs, frame, grid_points, seed=seed + k, sampler=one, one_step=one_step,
                                     input_planes=input_planes) for k in range(samples)]
        return GridReconstruction(logit_of_mean_probability([d.logits for d in draws]),
                                  draws=draws if frame == "object" else None)
    logits, pose = model.generate(inputs, seed=seed, sampler=sampler, one_step=one_step)
    if frame == "volume":
        return GridReconstruction(logits[:, 0])
    if grid_points is None:
        raise ValueError("the object frame needs the grid's voxel centres (grid_points)")
    scale = inputs["pointmap_scale"].to(logits.device, torch.float32).reshape(-1, 1)
    pose_world = pose.in_metric_frame(scale, inputs["pointmap_shift"].to(logits.device, torch.float32))
    if input_planes is not None:
        axes, indices, masks = input_planes
        points = grid_points.to(logits.device)
        plane_points = [points[b if points.shape[0] > 1 else 0].select(int(a), int(i))
                        for b, (a, i) in enumerate(zip(axes, indices))]
        pose_world = fit_pose_to_input_planes(logits, pose_world, plane_points, [torch.as_tensor(m) for m in masks])
    placed = place_cubes_on_grid(logits, pose_world.rotation, pose_world.translation, pose_world.scale,
                                 grid_points.to(logits.device))
    return GridReconstruction(placed, logits, pose_world)


def impose_input_slice(logits: torch.Tensor, axis, index, mask_planes: torch.Tensor) -> torch.Tensor:
    """Logits (B, I, J, K) with each sample's input plane (``axis``[b], ``index``[b]) set to its mask
    ``mask_planes`` (B, H, W), or B planes of their own sizes, on that plane: +SLICE_LOGIT inside,
    -SLICE_LOGIT outside."""
    out = logits.clone()
    for b in range(out.shape[0]):
        plane = torch.where(mask_planes[b].to(out.device) > 0.5, SLICE_LOGIT, -SLICE_LOGIT).to(out.dtype)
        out[b].select(int(axis[b]), int(index[b])).copy_(plane)
    return out


FIT_ROUNDS = 2
FIT_MAX_FACTOR = 2.0  # the in-plane scale moves by at most this factor (or its inverse) per round


def fit_pose_to_input_planes(cube_logits: torch.Tensor, pose: Pose, plane_points_mm: list[torch.Tensor],
                             plane_masks: list[torch.Tensor], rounds: int = FIT_ROUNDS) -> Pose:
    """World poses (cube -> mm) fitted to each sample's input slice: the placed shape's cross-section
    on the input plane (p >= 0.5) is scaled about its centroid so that its spread (standard deviation
    along each of the plane's two axes) is the mask's, the size through the plane by the geometric
    mean of the two factors, then moved within the plane so that its centroid is the mask's; twice.
    A shape that misses the plane is first moved along the plane's normal until the plane passes
    through its centre. Where the plane cuts the shape stays the model's (scaling about a point of the
    plane keeps the fraction of the shape's height at which it is cut): one slice does not show it.

    ``cube_logits`` (B, 1, n, n, n); ``plane_points_mm``: B arrays (H, W, 3) of the plane's voxel centres;
    ``plane_masks``: B bool (H, W). A sample with an empty mask keeps its pose."""
    rotation, translation, scale = pose.rotation.clone(), pose.translation.clone(), pose.scale.clone()
    for b in range(cube_logits.shape[0]):
        points = plane_points_mm[b].to(translation)
        mask = plane_masks[b].to(points.device).bool().reshape(-1)
        if not mask.any() or min(points.shape[:2]) < 2:  # nothing to fit to, or no plane to measure
            continue
        steps = (points[0, 1] - points[0, 0], points[1, 0] - points[0, 0])  # one pixel along w, along h
        u, v = _unit(steps[0]), _unit(steps[1])
        normal = _unit(torch.linalg.cross(u, v))
        points = points.reshape(-1, 3)
        target = points[mask]
        logits_b, R = cube_logits[b:b + 1].float(), rotation[b]

        def section(t, s):
            cube_points = world_to_cube(points[None], R[None], t[None], s[None])
            return sample_cube(logits_b, cube_points)[0] > 0

        inside = section(translation[b], scale[b])
        if not inside.any():  # the plane misses the shape: bring it through the shape's centre
            occupied = torch.nonzero(logits_b[0, 0] > 0).to(points.dtype)
            if occupied.shape[0] == 0:
                continue
            centre = R @ (scale[b] * ((occupied.mean(0) + 0.5) / logits_b.shape[-1] - 0.5)) + translation[b]
            translation[b] -= normal * torch.dot(centre - target.mean(0), normal)
            inside = section(translation[b], scale[b])
        for _ in range(rounds):
            if not inside.any():
                break
            found = points[inside]
            centroid = found.mean(0)
            # in-plane spread ratios, then the factor along each cube axis by its share of each plane axis
            factors = [(_spread(target, axis, step.norm()) / _spread(found, axis, step.norm()))
                       .clamp(1 / FIT_MAX_FACTOR, FIT_MAX_FACTOR) for axis, step in zip((u, v), steps)]
            # through the plane the size follows the section's (their geometric mean): a structure seen
            # larger in its section is larger, not only wider (on development phantoms, not the test
            # cases: Dice 0.618 vs 0.609 with the through-plane scale kept)
            factors.append((factors[0] * factors[1]).sqrt())
            along = R.T @ torch.stack([u, v, normal], dim=1)  # (3 cube axes, 3 plane axes): direction cosines
            per_axis = 1 + (along**2 * (torch.stack(factors) - 1)).sum(dim=1)
            stretch = R @ torch.diag(per_axis) @ R.T
            scale[b] = scale[b] * per_axis
            translation[b] = centroid + stretch @ (translation[b] - centroid)
            inside = section(translation[b], scale[b])
            if inside.any():
                shift = target.mean(0) - points[inside].mean(0)
                translation[b] += shift - normal * torch.dot(shift, normal)  # within the plane
                inside = section(translation[b], scale[b])
    return Pose(rotation, translation, scale)


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm().clamp_min(1e-12)


def _spread(points: torch.Tensor, direction: torch.Tensor, pixel_mm: torch.Tensor) -> torch.Tensor:
    """Standard deviation along ``direction`` of the pixels at ``points``, each a uniform square of side
    ``pixel_mm`` (so a one-pixel-wide mask has its true spread, not 0)."""
    return ((points @ direction).var(unbiased=False) + pixel_mm**2 / 12).sqrt()

