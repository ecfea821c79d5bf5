"""Voxel/world geometry: isotropic resampling, slice extraction, and pointmaps.

Array conventions (see ``sam3d_med.io.nifti``): volumes are indexed [i, j, k]; ``affine`` maps
``[i, j, k, 1]`` to world RAS+ mm. A slice along ``axis`` a at index s keeps the two other array
axes in increasing order, so its pixel [h, w] is voxel:
  axis 0: [s, h, w]     axis 1: [h, s, w]     axis 2: [h, w, s]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

from ..io.nifti import Volume, as_canonical, voxel_spacing_mm


def isotropic_grid(shape_ijk: tuple[int, int, int], affine: np.ndarray, spacing_mm: float):
    """The grid covering the same field of view as (shape, affine) with ``spacing_mm`` voxels.

    The new grid starts at the outer edge of the old first voxel (field of view kept, not voxel
    centres), so an object keeps its world position. Returns (new_shape, new_affine,
    old_index_of_new_index) where the last is a 3x4 matrix mapping new [i,j,k,1] to old voxel
    coordinates (fractional).
    """
    old_spacing = voxel_spacing_mm(affine)
    factor = spacing_mm / old_spacing  # new voxel size in units of old voxels, per axis
    extent = np.asarray(shape_ijk, dtype=np.float64)  # field of view in old voxels
    new_shape = tuple(int(max(1, round(n))) for n in extent / factor)
    new_to_old = np.zeros((3, 4))
    new_to_old[:3, :3] = np.diag(factor)
    # centre of new voxel 0 sits half a new voxel inside the old field of view's edge (-0.5)
    new_to_old[:3, 3] = -0.5 + 0.5 * factor
    new_affine = np.asarray(affine, dtype=np.float64) @ np.vstack([new_to_old, [0, 0, 0, 1]])
    return new_shape, new_affine, new_to_old


def resample_isotropic(data: np.ndarray, affine: np.ndarray, spacing_mm: float, order: int):
    """Resample an [i,j,k] volume to ``spacing_mm`` isotropic voxels (order 1 = linear, 0 = nearest).

    Returns (data, affine). Unchanged (no copy) when the spacing already matches within 1e-3 mm.
    Voxels outside the old grid take the nearest edge value.
    """
    if np.allclose(voxel_spacing_mm(affine), spacing_mm, atol=1e-3):
        return data, np.asarray(affine, dtype=np.float64)
    new_shape, new_affine, new_to_old = isotropic_grid(data.shape, affine, spacing_mm)
    out = ndimage.affine_transform(
        data.astype(np.float32) if order > 0 else data,
        new_to_old[:3, :3],
        offset=new_to_old[:3, 3],
        output_shape=new_shape,
        order=order,
        mode="nearest",
        prefilter=False,
    )
    return out, new_affine


def centre_offset(have: int, want: int) -> int:
    """Where a length-``want`` window starts in a length-``have`` axis, centres coinciding (negative:
    the window is larger and the axis starts inside it)."""
    return (int(have) - int(want)) // 2 if have >= want else -((int(want) - int(have)) // 2)


def centred_on(array, shape, fill=0):
    """``array`` (..., *grid), a numpy array or a torch tensor, cropped or padded with ``fill`` over its
    last ``len(shape)`` axes to (..., *shape), the centres coinciding (``centre_offset``); the same
    array when the shapes agree. Fitting back to the old shape undoes it where the window held the
    data and fills the rest."""
    shape = tuple(int(n) for n in shape)
    have = tuple(array.shape[-len(shape):])
    if have == shape:
        return array
    out_shape = (*array.shape[:-len(shape)], *shape)
    out = array.new_full(out_shape, fill) if hasattr(array, "new_full") else np.full(out_shape, fill, dtype=array.dtype)
    src, dst = [Ellipsis], [Ellipsis]
    for n_have, n_want in zip(have, shape):
        start = centre_offset(n_have, n_want)
        src.append(slice(start, start + n_want) if start >= 0 else slice(0, n_have))
        dst.append(slice(0, n_want) if start >= 0 else slice(-start, -start + n_have))
    out[tuple(dst)] = array[tuple(src)]
    return out


def canonical_resampled(volume: Volume, spacing_mm: float, order: int) -> Volume:
    """``volume`` in RAS+ canonical voxel order (``io.nifti.as_canonical``), then resampled to
    ``spacing_mm`` isotropic voxels (``resample_isotropic``; order 1 = linear, 0 = nearest): the grid
    preprocessing puts every case on and predict puts every scan on."""
    canonical = as_canonical(volume)
    data, affine = resample_isotropic(canonical.data, canonical.affine, spacing_mm, order=order)
    return Volume(data=data, affine=affine)


def take_slice(volume: np.ndarray, axis: int, index: int, leading: int = 0) -> np.ndarray:
    """The slice of a volume at ``index`` along array axis ``axis`` (a view, no copy).

    ``leading`` counts axes before [i, j, k] (1 for channel-first (C, I, J, K) arrays), so the
    result is [h, w] or (C, h, w).
    """
    return volume[(slice(None),) * (leading + axis) + (index,)]


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of a non-empty N-D mask, grown by
    ``margin`` voxels on each side and clipped to the array.

    Each axis's extent is any() over the other axes; collapsing the last axes step by step and
    reusing the result reads the mask twice instead of once per axis: ~30x faster than
    ``ndimage.find_objects`` on a 64^3 mask (which must first make a uint8 copy)."""
    mask = np.asarray(mask, dtype=bool)
    box = []
    reduced = mask  # ``mask`` collapsed (any) over the axes after ``axis``
    for axis in range(mask.ndim - 1, -1, -1):
        found = np.flatnonzero(reduced.any(axis=tuple(range(axis))) if axis else reduced)
        if found.size == 0:
            raise ValueError("bounding box of an empty mask")
        box.append(slice(max(int(found[0]) - margin, 0), min(int(found[-1]) + 1 + margin, mask.shape[axis])))
        if axis:
            reduced = reduced.any(axis=axis)
    return tuple(reversed(box))


