"""TotalSegmentator-style crops from whole scans: a cube of ``size``^3 voxels of ``spacing_mm`` (64^3 at
3 mm: 192 mm) around chosen labels, so a user can build the tutorial's data set from their own CTs.

The crop's grid is axis-aligned in world RAS+ (its affine is ``diag(spacing)`` plus an origin, exact:
voxel [i, j, k] of the crop is at ``origin + spacing * [i, j, k]`` mm), centred on the bounding box
of the chosen labels' voxels in world mm (to within half a scan voxel, see below). The scan and its labels (any size, spacing, orientation,
oblique or not) are resampled onto it: the image linearly (outside the scan: -1024 HU, air), the
labels by nearest neighbour (outside: 0). Chosen label values can be renumbered (TotalSegmentator's
own numbering -> 1..N); every other label becomes background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .label_sources import PUBLISHED_VALUES, named_label_map
from ..io.nifti import Volume, label_on_image_grid
from .geometry import voxel_to_world

AIR_HU = -1024.0


@dataclass
class Crop:
    image_hu: np.ndarray  # [i, j, k] float32 on the crop grid
    label: np.ndarray  # [i, j, k] uint8, renumbered
    affine: np.ndarray  # crop voxel [i, j, k, 1] -> world RAS+ mm
    extent_mm: np.ndarray  # the chosen labels' extent (world, R/A/S), before cropping
    cut: bool  # True when the labels extend beyond the crop


def parse_label_map(text: str | None, available: list[int]) -> dict[int, int]:
    """``"1,2,3"`` (kept as they are), ``"45:1,46:2"`` (source:target), a named source (``totalseg_v1``,
    ``heartchambers_highres``: ``label_sources``), or None (every label kept)."""
    if not text:
        return {v: v for v in available}
    named = named_label_map(text.strip())
    if named is not None:
        return named
    mapping = {}
    for part in text.split(","):
        source, _, target = part.strip().partition(":")
        try:
            mapping[int(source)] = int(target) if target else int(source)
        except ValueError:
            raise InputError(f"give label values, e.g. 1,2,3 or 45:1,46:2, or a named source: "
                             f"{', '.join(PUBLISHED_VALUES)}", parameter="labels", value=repr(text)) from None
    if any(not 1 <= t <= 255 for t in mapping.values()):
        raise InputError("target labels must be in 1..255", parameter="labels", value=repr(text))
    return mapping


def relabelled(values: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """uint8 labels of ``values`` (whole numbers >= 0, any shape) renumbered by ``label_map`` (source ->
    target); values it does not name become 0 (background)."""
    values = np.asarray(values)
    lookup = np.zeros(int(values.max(initial=0)) + 1, np.uint8)
    for source, target in label_map.items():
        if 0 <= source < lookup.size:
            lookup[source] = target
    return lookup[values.astype(np.intp)]


def crop_around_labels(image: Volume, label: Volume, label_map: dict[int, int], size: int = 64,
                       spacing_mm: float = 3.0) -> Crop:
    """The ``size``^3 crop at ``spacing_mm`` around the labels in ``label_map`` (module doc)."""
    label = label_on_image_grid(label, image, "the label")
    if label.data.min() < 0 or not np.all(np.mod(label.data, 1) == 0):
        raise InputError("label values must be whole numbers >= 0")
    chosen = np.isin(label.data, list(label_map))
    if not chosen.any():
        present = [int(v) for v in np.unique(label.data) if v]
        raise InputError(f"none of the labels {sorted(label_map)} occurs in the label volume (its values: "
                         f"{', '.join(map(str, present)) or 'none'})")
    # the chosen voxels' corners in world mm give the extent (a voxel is a cube, not a point)
    ijk = np.argwhere(chosen)
    lo, hi = ijk.min(0), ijk.max(0)
    corners = np.array([[a, b, c] for a in (lo[0] - 0.5, hi[0] + 0.5) for b in (lo[1] - 0.5, hi[1] + 0.5)
                        for c in (lo[2] - 0.5, hi[2] + 0.5)])
    world = voxel_to_world(corners, label.affine)
    low_mm, high_mm = world.min(0), world.max(0)
    centre = (low_mm + high_mm) / 2
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    # The first voxel's centre is put on the scan voxel centre nearest to where a centred box would
    # start (at most half a scan voxel off): where the scan's axes are world axes and its spacing
    # divides the crop's, crop voxel centres then fall on scan voxel centres, and nearest-neighbour
    # labels have no ties (ties rounded one way would shift every structure by half a crop voxel).
    start_mm = centre - spacing_mm * (size - 1) / 2
    start_voxel = np.round(np.linalg.solve(image.affine, np.append(start_mm, 1.0))[:3])
    affine[:3, 3] = voxel_to_world(start_voxel, image.affine)
    # crop voxel -> scan voxel, for the resampling; only the part of the scan under the crop is read
    # (a whole CT is hundreds of MB as float32)
    crop_to_scan = np.linalg.inv(image.affine) @ affine
    box = np.array([[a, b, c, 1.0] for a in (0, size - 1) for b in (0, size - 1) for c in (0, size - 1)])
    under = (crop_to_scan @ box.T)[:3].T
    start = np.clip(np.floor(under.min(0)).astype(int) - 1, 0, np.array(image.data.shape) - 1)
    stop = np.clip(np.ceil(under.max(0)).astype(int) + 2, start + 1, np.array(image.data.shape))
    window = tuple(slice(a, b) for a, b in zip(start, stop))
    matrix, offset = crop_to_scan[:3, :3], crop_to_scan[:3, 3] - start
    image_hu = ndimage.affine_transform(np.asarray(image.data[window], dtype=np.float32), matrix, offset,
                                        output_shape=(size,) * 3, order=1, mode="constant", cval=AIR_HU,
                                        prefilter=False)
    crop_label = ndimage.affine_transform(relabelled(label.data[window], label_map), matrix, offset,
                                          output_shape=(size,) * 3, order=0, mode="constant", cval=0, prefilter=False)
    extent = high_mm - low_mm
    return Crop(image_hu=image_hu, label=crop_label.astype(np.uint8), affine=affine, extent_mm=extent,
                cut=bool(np.any(extent > size * spacing_mm)))
