"""Segmentation metrics on voxel grids, in millimetres (MONAI's conventions).

Masks are boolean arrays indexed [i, j, k] on a grid with voxel size ``spacing_mm`` (per axis).
- Dice: 2|P n G| / (|P| + |G|).
- Surfaces are the boundary voxels of each mask: voxels of the mask with a 6-neighbour outside it
  (``mask ^ binary_erosion(mask)``), as MONAI's ``get_mask_edges``. Directed distances: from each
  boundary voxel centre of one mask to the nearest boundary voxel centre of the other, Euclidean in mm.
- HD95: the larger of the two directed 95th percentiles (MONAI ``compute_hausdorff_distance``,
  ``percentile=95``).
- Surface Dice (NSD) at tolerance tau mm, by its reference definition (Nikolov et al. 2021;
  DeepMind's ``surface-distance``; MONAI ``compute_surface_dice(..., use_subvoxels=True)``), the
  default (``nsd_definition="surface_area"``): the surface is made of surface elements, one per
  2x2x2 neighbourhood of voxels where the mask changes, each weighted by the area (mm^2) of the
  marching-cubes surface through it; NSD = the area of both surfaces within tau of the other surface
  over their total area. ``nsd_definition="boundary_voxels"`` counts boundary voxels instead (MONAI's
  default): at 3 mm voxels and tau = 1 mm that is nearly binary (a one-voxel erosion scores 0).
- Chamfer: the mean of the two directed mean distances (not squared), in mm.
Empty masks: both empty -> every metric NaN (undefined); exactly one empty -> Dice 0, NSD 0,
HD95 inf, Chamfer inf (a missed or hallucinated structure is a failure, not a gap; ``summarize``
keeps it in every mean and median). Where both masks are non-empty the values equal MONAI's
(tests/eval/test_metrics.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

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


# code of a 2x2x2 neighbourhood = sum of the weights of its voxels inside the mask
NEIGHBOURHOOD_WEIGHTS = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
NSD_DEFINITIONS = ("surface_area", "boundary_voxels")


@functools.lru_cache(maxsize=16)
def surface_area_of_neighbourhood_codes(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(256,) area in mm^2 of the marching-cubes surface inside a 2x2x2 neighbourhood of each code.

    Classic marching cubes (Lorensen), with each configuration taken from whichever of it and its
    complement has fewer voxels inside, as the 15 base cases of marching cubes are defined (so a
    surface has the same area seen from either side): this gives the reference implementations'
    table (tests: equal to MONAI's within its float32 precision)."""
    from skimage import measure

    area = np.zeros(256)
    for code in range(1, 255):
        inside = (code & NEIGHBOURHOOD_WEIGHTS) != 0
        if inside.sum() > 4:
            inside = ~inside
        vertices, faces, _, _ = measure.marching_cubes(inside.astype(np.float32), 0.5, spacing=spacing_mm,
                                                       method="lorensen")
        area[code] = measure.mesh_surface_area(vertices, faces)
    return area


