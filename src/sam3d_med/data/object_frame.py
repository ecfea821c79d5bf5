"""The object frame: a structure in its own cube, the cube placed in the world by a pose.

SAM3D's sparse-structure stage outputs an object's occupancy in the object's own normalised cube
plus the pose that places the cube in the (normalised) pointmap frame. For a structure of a scan:

- The **object cube** is world-axis aligned (its axes are world +x R, +y A, +z S: the scan's RAS
  axes, so its rotation is the identity in world terms), centred on the structure's bounding box
  (over its voxels' corners, in world mm), with side = the box's largest extent x (1 + margin).
- **Cube coordinates** x lie in [-0.5, 0.5]^3; cell [a, b, c] of an n^3 cube array has its centre at
  x = ((a, b, c) + 0.5) / n - 0.5 (array axes along R, A, S). World mm: p = centre + side * x.
- The **shape target** is the structure's signed distance (mm) sampled (trilinear) at the n^3 cell
  centres, negative inside: finer than the scan for a small structure (a 15-voxel atrium gets 64
  cells), with sub-voxel boundaries.
- The **pointmap normalisation** (the official ObjectCentricSSI with its scene scale): shift = median
  of the slice's masked points (mm), scale = median over the slice's valid pixels of
  max_axis |p - shift| (mm); normalised = (p - shift) / scale, for the crop and the full frame alike.
- The **pose** maps cube coordinates to the normalised frame: p_norm = R (s * x) + t with R = I,
  s = side / scale (each axis), t = (centre - shift) / scale. Back in world mm:
  p = scale * (R (s * x) + t) + shift.

Everything here is numpy or torch on [i, j, k] arrays with the affine's world RAS+ mm; no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .geometry import bounding_box, voxel_to_world, world_to_voxel

DEFAULT_CUBE_MARGIN = 0.1  # the cube's side is the largest extent x 1.1 (5 % free on each side)
OUTSIDE_LOGIT = -20.0  # logit of "certainly outside" where a cube does not reach


@dataclass(frozen=True)
class ObjectCube:
    """A world-axis-aligned cube: centre (3,) world mm, side in mm."""

    centre_mm: tuple[float, float, float]
    side_mm: float

    def cell_centres_mm(self, n: int) -> np.ndarray:
        """(n, n, n, 3) world mm of the centres of an n^3 cube array's cells, [a, b, c] along R, A, S."""
        x = (np.arange(n, dtype=np.float64) + 0.5) / n - 0.5
        grid = np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1)
        return np.asarray(self.centre_mm) + self.side_mm * grid

    def to_cube(self, points_mm: np.ndarray) -> np.ndarray:
        """World mm (..., 3) -> cube coordinates (..., 3) ([-0.5, 0.5] inside)."""
        return (np.asarray(points_mm, dtype=np.float64) - np.asarray(self.centre_mm)) / self.side_mm


def voxel_corners_mm(box: tuple[slice, ...], affine: np.ndarray) -> np.ndarray:
    """(8, 3) world mm of the outer corners of the voxel box ``box`` (half a voxel beyond the centres)."""
    lo = np.array([s.start - 0.5 for s in box], dtype=np.float64)
    hi = np.array([s.stop - 0.5 for s in box], dtype=np.float64)
    corners = np.array([[(hi if (c >> a) & 1 else lo)[a] for a in range(3)] for c in range(8)])
    return voxel_to_world(corners, affine)


def object_cube(mask_ijk: np.ndarray, affine: np.ndarray, margin: float = DEFAULT_CUBE_MARGIN) -> ObjectCube:
    """The cube of a non-empty [i, j, k] mask: world bounding box of its voxels' corners, centred,
    side = largest world extent x (1 + margin)."""
    corners = voxel_corners_mm(bounding_box(mask_ijk), affine)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return ObjectCube(tuple(float(v) for v in (lo + hi) / 2), float((hi - lo).max() * (1 + margin)))


def sample_volume_mm(volume_ijk: np.ndarray, affine: np.ndarray, points_mm: np.ndarray, outside: float) -> np.ndarray:
    """Trilinear samples of an [i, j, k] volume at world points (..., 3); ``outside`` beyond the grid."""
    coords = world_to_voxel(np.asarray(points_mm, dtype=np.float64), affine)
    flat = coords.reshape(-1, 3).T
    values = ndimage.map_coordinates(np.asarray(volume_ijk, dtype=np.float32), flat, order=1, mode="constant",
                                     cval=outside, prefilter=False)
    return values.reshape(coords.shape[:-1])


