"""Segmentation metrics on voxel grids, in millimetres (MONAI's conventions).

Masks are boolean arrays indexed [i, j, k] on a grid with voxel size ``spacing_mm`` (per axis).
- Dice: 2|P n G| / (|P| + |G|).
- Surfaces are the boundary voxels of each mask: voxels of the mask with a 6-neighbour outside it
  (``mask ^ binary_erosion(mask)``), as MONAI's ``get_mask_edges``. Directed distances: from each
  boundary voxel centre of one mask to the nearest boundary voxel centre of the other, Euclidean in mm.
- HD95: the larger of the two directed 95th percentiles (MONAI ``compute_hausdorff_distance``,
  ``percentile=95``).
- Surface Dice (NSD) at tolerance tau mm: boundary voxels of both masks within tau of the other
  surface, over all boundary voxels (MONAI ``compute_surface_dice``).
- Chamfer: the mean of the two directed mean distances (not squared), in mm.
Empty masks: both empty -> every metric NaN (undefined); exactly one empty -> Dice 0, NSD 0,
HD95 inf, Chamfer inf (a missed or hallucinated structure is a failure, not a gap). Where both
masks are non-empty the values equal MONAI's (tests/eval/test_metrics.py).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..data.geometry import bounding_box
from ..data.surfaces import distance_to_background_mm

DEFAULT_NSD_TOLERANCES_MM = (1.0, 3.0, 6.0)


def boundary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    return mask ^ ndimage.binary_erosion(mask)


def directed_distances_mm(from_mask: np.ndarray, to_mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Distance (mm) from each boundary voxel of ``from_mask`` to the boundary of ``to_mask``."""
    to_edges = boundary(to_mask)
    distance = distance_to_background_mm(~to_edges, spacing_mm)
    return distance[boundary(from_mask)]


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm,
                         nsd_tolerances_mm=DEFAULT_NSD_TOLERANCES_MM) -> dict[str, float]:
    """Dice, HD95 (mm), Chamfer (mm) and NSD at each tolerance for one structure."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    names = ["dice", "hd95_mm", "chamfer_mm"] + [f"nsd_{t:g}mm" for t in nsd_tolerances_mm]
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    if n_pred == 0 and n_truth == 0:
        return {name: math.nan for name in names}
    if n_pred == 0 or n_truth == 0:
        out = {name: 0.0 for name in names}
        out["hd95_mm"] = out["chamfer_mm"] = math.inf
        return out
    out = {"dice": 2.0 * np.count_nonzero(pred & truth) / (n_pred + n_truth)}
    # Distances only involve boundary voxels, all inside the union's bounding box; one voxel of margin
    # keeps the erosion's neighbourhood, so cropping changes no value and saves most of the work.
    box = bounding_box(pred | truth, margin=1)
    pred, truth = pred[box], truth[box]
    d_pred = directed_distances_mm(pred, truth, spacing_mm)
    d_truth = directed_distances_mm(truth, pred, spacing_mm)
    out["hd95_mm"] = float(max(np.percentile(d_pred, 95), np.percentile(d_truth, 95)))
    out["chamfer_mm"] = float((d_pred.mean() + d_truth.mean()) / 2.0)
    for tol in nsd_tolerances_mm:
        out[f"nsd_{tol:g}mm"] = float((np.count_nonzero(d_pred <= tol) + np.count_nonzero(d_truth <= tol))
                                      / (d_pred.size + d_truth.size))
    return out


def summarize(values: list[float]) -> dict:
    """Mean, std, median over the finite values; counts of NaN and inf given separately."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return {
        "mean": float(finite.mean()) if finite.size else math.nan,
        "std": float(finite.std()) if finite.size else math.nan,
        "median": float(np.median(finite)) if finite.size else math.nan,
        "count": int(array.size), "finite": int(finite.size),
        "nan": int(np.isnan(array).sum()), "inf": int(np.isinf(array).sum()),
    }