def surface_elements(mask: np.ndarray, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """(where the surface elements are: bool on the (n + 1)^3 grid of 2x2x2 neighbourhoods, their
    areas in mm^2) of ``mask``; element [i, j, k] spans voxels [i - 1 .. i] along each axis."""
    padded = np.pad(np.asarray(mask, dtype=np.uint8), ((0, 1),) * 3)
    codes = ndimage.correlate(padded, NEIGHBOURHOOD_WEIGHTS, mode="constant", cval=0)
    on_surface = (codes != 0) & (codes != 255)
    table = surface_area_of_neighbourhood_codes(tuple(float(v) for v in np.broadcast_to(spacing_mm, 3)))
    return on_surface, table[codes[on_surface]]


def surface_dice_by_area(pred: np.ndarray, truth: np.ndarray, spacing_mm, tolerances_mm) -> list[float]:
    """Surface Dice at each tolerance by the reference definition (module doc), both masks non-empty."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), 3)
    where_pred, area_pred = surface_elements(pred, spacing)
    where_truth, area_truth = surface_elements(truth, spacing)
    distance_to_truth = ndimage.distance_transform_edt(~where_truth, sampling=spacing)[where_pred]
    distance_to_pred = ndimage.distance_transform_edt(~where_pred, sampling=spacing)[where_truth]
    total = area_pred.sum() + area_truth.sum()
    return [float((area_pred[distance_to_truth <= tol].sum() + area_truth[distance_to_pred <= tol].sum()) / total)
            for tol in tolerances_mm]


@dataclass(frozen=True)
class Metric:
    """One metric of the evaluation: every writer (records, metrics.json summaries, metrics.csv, the
    console table, the HTML report) iterates the table of these, so a metric is added in one place.

    ``key``: its name in records, JSON and CSV; ``column``: its short heading; ``unit``: "" (a fraction)
    or "mm"; ``higher_is_better``; ``statistic``: the summary tables show ("mean" or "median");
    ``when_one_empty``: its value when exactly one mask is empty (both empty: NaN, always);
    ``compute(pair)``: its value from a ``MaskPair`` (both masks non-empty); ``console`` / ``report``:
    whether the console table / the report's comparison shows it."""

    key: str
    column: str
    unit: str
    higher_is_better: bool
    statistic: str
    when_one_empty: float
    compute: Callable[["MaskPair"], float]
    console: bool = True
    report: bool = True


class MaskPair:
    """A prediction and its truth (both non-empty) cropped to their union's bounding box (one voxel of
    margin keeps the erosion's neighbourhood, so no value changes), with the surface distances the
    metrics share computed once."""

    def __init__(self, pred: np.ndarray, truth: np.ndarray, spacing_mm, nsd_tolerances_mm, nsd_definition: str):
        self.n_pred, self.n_truth = int(pred.sum()), int(truth.sum())
        self.overlap = int(np.count_nonzero(pred & truth))
        box = bounding_box(pred | truth, margin=1)
        self.pred, self.truth = pred[box], truth[box]
        self.spacing_mm, self.tolerances, self.definition = spacing_mm, tuple(nsd_tolerances_mm), nsd_definition

    @functools.cached_property
    def distances_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed boundary distances: prediction -> truth, truth -> prediction (mm)."""
        return (directed_distances_mm(self.pred, self.truth, self.spacing_mm),
                directed_distances_mm(self.truth, self.pred, self.spacing_mm))

    @functools.cached_property
    def surface_dice(self) -> dict[float, float]:
        """NSD at every tolerance by ``definition`` (module doc)."""
        if self.definition == "surface_area":
            values = surface_dice_by_area(self.pred, self.truth, self.spacing_mm, self.tolerances)
        else:
            d_pred, d_truth = self.distances_mm
            values = [float((np.count_nonzero(d_pred <= tol) + np.count_nonzero(d_truth <= tol)) /
                            (d_pred.size + d_truth.size)) for tol in self.tolerances]
        return dict(zip(self.tolerances, values))


def _hd95(pair: MaskPair) -> float:
    d_pred, d_truth = pair.distances_mm
    return float(max(np.percentile(d_pred, 95), np.percentile(d_truth, 95)))


def _chamfer(pair: MaskPair) -> float:
    d_pred, d_truth = pair.distances_mm
    return float((d_pred.mean() + d_truth.mean()) / 2.0)


# The table (module doc for each definition); Surface Dice's entries come per tolerance (``metric_table``).
METRICS: list[Metric] = [
    Metric("dice", "Dice", "", True, "mean", 0.0, lambda p: 2.0 * p.overlap / (p.n_pred + p.n_truth)),
    Metric("hd95_mm", "HD95", "mm", False, "median", math.inf, _hd95),
    Metric("chamfer_mm", "Chamfer", "mm", False, "median", math.inf, _chamfer, console=False),
]
NSD_IN_REPORT_MM = 3.0  # the report's comparison shows Surface Dice at this tolerance (all are in the files)


def surface_dice_metric(tolerance_mm: float) -> Metric:
    return Metric(f"nsd_{tolerance_mm:g}mm", f"NSD@{tolerance_mm:g}mm", "", True, "mean", 0.0,
                  lambda p: p.surface_dice[tolerance_mm], console=False, report=tolerance_mm == NSD_IN_REPORT_MM)


def metric_table(nsd_tolerances_mm=DEFAULT_NSD_TOLERANCES_MM) -> list[Metric]:
    """The metrics of an evaluation, in order: Dice, HD95, Chamfer, NSD at each tolerance, then any
    further entry of ``METRICS``."""
    return METRICS[:3] + [surface_dice_metric(float(t)) for t in nsd_tolerances_mm] + METRICS[3:]


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm,
                         nsd_tolerances_mm=DEFAULT_NSD_TOLERANCES_MM,
                         nsd_definition: str = "surface_area") -> dict[str, float]:
    """Every metric of ``metric_table`` for one structure: Dice, HD95 (mm), Chamfer (mm), NSD at each
    tolerance (by ``nsd_definition``, module doc), ...; empty masks as the module doc says."""
    if nsd_definition not in NSD_DEFINITIONS:
        raise ValueError(f"nsd_definition must be one of {NSD_DEFINITIONS}")
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    table = metric_table(nsd_tolerances_mm)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return {m.key: math.nan for m in table}
    if not has_pred or not has_truth:
        return {m.key: m.when_one_empty for m in table}
    pair = MaskPair(pred, truth, spacing_mm, nsd_tolerances_mm, nsd_definition)
    return {m.key: float(m.compute(pair)) for m in table}


def summarize(values: list[float]) -> dict:
    """Mean, std and median of a metric over structures, counting failures as failures.

    NaN (both masks empty: the metric is undefined) is left out and counted (``nan``). inf (one mask
    empty: a missed or hallucinated structure, HD95/Chamfer) is a failure and stays in: one inf makes
    the mean and std inf, and the median is inf when half the values or more are (median(0, inf, inf,
    inf) = inf). Counts: ``count`` (all), ``finite``, ``nan``, ``inf``. Every summary (console table,
    metrics.json, the HTML report) reads these, so a model that fails is never shown as the best."""
    array = np.asarray(values, dtype=np.float64)
    defined = array[~np.isnan(array)]
    failures = int(np.isinf(defined).sum())
    if defined.size == 0:
        mean = std = median = math.nan
    elif failures:
        mean = std = math.inf
        median = float(np.median(defined))
    else:
        mean, std, median = float(defined.mean()), float(defined.std()), float(np.median(defined))
    return {"mean": mean, "std": std, "median": median, "count": int(array.size),
            "finite": int(defined.size - failures), "nan": int(array.size - defined.size), "inf": failures}