def cube_sdf_mm(sdf_ijk_mm: np.ndarray, affine: np.ndarray, cube: ObjectCube, n: int) -> np.ndarray:
    """float32 (n, n, n): the signed distance (mm, negative inside) at the cube's cell centres.

    Beyond the scan's grid the value is the nearest positive sentinel (+ the cube's side): outside."""
    return sample_volume_mm(sdf_ijk_mm, affine, cube.cell_centres_mm(n), outside=cube.side_mm).astype(np.float32)


def normalisation_of_slice(points_mm: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The official ObjectCentricSSI moments of one slice: (shift (3,) mm, scale mm).

    ``points_mm`` (3, H, W) world mm (non-finite = no point), ``mask`` [H, W] of the structure.
    shift = median of the masked points; scale = median over the valid pixels of max_axis |p - shift|.
    Without masked points: shift 0, scale 1 (as the official code falls back)."""
    points = np.asarray(points_mm, dtype=np.float64).reshape(3, -1)
    valid = np.isfinite(points).all(axis=0)
    selected = points[:, valid & (np.asarray(mask).reshape(-1) > 0.5)]
    if selected.shape[1] == 0:
        return np.zeros(3), 1.0
    shift = np.median(selected, axis=1)
    scale = float(np.median(np.abs(points[:, valid] - shift[:, None]).max(axis=0)))
    return shift, scale if scale > 0 else 1.0


def cube_pose_in_normalised_frame(cube: ObjectCube, shift: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation (3, 3), translation (3,), scale (3,)) of the cube in the normalised pointmap frame."""
    translation = (np.asarray(cube.centre_mm) - np.asarray(shift)) / scale
    return np.eye(3), translation, np.full(3, cube.side_mm / scale)


# ----------------------------------------------------------------------------- placing a cube (torch)
def world_to_cube(points_mm: torch.Tensor, rotation: torch.Tensor, translation_mm: torch.Tensor,
                  scale_mm: torch.Tensor) -> torch.Tensor:
    """World mm (B, N, 3) -> cube coordinates (B, N, 3) under world poses p = R (s * x) + t
    (rotation (B, 3, 3), translation (B, 3) mm, scale (B, 3) mm)."""
    local = torch.einsum("bji,bnj->bni", rotation, points_mm - translation_mm[:, None])  # R^T (p - t)
    return local / scale_mm[:, None]


def sample_cube(cube_logits: torch.Tensor, cube_points: torch.Tensor, outside: float = OUTSIDE_LOGIT) -> torch.Tensor:
    """Trilinear samples of cube arrays (B, 1, n, n, n) [a, b, c] at cube coordinates (B, N, 3):
    (B, N); ``outside`` beyond the cube."""
    # grid_sample's grid is (x, y, z) = (last, middle, first) array axis in [-1, 1] (align_corners=False)
    grid = (2.0 * cube_points).flip(-1).to(cube_logits.dtype)[:, :, None, None, :]
    values = F.grid_sample(cube_logits - outside, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return values[:, 0, :, 0, 0] + outside


def place_cubes_on_grid(cube_logits: torch.Tensor, rotation: torch.Tensor, translation_mm: torch.Tensor,
                        scale_mm: torch.Tensor, grid_points_mm: torch.Tensor) -> torch.Tensor:
    """Cube logits (B, 1, n, n, n) placed by world poses, sampled at a grid's voxel centres
    ``grid_points_mm`` (B or 1, I, J, K, 3): logits (B, I, J, K); ``OUTSIDE_LOGIT`` beyond the cubes."""
    B = cube_logits.shape[0]
    shape = grid_points_mm.shape[1:4]
    points = grid_points_mm.reshape(grid_points_mm.shape[0], -1, 3).expand(B, -1, -1).to(cube_logits.dtype)
    cube_points = world_to_cube(points, rotation.to(points.dtype), translation_mm.to(points.dtype), scale_mm.to(points.dtype))
    return sample_cube(cube_logits, cube_points).reshape(B, *shape)