def world_grid(shape_ijk: tuple[int, int, int], affine: np.ndarray, dtype=np.float64) -> np.ndarray:
    """World RAS+ mm (3, I, J, K) of every voxel centre: ``affine @ [i, j, k, 1]``.

    Slicing it (``take_slice(grid, axis, s, leading=1)``) gives a slice's pointmap (3, H, W).
    """
    affine = np.asarray(affine, dtype=np.float64)
    i, j, k = (np.arange(n, dtype=np.float64) for n in shape_ijk)
    world = np.empty((3, *shape_ijk), dtype=dtype)
    for a in range(3):  # broadcast sums of three 1-D ramps: no (3, I, J, K) index array (3x faster)
        world[a] = (affine[a, 0] * i[:, None, None] + affine[a, 1] * j[None, :, None]
                    + affine[a, 2] * k[None, None, :] + affine[a, 3])
    return world


def world_to_voxel(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map world RAS+ mm points (..., 3) to fractional voxel indices (..., 3) [i, j, k]."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return points_mm @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_world(points_ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map voxel indices (..., 3) [i, j, k] to world RAS+ mm (..., 3)."""
    affine = np.asarray(affine, dtype=np.float64)
    return points_ijk @ affine[:3, :3].T + affine[:3, 3]


def grid_points_mm(shape_ijk, affine: np.ndarray, device=None) -> torch.Tensor:
    """(1, I, J, K, 3) float32 world mm of a grid's voxel centres."""
    import torch

    points = np.moveaxis(world_grid(tuple(shape_ijk), affine, dtype=np.float32), 0, -1)
    return torch.from_numpy(np.ascontiguousarray(points))[None].to(device)


def grid_points_of_affines(affines: torch.Tensor, shape_ijk) -> torch.Tensor:
    """(B, I, J, K, 3) float32 world mm of the voxel centres of grids (``shape_ijk``, affines (B, 4, 4))."""
    import torch

    axes = [torch.arange(n, dtype=torch.float64, device=affines.device) for n in shape_ijk]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (I, J, K, 3)
    affines = affines.double()
    world = torch.einsum("bxy,ijky->bijkx", affines[:, :3, :3], ijk) + affines[:, None, None, None, :3, 3]
    return world.float()
