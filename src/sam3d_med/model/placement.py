"""Reconstructions on a scan's grid, in either target frame.

- ``volume`` frame: the decoded occupancy *is* the scan's n^3 grid.
- ``object`` frame: the decoded occupancy is the structure in its own cube; the decoded pose (in the
  normalised pointmap frame) is brought back to world mm with the sample's normalisation
  (world = normalised * scale + shift) and the cube is sampled at every voxel centre of the grid
  (trilinear in the cube; ``OUTSIDE_LOGIT`` beyond it).

The input slices are ground truth, given by the user, and are used twice (``data.input_slices``): the
predicted pose is first fitted to them (``fit_pose_to_input_slices``: the placed shape's cross-section
on each input plane is moved and scaled in the plane onto its mask, as SAM3D's layout
post-optimisation fits the pose to the input mask and pointmap), then ``impose_input_slices`` makes
the prediction equal each input mask on its plane.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..data.geometry import grid_points_mm, grid_points_of_affines  # noqa: F401 (imported from here too)
from ..data.frames import TargetFrame, target_frame
from ..data.input_slices import InputSlices
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


def reconstruct_on_grid(model: SparseStructureModel, inputs: dict[str, torch.Tensor], frame: str | TargetFrame,
                        grid_points: torch.Tensor | None = None, *, seed: int = 0, sampler=None,
                        one_step: bool = False, input_slices: list[InputSlices] | None = None) -> GridReconstruction:
    """A batch of ``condition_inputs`` (with ``pointmap_shift`` (B, 3) and ``pointmap_scale`` (B,) in
    the object frame) -> logits on the grid whose voxel centres are ``grid_points`` ((1 or B, I, J, K, 3)
    world mm; object frame only: in the volume frame the grid is the model's own).
    ``input_slices``: each sample's input slices on that grid; given, a frame placed by a pose has its
    pose fitted to them (``fit_pose_to_input_slices``). With ``sampler.samples`` > 1
    the logits are those of the mean probability of that many draws (seeds ``seed`` onwards): there is
    no single cube or pose, and in the object frame ``draws`` holds each draw's (``mean_of_draws_at``)."""
    frame = target_frame(frame)
    samples = int(getattr(sampler, "samples", 1) or 1)
    if samples > 1:
        one = replace(sampler, samples=1)
        draws = [reconstruct_on_grid(model, inputs, frame, grid_points, seed=seed + k, sampler=one, one_step=one_step,
                                     input_slices=input_slices) for k in range(samples)]
        return GridReconstruction(logit_of_mean_probability([d.logits for d in draws]),
                                  draws=draws if frame.placed_by_pose else None)
    logits, pose = model.generate(inputs, seed=seed, sampler=sampler, one_step=one_step)
    if not frame.placed_by_pose:
        return GridReconstruction(frame.place(logits, None, None))
    if grid_points is None:
        raise ValueError("the object frame needs the grid's voxel centres (grid_points)")
    scale = inputs["pointmap_scale"].to(logits.device, torch.float32).reshape(-1, 1)
    pose_world = pose.in_metric_frame(scale, inputs["pointmap_shift"].to(logits.device, torch.float32))
    if input_slices is not None:
        pose_world = fit_pose_to_input_slices(logits, pose_world, grid_points.to(logits.device), input_slices)
    return GridReconstruction(frame.place(logits, pose_world, grid_points), logits, pose_world)


def impose_input_slices(logits: torch.Tensor, input_slices: list[InputSlices]) -> torch.Tensor:
    """Logits (B, I, J, K) with every input plane of each sample set to its mask: +SLICE_LOGIT
    inside, -SLICE_LOGIT outside (the slices are given, not predicted)."""
    out = logits.clone()
    for b, slices in enumerate(input_slices):
        for s in slices:
            plane = torch.where(torch.as_tensor(s.mask).to(out.device) > 0.5, SLICE_LOGIT, -SLICE_LOGIT).to(out.dtype)
            out[b].select(s.axis, s.index).copy_(plane)
    return out


def fit_pose_to_input_slices(cube_logits: torch.Tensor, pose: Pose, grid_points: torch.Tensor,
                             input_slices: list[InputSlices]) -> Pose:
    """``fit_pose_to_input_planes`` for each sample's input slices on the grid whose voxel centres
    are ``grid_points`` ((1 or B, I, J, K, 3) world mm)."""
    planes = [[(grid_points[b if grid_points.shape[0] > 1 else 0].select(s.axis, s.index), torch.as_tensor(s.mask))
               for s in slices] for b, slices in enumerate(input_slices)]
    return fit_pose_to_input_planes(cube_logits, pose, [[p for p, _ in sample] for sample in planes],
                                    [[m for _, m in sample] for sample in planes])


FIT_ROUNDS = 2
FIT_MAX_FACTOR = 2.0  # the in-plane scale moves by at most this factor (or its inverse) per round


def fit_pose_to_input_planes(cube_logits: torch.Tensor, pose: Pose, plane_points_mm: list, plane_masks: list,
                             rounds: int = FIT_ROUNDS) -> Pose:
    """World poses (cube -> mm) fitted to each sample's input slice(s): the placed shape's cross-section
    on an input plane (p >= 0.5) is scaled about its centroid so that its spread (standard deviation
    along each of the plane's two axes) is the mask's, then moved within the plane so that its
    centroid is the mask's; twice, over every plane in turn. With one plane the size through it follows
    the geometric mean of the two in-plane factors (one slice does not show it; with several, the others
    do). A shape that misses a plane is first moved along the plane's normal until the plane passes
    through its centre. Where one plane cuts the shape stays the model's (scaling about a point of the
    plane keeps the fraction of the shape's height at which it is cut).

    ``cube_logits`` (B, 1, n, n, n); ``plane_points_mm``: per sample an array (H, W, 3) of the plane's
    voxel centres, or a list of them (one per input slice); ``plane_masks``: likewise, bool (H, W).
    A plane with an empty mask is not fitted to."""
    rotation, translation, scale = pose.rotation.clone(), pose.translation.clone(), pose.scale.clone()
    for b in range(cube_logits.shape[0]):
        points_b, masks_b = plane_points_mm[b], plane_masks[b]
        if torch.is_tensor(points_b):
            points_b, masks_b = [points_b], [masks_b]
        planes = [_Plane.of(p.to(translation), m) for p, m in zip(points_b, masks_b)]
        planes = [p for p in planes if p is not None]
        if not planes:  # nothing to fit to
            continue
        logits_b = cube_logits[b:b + 1].float()
        through_plane = len(planes) == 1
        for plane in planes:
            if not _section(logits_b, rotation[b], translation[b], scale[b], plane.points).any():
                # the plane misses the shape: bring it through the shape's centre
                occupied = torch.nonzero(logits_b[0, 0] > 0).to(plane.points.dtype)
                if occupied.shape[0] == 0:
                    break
                centre = rotation[b] @ (scale[b] * ((occupied.mean(0) + 0.5) / logits_b.shape[-1] - 0.5)) + translation[b]
                translation[b] -= plane.normal * torch.dot(centre - plane.target.mean(0), plane.normal)
        for _ in range(rounds):
            for plane in planes:
                translation[b], scale[b] = _fit_to_plane(logits_b, rotation[b], translation[b], scale[b], plane,
                                                         through_plane)
    return Pose(rotation, translation, scale)


@dataclass
class _Plane:
    points: torch.Tensor  # (H * W, 3) world mm
    target: torch.Tensor  # (N, 3) the masked points
    steps: tuple  # one pixel along w, along h (world mm vectors)
    u: torch.Tensor
    v: torch.Tensor
    normal: torch.Tensor

    @classmethod
    def of(cls, points: torch.Tensor, mask) -> "_Plane | None":
        mask = torch.as_tensor(mask).to(points.device).bool().reshape(-1)
        if not mask.any() or min(points.shape[:2]) < 2:  # nothing to fit to, or no plane to measure
            return None
        steps = (points[0, 1] - points[0, 0], points[1, 0] - points[0, 0])
        u, v = _unit(steps[0]), _unit(steps[1])
        flat = points.reshape(-1, 3)
        return cls(flat, flat[mask], steps, u, v, _unit(torch.linalg.cross(u, v)))


def _section(logits_b, R, t, s, points) -> torch.Tensor:
    cube_points = world_to_cube(points[None], R[None], t[None], s[None])
    return sample_cube(logits_b, cube_points)[0] > 0


def _fit_to_plane(logits_b, R, translation, scale, plane: _Plane, through_plane: bool):
    """One round of the fit to one plane: (translation, scale) with the section's in-plane spread and
    centroid moved onto the mask's (module doc of ``fit_pose_to_input_planes``)."""
    translation, scale = translation.clone(), scale.clone()
    inside = _section(logits_b, R, translation, scale, plane.points)
    if not inside.any():
        return translation, scale
    found = plane.points[inside]
    centroid = found.mean(0)
    # in-plane spread ratios, then the factor along each cube axis by its share of each plane axis
    factors = [(_spread(plane.target, axis, step.norm()) / _spread(found, axis, step.norm()))
               .clamp(1 / FIT_MAX_FACTOR, FIT_MAX_FACTOR) for axis, step in zip((plane.u, plane.v), plane.steps)]
    # through one plane the size follows the section's (their geometric mean): a structure seen larger
    # in its section is larger, not only wider (on development phantoms, not the test cases: Dice 0.618
    # vs 0.609 with the through-plane scale kept); with several planes the others measure it
    factors.append((factors[0] * factors[1]).sqrt() if through_plane else torch.ones_like(factors[0]))
    along = R.T @ torch.stack([plane.u, plane.v, plane.normal], dim=1)  # (3 cube axes, 3 plane axes): cosines
    per_axis = 1 + (along**2 * (torch.stack(factors) - 1)).sum(dim=1)
    stretch = R @ torch.diag(per_axis) @ R.T
    scale = scale * per_axis
    translation = centroid + stretch @ (translation - centroid)
    inside = _section(logits_b, R, translation, scale, plane.points)
    if inside.any():
        shift = plane.target.mean(0) - plane.points[inside].mean(0)
        translation = translation + shift - plane.normal * torch.dot(shift, plane.normal)  # within the plane
    return translation, scale


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm().clamp_min(1e-12)


def _spread(points: torch.Tensor, direction: torch.Tensor, pixel_mm: torch.Tensor) -> torch.Tensor:
    """Standard deviation along ``direction`` of the pixels at ``points``, each a uniform square of side
    ``pixel_mm`` (so a one-pixel-wide mask has its true spread, not 0)."""
    return ((points @ direction).var(unbiased=False) + pixel_mm**2 / 12).sqrt()

