"""Reconstructions on a scan's grid, in either target frame.

- ``volume`` frame: the decoded occupancy *is* the scan's n^3 grid.
- ``object`` frame: the decoded occupancy is the structure in its own cube; the decoded pose (in the
  normalised pointmap frame) is brought back to world mm with the sample's normalisation
  (world = normalised * scale + shift) and the cube is sampled at every voxel centre of the grid
  (trilinear in the cube; ``OUTSIDE_LOGIT`` beyond it).

``impose_input_slice`` then makes the prediction equal the input mask on the input plane: that
slice is ground truth, given by the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.geometry import world_grid
from ..data.object_frame import place_cubes_on_grid
from .pose import Pose
from .sam3d import SparseStructureModel

SLICE_LOGIT = 20.0  # |logit| written on the input plane (p = 1 - 2e-9 inside, 2e-9 outside)


@dataclass
class GridReconstruction:
    logits: torch.Tensor  # (B, I, J, K) float32 on the grid
    cube_logits: torch.Tensor | None = None  # (B, 1, n, n, n) object frame: the shape in its cube
    pose_world: Pose | None = None  # object frame: cube -> world mm (p = R (s x) + t)


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
                        one_step: bool = False) -> GridReconstruction:
    """A batch of ``condition_inputs`` (with ``pointmap_shift`` (B, 3) and ``pointmap_scale`` (B,) in
    the object frame) -> logits on the grid whose voxel centres are ``grid_points`` ((1 or B, I, J, K, 3)
    world mm; object frame only: in the volume frame the grid is the model's own)."""
    logits, pose = model.generate(inputs, seed=seed, sampler=sampler, one_step=one_step)
    if frame == "volume":
        return GridReconstruction(logits[:, 0])
    if grid_points is None:
        raise ValueError("the object frame needs the grid's voxel centres (grid_points)")
    scale = inputs["pointmap_scale"].to(logits.device, torch.float32).reshape(-1, 1)
    pose_world = pose.in_metric_frame(scale, inputs["pointmap_shift"].to(logits.device, torch.float32))
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
