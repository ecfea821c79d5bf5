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


def cases_of(manifest: dict, case_ids=None) -> list[dict]:
    """The manifest's cases (those of ``case_ids``, when given), in the manifest's order."""
    if case_ids is None:
        return list(manifest["cases"])
    wanted = set(case_ids)
    return [case for case in manifest["cases"] if case["case_id"] in wanted]


def case_ids_of(manifest: dict) -> list[str]:
    return [case["case_id"] for case in manifest["cases"]]


def class_names_of(manifest: dict) -> dict[int, str]:
    """{label value: class name} (the json's keys are strings)."""
    return {int(value): name for value, name in manifest.get("class_names", {}).items()}


def case_classes(case: dict) -> list[int]:
    """The label values with at least one voxel in the case, ascending."""
    return sorted(int(value) for value, count in case["class_voxel_counts"].items() if count > 0)


def case_spacing(case: dict) -> tuple[float, float, float]:
    """The case grid's voxel spacing (mm) along i, j, k."""
    return tuple(float(s) for s in case["spacing_mm"])


def class_pixels(entry: dict, class_id: int) -> int:
    """Pixels of ``class_id`` on a cached slice (``entry``: one of a case's ``slices``)."""
    return int(entry["class_pixel_counts"].get(str(class_id), 0))


def slice_classes(entry: dict, min_pixels: int = 1) -> list[int]:
    """The label values with at least ``min_pixels`` pixels on a cached slice, ascending."""
    return sorted(int(value) for value, count in entry["class_pixel_counts"].items() if count >= min_pixels)
