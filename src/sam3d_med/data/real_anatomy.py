"""Real anatomy in the tutorial's layout: label maps from surface models or from 3-D label volumes of
other resolutions, with CT-like intensities synthesised on them, and each case's provenance.

Real cardiac data rarely comes as the tutorial's CT crop: a surface model has no image, and an MR's
labels have no CT intensities. ``surfaces_to_crop`` rasterises surfaces (world RAS+ mm) on a 64^3
grid of 3 mm around them (axis-aligned in world RAS+, as ``sam3d-med crop`` makes crops), and
``labels_to_crop`` resamples a label volume onto such a grid (``crop.crop_around_labels``, nearest
neighbour). ``synthesize_ct_hu`` then gives the labels CT intensities in one of two styles:

- ``"phantom"``: the heart phantom's values (``phantom``: left blood pool 280-360 HU, right 60-140 HU
  lower, myocardium 90-130 HU, noise 15-30 HU), so a shape is scored apart from its intensities;
- ``"ct"``: a real contrast CT's values, measured on ``../shared/anatomy/ts_pulmonary_ct`` (a
  TotalSegmentator test CTA): blood pool 460-520 HU on both sides (its heart's mode is ~490 HU, its
  pulmonary artery's median 549 HU), myocardium 100-140 HU (its heart's second mode ~120 HU), noise
  35-50 HU.

Both use the phantom's synthesis (``phantom.synthesize_hu``): soft tissue (40 HU), a fat rim (-90 HU),
lungs (-820 HU) left and right of the grid centre, a vertebra and, where the labels have no
myocardium (cavity surfaces), an unlabelled wall of myocardial intensity round the cavities (2 voxels
round the ventricles, 1 round the atria), then blur (sigma 0.7 voxel, partial volume) and noise. Labels are the tutorial's (1 left atrium,
2 left ventricle, 3 right atrium, 4 right ventricle, 5 myocardium); a class the source does not have
is absent from the case (its scores are NaN, never zero) and listed in its provenance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_json
from ..io.nifti import Volume, save_volume
from .classes import DEFAULT_CLASS_NAMES
from .crop import crop_around_labels
from .phantom import PHANTOM_HU, orientation_affine, synthesize_hu
from .surface_raster import close_surface, enclosed_volume_mm3, labels_from_fractions, rasterise_closed_surface

PROVENANCE_FILE = "provenance.json"
HU_STYLES = {
    "phantom": PHANTOM_HU,
    "ct": {"left_blood": (460.0, 520.0), "right_blood_drop": (-40.0, 40.0), "myocardium": (100.0, 140.0),
           "noise": (35.0, 50.0)},
}


def surfaces_to_crop(surfaces: dict[int, tuple[np.ndarray, np.ndarray]], size: int = 64, spacing_mm: float = 3.0,
                     oversample: int = 3) -> tuple[np.ndarray, np.ndarray, dict[int, dict]]:
    """(labels uint8 (size,)*3, affine voxel -> world RAS+ mm, volumes) of surfaces given as
    {label: (vertices (V, 3) world RAS+ mm, faces (F, 3))}.

    The grid is axis-aligned in world RAS+ (affine ``diag(spacing)`` plus origin), centred on the
    surfaces' joint bounding box. Each surface is closed (``surface_raster.close_surface``) and
    rasterised at ``oversample``^3 sub-voxel points per voxel; a voxel takes the label with the largest inside
    fraction when that is at least 0.5. ``volumes``: per label the closed surface's volume, the
    rasterised inside fraction's volume and the labelled voxels' volume, in ml."""
    closed = {v: close_surface(*surfaces[v]) for v in sorted(surfaces)}
    points = np.concatenate([c[0] for c in closed.values()])
    centre = (points.min(0) + points.max(0)) / 2
    affine = orientation_affine("RAS", spacing_mm, (size,) * 3, centre)
    fractions = {v: rasterise_closed_surface(c[0], c[1], affine, (size,) * 3, oversample) for v, c in closed.items()}
    label = labels_from_fractions(fractions)
    voxel_ml = spacing_mm ** 3 / 1000.0
    volumes = {v: {"surface_ml": enclosed_volume_mm3(c[0], c[1]) / 1000.0, "raster_fraction_ml":
                   float(fractions[v].sum() * voxel_ml), "labelled_ml": float((label == v).sum() * voxel_ml),
                   "loops_capped": c[2]} for v, c in closed.items()}
    return label, affine, volumes


def labels_to_crop(labels: Volume, label_map: dict[int, int], size: int = 64,
                   spacing_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 (size,)*3, affine) of a label volume on the crop grid around its labels
    (``crop.crop_around_labels``: nearest neighbour, renumbered by ``label_map`` source -> target)."""
    blank = Volume(np.zeros(labels.data.shape, dtype=np.float32), labels.affine)
    crop = crop_around_labels(blank, labels, label_map, size=size, spacing_mm=spacing_mm)
    return crop.label, crop.affine


def synthesize_ct_hu(label: np.ndarray, affine: np.ndarray, rng: np.random.Generator, style: str = "phantom") -> np.ndarray:
    """CT-like intensities (int16 HU, the shape of ``label``) for tutorial-numbered labels on the grid
    of ``affine`` (voxel -> world RAS+ mm) in ``style`` (``HU_STYLES``: module doc), by the phantom's
    synthesis (``phantom.synthesize_hu``: body about the grid's centre, lungs kept 4 voxels clear of
    the heart, an unlabelled wall round cavities without a myocardium label); draws from ``rng``."""
    ijk = np.indices(label.shape, dtype=np.float64).transpose(1, 2, 3, 0)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ ((np.asarray(label.shape) - 1) / 2.0) + affine[:3, 3]
    return synthesize_hu(rng, label, world, centre, lung_clearance_vox=4, values=HU_STYLES[style], cavity_walls=True)


def write_anatomy_case(out_dir: str | Path, case_id: str, image_hu: np.ndarray, label: np.ndarray,
                       affine: np.ndarray, provenance: dict) -> Path:
    """``out_dir/case_id/case_id-{image,label}.nii.gz`` and ``provenance.json`` (the source, its
    licence, how the case was made, and ``classes_absent``: the tutorial's classes it does not have)."""
    folder = Path(out_dir) / case_id
    save_volume(folder / f"{case_id}-image.nii.gz", image_hu, affine, dtype=np.int16)
    save_volume(folder / f"{case_id}-label.nii.gz", label, affine, dtype=np.uint8)
    present = {int(v) for v in np.unique(label) if v}
    document = dict(provenance)
    document.setdefault("classes_absent", [DEFAULT_CLASS_NAMES[c] for c in DEFAULT_CLASS_NAMES if c not in present])
    atomic_write_json(folder / PROVENANCE_FILE, document)
    return folder
