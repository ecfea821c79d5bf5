"""Signed distance volumes and surface meshes of label masks, in world millimetres."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from skimage import measure

from ..io.nifti import voxel_spacing_mm
from .geometry import bounding_box, voxel_to_world


def distance_to_background_mm(mask_ijk: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Float64 [i,j,k]: distance (mm) from each voxel centre to the nearest centre where the mask is
    False (0 there); the values of ``ndimage.distance_transform_edt(mask, sampling=spacing_mm)``.

    Takes only scipy's feature transform (the nearest background voxel's index) and measures the
    offsets with broadcast index ramps: scipy's own distance step builds (3, I, J, K) float64 index
    arrays, ~30 % of the whole transform's time (measured 14.5 -> 10.4 ms on 64^3, same values).
    """
    mask = np.asarray(mask_ijk, dtype=bool)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    nearest = ndimage.distance_transform_edt(mask, sampling=spacing, return_distances=False, return_indices=True)
    squared = np.zeros(mask.shape, dtype=np.float64)
    for axis, size in enumerate(mask.shape):
        index = np.arange(size, dtype=nearest.dtype).reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
        offset_mm = (nearest[axis] - index) * spacing[axis]
        squared += offset_mm * offset_mm
    return np.sqrt(squared)


def signed_distance_mm(mask_ijk: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Signed distance (float32, mm) of an [i,j,k] boolean mask; negative inside, positive outside.

    Inside voxels hold minus the distance from their centre to the nearest outside voxel centre,
    outside voxels the distance to the nearest inside voxel centre. Between an inside and an outside
    neighbour the values are -s and +s, so the zero level (linear interpolation) lies on the voxel
    faces, i.e. on the mask's boundary. An empty mask gives +diagonal of the volume everywhere (no
    surface anywhere; "far outside"); a full mask gives -diagonal.
    """
    mask = np.asarray(mask_ijk, dtype=bool)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    diagonal = float(np.linalg.norm(np.asarray(mask.shape) * spacing))
    if not mask.any():
        return np.full(mask.shape, diagonal, dtype=np.float32)
    if mask.all():
        return np.full(mask.shape, -diagonal, dtype=np.float32)
    sdf = distance_to_background_mm(~mask, spacing)
    # Inside distances only need the mask's bounding box grown by one voxel: for a point inside the
    # box, the nearest background voxel is never farther than that one-voxel background ring
    # (project any farther background voxel onto the ring: every coordinate difference shrinks).
    # Exact, and ~40x cheaper than a transform of the whole volume for a small structure.
    box = bounding_box(mask, margin=1)
    inside = distance_to_background_mm(mask[box], spacing)
    sdf[box] -= inside
    return sdf.astype(np.float32)


def mask_surface_mesh(sdf_ijk_mm: np.ndarray, affine: np.ndarray) -> trimesh.Trimesh | None:
    """Watertight surface (world RAS+ mm, outward normals) of the zero level of a signed distance.

    Between an inside (-s) and an outside (+s) neighbour the surface falls on the shared voxel face,
    so the enclosed volume follows the voxel count (measured: within 3 % for ellipsoids of radius 4
    voxels and up, tests/data/test_surfaces.py). The volume is padded with "outside" so every
    surface closes. Returns None when there is no surface (empty or full mask).
    """
    inside = sdf_ijk_mm < 0
    if not inside.any() or inside.all():
        return None
    # Only the mask's bounding box (grown by one voxel, then padded with "outside") can hold
    # surface: marching cubes on that box is ~10x cheaper than on the whole volume.
    box = bounding_box(inside, margin=1)
    origin = np.array([s.start for s in box], dtype=np.float64) - 1.0  # -1: the padding
    pad_value = float(np.abs(sdf_ijk_mm).max())
    padded = np.pad(sdf_ijk_mm[box], 1, mode="constant", constant_values=pad_value)
    # With our sign convention (negative inside), "descent" gives outward-facing triangles (checked
    # by tests/data/test_surfaces.py: positive volume, normals away from the centroid).
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.0, gradient_direction="descent")
    verts_world = voxel_to_world(verts + origin, affine)
    if np.linalg.det(np.asarray(affine)[:3, :3]) < 0:
        faces = faces[:, ::-1]  # a mirroring affine flips the triangles' winding
    # Marching cubes already shares vertices between faces: no merge pass needed. That normals
    # point outwards (positive volume) for both affine handednesses is checked by the tests.
    return trimesh.Trimesh(vertices=verts_world, faces=faces, process=False)


def mesh_obj_text(mesh: trimesh.Trimesh) -> str:
    """OBJ text of a mesh: ``v x y z`` lines (mm, 5 decimals: far below any CT resolution), then
    ``f a b c`` lines (1-based). Written with one %-format per block: 2.5x faster than trimesh's
    exporter, which matters in preprocessing's per-case loop; trimesh reads it back exactly (tested)."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64) + 1
    return ("v %.5f %.5f %.5f\n" * len(vertices)) % tuple(vertices.ravel()) + \
        ("f %d %d %d\n" * len(faces)) % tuple(faces.ravel())


def voxel_volume_mm3(mask_ijk: np.ndarray, affine: np.ndarray) -> float:
    return float(np.count_nonzero(mask_ijk) * np.prod(voxel_spacing_mm(affine)))
