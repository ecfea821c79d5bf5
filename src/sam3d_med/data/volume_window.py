"""The volume frame's window: a ``side``^3 box of a canonical grid around the structures.

In the volume frame the decoded occupancy *is* an n^3 grid of voxels (n = 64, the decoder's
output), so a scan of any other size is seen through a window of n^3 voxels of its own grid: window
voxel ``v`` [a, b, c] is grid voxel ``v + start`` [i, j, k]; ``start`` may be negative and the window
may reach past the grid's far end, where it is padding (air for the image, background for labels).
The window's affine is the grid's, shifted by ``start`` voxels, so world mm are unchanged; results
on the window are put back on the grid (``put_back``) or sampled at world positions.

Placement (``window_around``): per axis, centred on the bounding box of the given voxels (the labelled
structures of a case, or the input mask on its slice), then moved to lie inside the grid where the
grid is at least n long (no padding needed) or to cover the whole grid where it is shorter. An n^3
grid always gets the identity window (start 0), so the 64^3 tutorial crops are used as they are.
Structures that span more than n voxels along an axis cannot be held by the window: that is an
error that names the object frame (any grid) as the way out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class VolumeWindow:
    start: tuple[int, int, int]  # grid voxel [i, j, k] of window voxel [0, 0, 0]
    side: int
    grid_shape: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.start == (0, 0, 0) and self.grid_shape == (self.side,) * 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.side,) * 3

    def affine(self, grid_affine: np.ndarray) -> np.ndarray:
        """(4, 4) window voxel [a, b, c, 1] -> world mm (the grid's affine shifted by ``start``)."""
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return np.asarray(grid_affine, dtype=np.float64) @ shift

    def _ranges(self, axes):
        """Per axis: (grid slice, window slice) of the overlap of window and grid."""
        out = []
        for axis in axes:
            lo = max(0, self.start[axis])
            hi = min(self.grid_shape[axis], self.start[axis] + self.side)
            hi = max(lo, hi)
            out.append((slice(lo, hi), slice(lo - self.start[axis], hi - self.start[axis])))
        return out

    def take(self, volume: np.ndarray, fill, edge: bool = False) -> np.ndarray:
        """The window of a grid volume [..., i, j, k] -> [..., n, n, n]; padding ``fill``, or with
        ``edge`` the nearest grid voxel's value (for signed distances: positive away from structures)."""
        volume = np.asarray(volume)
        if edge:
            index = [np.clip(np.arange(self.side) + s, 0, n - 1) for s, n in zip(self.start, self.grid_shape)]
            return volume[(..., *np.ix_(*index))]
        out = np.full(volume.shape[:-3] + self.shape, fill, dtype=volume.dtype)
        ranges = self._ranges((0, 1, 2))
        out[(..., *[w for _, w in ranges])] = volume[(..., *[g for g, _ in ranges])]
        return out

    def take_plane(self, plane: np.ndarray, axis: int, fill) -> np.ndarray:
        """The window of a grid slice along ``axis`` [..., h, w] -> [..., n, n] (the two other axes)."""
        plane = np.asarray(plane)
        ranges = self._ranges([a for a in range(3) if a != axis])
        out = np.full(plane.shape[:-2] + (self.side, self.side), fill, dtype=plane.dtype)
        out[(..., *[w for _, w in ranges])] = plane[(..., *[g for g, _ in ranges])]
        return out

    def slice_index(self, axis: int, grid_index: int) -> int | None:
        """A grid slice index along ``axis`` -> the window's, or None when the slice is outside it."""
        index = int(grid_index) - self.start[axis]
        return index if 0 <= index < self.side else None

    def put_back(self, window_volume: np.ndarray, fill) -> np.ndarray:
        """A window volume [..., n, n, n] -> the grid [..., i, j, k]; grid voxels outside the window ``fill``."""
        window_volume = np.asarray(window_volume)
        out = np.full(window_volume.shape[:-3] + tuple(self.grid_shape), fill, dtype=window_volume.dtype)
        ranges = self._ranges((0, 1, 2))
        out[(..., *[g for g, _ in ranges])] = window_volume[(..., *[w for _, w in ranges])]
        return out


def window_around(voxels: np.ndarray, side: int, what: str = "the structures") -> VolumeWindow:
    """The ``side``^3 window of the grid of ``voxels`` (bool [i, j, k]) around its True voxels
    (module doc). Raises ``InputError`` when they span more than ``side`` voxels along an axis."""
    voxels = np.asarray(voxels, dtype=bool)
    grid = tuple(int(n) for n in voxels.shape)
    if not voxels.any():
        raise InputError(f"{what}: nothing to centre the volume frame's {side}^3 window on (no labelled voxel)")
    start = []
    for axis, n in enumerate(grid):
        present = np.flatnonzero(voxels.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = int(present[0]), int(present[-1])
        if hi - lo + 1 > side:
            extent = [int(np.ptp(np.flatnonzero(voxels.any(axis=tuple(b for b in range(3) if b != a))))) + 1
                      for a in range(3)]
            raise InputError(f"{what} span {'x'.join(map(str, extent))} voxels, more than the volume frame's "
                             f"{side}^3 window: use data.target_frame=object (any size)")
        first = int(np.floor((lo + hi) / 2 - (side - 1) / 2))
        # inside the grid when it is long enough, covering all of it when it is shorter
        start.append(int(np.clip(first, min(0, n - side), max(0, n - side))))
    return VolumeWindow(tuple(start), int(side), grid)


def window_around_plane(mask_plane: np.ndarray, axis: int, index: int, grid_shape, side: int) -> VolumeWindow:
    """The window around a mask on one slice (``axis``, ``index``) of a grid: its in-plane bounding
    box, and the slice itself through the plane (all a user's mask tells of where the structure is)."""
    voxels = np.zeros(tuple(grid_shape), dtype=bool)
    np.moveaxis(voxels, axis, 0)[index] = np.asarray(mask_plane, dtype=bool)
    return window_around(voxels, side, "the input mask")
