"""The input slices of one reconstruction, as one value: one or more (axis, index, mask) on a grid.

Frame: the grid the reconstruction is scored or written on (the cache's canonical grid, or the
model's view of an input scan); ``axis`` is a stored array axis of that grid (0, 1, 2 = i, j, k),
``index`` the slice's position along it, ``mask`` the structure's (H, W) mask on that plane (the grid's
shape without ``axis``; numpy or torch, > 0.5 inside). The first slice is the primary one (the one a
single-slice run conditions on); the others are added by ``data.num_slices`` (``slice_policies``).

The slices are used wherever the given planes matter: the pose is fitted to all of them
(``model.placement.fit_pose_to_input_slices``) and the prediction on each plane is its mask
(``model.placement.impose_input_slices``); the baselines of the evaluation use the same planes.
A batch carries them as ``input_axes``/``input_indices`` (B, MAX_SLICES), -1 padded, with
``input_count`` (B,) (``dataset.SliceClassDataset``); ``from_batch`` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

MAX_SLICES = 3  # data.num_slices and --num_slices allow 1..3 (orthogonal slices: one per axis)
# the condition streams of the slices after the first (``data.extra_slice_streams``): all six of the
# release (crop and full frame of image, mask and pointmap), or the crop's three (half the tokens)
EXTRA_SLICE_STREAMS = ("all", "crop")
CROP_STREAMS = ("image", "mask", "pointmap")
STREAMS_OF_EXTRA_SLICES = {"all": CROP_STREAMS + ("rgb_image", "rgb_image_mask", "rgb_pointmap"), "crop": CROP_STREAMS}
EXTRA_PREFIX = "extra_"  # a batch's ``extra_<stream>`` (B, MAX_SLICES - 1, C, S, S) and ``extra_present`` (B, MAX_SLICES - 1)
SLICE_POLICIES = ("orthogonal", "parallel", "random")  # data.slice_policy (``slice_policies``)


@dataclass(frozen=True)
class InputSlice:
    axis: int
    index: int
    mask: Any  # (H, W) on the plane, > 0.5 inside

    def __post_init__(self):
        if int(self.axis) not in (0, 1, 2):
            raise ValueError(f"an input slice's axis is 0, 1 or 2 (got {self.axis})")
        object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "index", int(self.index))
        if isinstance(self.mask, np.ndarray):  # a view of a flipped image has negative strides: torch refuses them
            object.__setattr__(self, "mask", np.ascontiguousarray(self.mask))


@dataclass(frozen=True)
class InputSlices:
    """One reconstruction's input slices, the primary one first (``MAX_SLICES`` at most)."""

    slices: tuple[InputSlice, ...]

    def __post_init__(self):
        object.__setattr__(self, "slices", tuple(self.slices))
        if not 1 <= len(self.slices) <= MAX_SLICES:
            raise ValueError(f"a reconstruction has 1 to {MAX_SLICES} input slices (got {len(self.slices)})")
        planes = [(s.axis, s.index) for s in self.slices]
        if len(set(planes)) != len(planes):
            raise ValueError(f"an input slice is given twice: {planes}")

    @classmethod
    def one(cls, axis: int, index: int, mask) -> "InputSlices":
        return cls((InputSlice(axis, index, mask),))

    def __iter__(self) -> Iterator[InputSlice]:
        return iter(self.slices)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def primary(self) -> InputSlice:
        return self.slices[0]

    def planes(self) -> list[list[int]]:
        """[[axis, index], ...]: what metrics.json records of the slices used."""
        return [[s.axis, s.index] for s in self.slices]

    @staticmethod
    def from_batch(batch: dict, mask_of: Callable[[int, int, int], Any]) -> list["InputSlices"]:
        """Each sample's slices from a batch's ``input_axes``/``input_indices``/``input_count`` (or,
        for a batch of single slices, ``axis``/``slice_idx``); ``mask_of(b, axis, index)`` gives the
        mask of sample ``b`` on that plane (e.g. its true occupancy's plane: the slice is given)."""
        if "input_count" not in batch:
            return [InputSlices.one(int(a), int(i), mask_of(b, int(a), int(i)))
                    for b, (a, i) in enumerate(zip(batch["axis"], batch["slice_idx"]))]
        out = []
        for b, count in enumerate(batch["input_count"]):
            pairs = [(int(batch["input_axes"][b][k]), int(batch["input_indices"][b][k])) for k in range(int(count))]
            out.append(InputSlices(tuple(InputSlice(a, i, mask_of(b, a, i)) for a, i in pairs)))
        return out
