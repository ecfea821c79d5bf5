"""Baselines that reconstruct a structure's 3-D occupancy from K input slices (numpy/scipy only).

Frame: the case's scan grid; volumes are boolean arrays indexed [i, j, k] of shape ``shape_ijk``.
An input slice is an ``InputPlane``: its slicing ``axis`` of the grid, its ``index`` along that axis
(voxels) and its ``mask`` = ``np.take(occupancy, index, axis=axis)`` (the grid's shape without
``axis``, remaining axes in i, j, k order). Extents are in voxels, distances in mm.
- ``extruded``: one plane repeated along its axis over the class's median extent, the evaluation
  runner's ``extrude`` baseline (``TrainingPriors.extrude``) reproduced exactly.
- ``visual_hull``: the intersection of every plane's extrusion (silhouette intersection,
  Laurentini 1994, IEEE TPAMI 16(2)).
- ``shape_based_interpolation``: parallel planes' signed distance maps linearly interpolated along
  their axis (Raya & Udupa 1990, IEEE TMI 9(1); Herman, Zheng & Bucholtz 1992, IEEE CG&A 12(3)).
With one plane all three equal ``extruded``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class InputPlane:
    """One input slice: ``axis`` (0, 1 or 2) of the scan grid, ``index`` along it (voxels), and the
    2-D boolean ``mask`` of the structure on it (the grid's shape without ``axis``)."""

    axis: int
    index: int
    mask: np.ndarray

    def __post_init__(self):
        if self.axis not in (0, 1, 2):
            raise ValueError(f"InputPlane axis must be 0, 1 or 2, got {self.axis!r}.")
        if not isinstance(self.mask, np.ndarray) or self.mask.ndim != 2 or self.mask.dtype != bool:
            raise ValueError("InputPlane mask must be a 2-D boolean numpy array.")


def _check(plane: InputPlane, shape_ijk, extent_voxels: int) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape_ijk)
    in_plane = shape[:plane.axis] + shape[plane.axis + 1:]
    if len(shape) != 3 or plane.mask.shape != in_plane:
        raise ValueError(f"Plane mask shape {plane.mask.shape} does not match grid {shape} without axis {plane.axis}.")
    if not 0 <= plane.index < shape[plane.axis]:
        raise ValueError(f"Plane index {plane.index} lies outside axis {plane.axis} of grid {shape}.")
    if int(extent_voxels) < 1:  # the runner's extents are >= 1; 0 would drop the input plane itself
        raise ValueError(f"Extent must be at least one voxel, got {extent_voxels}.")
    return shape


def _slab(lo: int, hi: int, axis: int) -> tuple[slice, ...]:
    index = [slice(None)] * 3
    index[axis] = slice(lo, hi)
    return tuple(index)


