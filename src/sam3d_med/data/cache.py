"""The preprocessed cache as the stages read it: its manifest (``manifest.load_manifest``: checked, json
only) and each case's files, read through one checked accessor each.

A case of the manifest holds ``case_id``, ``shape_ijk`` (the canonical RAS+ grid), ``affine`` (voxel
-> world RAS+ mm), ``spacing_mm``, ``slices`` (one entry per cached slice: ``axis``, ``slice_idx``,
``file``, ``class_pixel_counts``), ``class_voxel_counts`` and ``sdf_path``: the signed distances
(C, I, J, K) in mm, negative inside, one channel per class 1..C (``preprocess``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.nifti import Grid
from .manifest import MANIFEST_NAME, load_manifest  # noqa: F401 (the cache's manifest, read from here too)


def case_grid(case: dict) -> Grid:
    """The case's canonical grid (``shape_ijk``, ``affine``: voxel -> world RAS+ mm)."""
    return Grid(tuple(int(n) for n in case["shape_ijk"]), np.asarray(case["affine"], dtype=np.float64))


def case_sdf(cache_dir: str | Path, case: dict) -> np.ndarray:
    """The case's signed distances (C, I, J, K) float32 mm, negative inside, memory-mapped;
    ``InputError`` naming the file when the cache lacks it."""
    path = Path(cache_dir) / case["sdf_path"]
    if not path.is_file():
        raise InputError(f"{path}: signed distance file missing from the cache")
    return np.load(path, mmap_mode="r")