def extruded(plane: InputPlane, shape_ijk, extent_voxels: int) -> np.ndarray:
    """The plane's mask repeated along its axis over ``extent_voxels`` voxels: the slab
    [lo, hi) with lo = max(0, index - extent // 2) and hi = min(n, lo + extent), n the grid's size
    along the axis (so a slab clipped at 0 keeps its extent upwards, one clipped at n is cut), as
    the runner's ``TrainingPriors.extrude``. Returns a boolean array of ``shape_ijk`` (i, j, k)."""
    shape = _check(plane, shape_ijk, extent_voxels)
    lo = max(0, plane.index - int(extent_voxels) // 2)
    hi = min(shape[plane.axis], lo + int(extent_voxels))
    out = np.zeros(shape, dtype=bool)
    out[_slab(lo, hi, plane.axis)] = np.expand_dims(plane.mask, plane.axis)
    return out


def visual_hull(planes: Sequence[InputPlane], shape_ijk, extent_voxels_per_axis: Sequence[int]) -> np.ndarray:
    """Silhouette-intersection visual hull (Laurentini 1994) of the input planes: each plane
    extruded along its own axis over ``extent_voxels_per_axis[axis]`` voxels (``extruded``), the
    extrusions intersected. Planes on the same axis are intersected likewise (each is a silhouette
    known only over its slab, so the hull is empty outside the slabs' overlap). One plane gives
    ``extruded``. Returns a boolean array of ``shape_ijk`` (i, j, k)."""
    if not planes:
        raise ValueError("visual_hull needs at least one input plane.")
    hull = np.ones(tuple(int(n) for n in shape_ijk), dtype=bool)
    for plane in planes:
        hull &= extruded(plane, shape_ijk, extent_voxels_per_axis[plane.axis])
    return hull


def signed_distance_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """2-D signed Euclidean distance (mm) of a boolean plane, negative inside: the distance from
    each outside pixel to the nearest inside pixel centre minus that from each inside pixel to the
    nearest outside one (``distance_transform_edt`` with ``sampling=spacing_mm``, the plane's two
    axes). A plane with no inside (outside) pixel gets +D (-D), D the plane's diagonal in mm: larger
    than any in-plane distance, so interpolation shrinks (grows) the shape towards it."""
    if not mask.any() or mask.all():  # the transform needs a pixel of each kind
        diagonal = float(np.hypot(*(np.asarray(mask.shape) * np.asarray(spacing_mm, dtype=float))))
        return np.full(mask.shape, diagonal if not mask.any() else -diagonal)
    return (ndimage.distance_transform_edt(~mask, sampling=spacing_mm)
            - ndimage.distance_transform_edt(mask, sampling=spacing_mm))


def shape_based_interpolation(planes: Sequence[InputPlane], shape_ijk, spacing_mm: Sequence[float],
                              extent_voxels: int) -> np.ndarray:
    """Shape-based interpolation (Raya & Udupa 1990; Herman, Zheng & Bucholtz 1992) of parallel
    input planes (one axis, distinct indices; any order) on the grid ``shape_ijk`` with voxel size
    ``spacing_mm`` (mm per axis i, j, k). Each plane's signed distance (``signed_distance_mm``, with
    its in-plane spacing) is interpolated linearly in the index between consecutive planes; the
    occupancy is where it is < 0, so each input plane is its mask exactly. Beyond the outermost
    planes, which span s = last - first + 1 voxels, the class's median extent ``extent_voxels`` is
    filled as ``extruded`` does: the slab [lo, hi) with lo = max(0, first - ceil((extent - s) / 2))
    and hi = min(n, lo + extent) (nothing added when extent <= s), the voxels below the first plane
    copying its mask, those above the last plane the last's. One plane gives ``extruded`` exactly.
    Returns a boolean array of ``shape_ijk`` (i, j, k)."""
    if not planes:
        raise ValueError("shape_based_interpolation needs at least one input plane.")
    axis = planes[0].axis
    if any(p.axis != axis for p in planes):
        raise ValueError(f"shape_based_interpolation needs planes on one axis, got axes {sorted({p.axis for p in planes})}.")
    planes = sorted(planes, key=lambda p: p.index)
    if len({p.index for p in planes}) != len(planes):
        raise ValueError(f"shape_based_interpolation needs distinct plane indices, got {[p.index for p in planes]}.")
    shape = _check(planes[0], shape_ijk, extent_voxels)
    for p in planes[1:]:
        _check(p, shape, extent_voxels)
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be three positive voxel sizes in mm, got {spacing_mm}.")
    in_plane = spacing[:axis] + spacing[axis + 1:]

    out = np.zeros(shape, dtype=bool)
    stack = np.moveaxis(out, axis, 0)  # a view: the slicing axis first
    first, last = planes[0].index, planes[-1].index
    extra = max(0, int(extent_voxels) - (last - first + 1))
    lo = max(0, first - (extra + 1) // 2)  # = index - extent // 2 for one plane, as ``extruded``
    hi = min(shape[axis], lo + max(int(extent_voxels), last - first + 1))
    stack[lo:first] = planes[0].mask
    stack[last + 1:hi] = planes[-1].mask
    stack[last] = planes[-1].mask
    distances = [signed_distance_mm(p.mask, in_plane) for p in planes]
    for (a, da), (b, db) in zip(zip(planes, distances), zip(planes[1:], distances[1:])):
        t = (np.arange(a.index, b.index) - a.index)[:, None, None] / (b.index - a.index)
        stack[a.index:b.index] = (1.0 - t) * da + t * db < 0.0
        stack[a.index] = a.mask  # exact on the input plane (the distance sign already is; no rounding doubt)
    return out
