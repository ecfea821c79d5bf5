"""Anatomy-based phantoms: SYNTHETIC CT-like cases made by deforming real cardiac label maps.

Not patient images. A *template* is a label map of a real heart in the tutorial's numbering (0
background, 1 left atrium, 2 left ventricle, 3 right atrium, 4 right ventricle, 5 myocardium; labels
a template lacks stay absent), on any grid, voxel size and orientation, placed in world RAS+ mm by its
affine. Each case is built on the ellipsoid phantom's grid (64^3 voxels of 3 mm, a 192 mm cube round
a scanner-like centre) in three steps, all in world RAS+ mm:

1. global draws as the ellipsoid phantom's: crop centre ``[-8.5, -24, 312] + U(-10, 10)`` mm per axis,
   scale ``U(0.88, 1.12)`` (the template is real-sized: no extra anatomy scale), rotation
   ``U(-15, 15)`` degrees about each world axis (``Rotation.from_euler("xyz")``), heart position jitter
   ``U(-8, 8)`` mm per axis. The similarity ``G(x) = h + s R (x - c)`` maps the template's world mm to
   the case's, about the centroid ``c`` of the template's labelled voxels, putting it at ``h`` = crop
   centre + jitter. The jitter is then clipped, per axis, as far as needed to keep the moved structures
   ``3 mm + 2 x amplitude`` inside the grid (or centred, when they cannot be);
2. a smooth random diffeomorphism ``phi = exp(v)`` of the case's space (``data.deformation``: a
   stationary velocity field of RMS magnitude ``amplitude_mm`` and Gaussian correlation
   ``smoothness_mm``, integrated by scaling and squaring);
3. pull-back resampling by nearest neighbour: case voxel ``y`` takes the template's label at
   ``G^-1(phi(y))``, read at the template voxel nearest to ``inverse(template affine) @ G^-1(phi(y))``
   (background outside the template's grid).

Intensities follow the ellipsoid phantom (``phantom.synthesize_hu``): contrast-filled left blood
pool ~U(280, 360) HU, right 60-140 HU lower, myocardium ~U(90, 130) HU, epicardial fat rim -90 HU,
soft tissue 40 HU, lungs -820 HU kept 4 voxels (12 mm) clear of the heart, a vertebra, blur and
noise; no aorta (a template has no great vessels to place it by).

Everything is built on the RAS+ canonical grid and then reordered (no resampling) into the requested
``axcodes``: the same seed gives the same anatomy, voxel for voxel in the world, in every orientation.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..io.nifti import Volume, load_volume
from .classes import DEFAULT_CLASS_NAMES
from .crop import relabelled
from .deformation import integrate_velocity, jacobian_determinant, random_velocity_field, take_nearest
from .phantom import PHANTOM_SHAPE, PHANTOM_SPACING_MM, orientation_affine, synthesize_hu, write_synthetic_dataset

DEFAULT_AMPLITUDE_MM = 4.0  # RMS displacement of the random deformation
DEFAULT_SMOOTHNESS_MM = 20.0  # Gaussian correlation length of its velocity field
SCALE_RANGE = (0.88, 1.12)
ROTATION_DEG = 15.0
JITTER_MM = 8.0
CENTRE_MM = np.array([-8.5, -24.0, 312.0])  # as the ellipsoid phantom's crops
CENTRE_JITTER_MM = 10.0
LUNG_CLEARANCE_VOX = 4
TEMPLATE_LABELS = tuple(sorted(DEFAULT_CLASS_NAMES))  # 1..5


@dataclass(frozen=True)
class Template:
    """A validated template: its labels (uint8, any grid) and what every case needs from them."""

    labels: np.ndarray  # uint8 [i, j, k], values in 0..5
    affine: np.ndarray  # [i, j, k, 1] -> world RAS+ mm
    index_from_world: np.ndarray  # inverse of ``affine``
    centroid_mm: np.ndarray  # (3,) world mm: mean of the labelled voxel centres
    outline_mm: np.ndarray  # (N, 3) world mm relative to the centroid: the labelled voxels on a surface
    values: tuple[int, ...]  # label values present
    name: str


@dataclass
class TemplateCase:
    """One generated case, with its global draws (for tests and reports)."""

    image_hu: np.ndarray  # int16 [i, j, k]
    label: np.ndarray  # uint8 [i, j, k], values among the template's
    affine: np.ndarray  # [i, j, k, 1] -> world RAS+ mm
    scale: float
    rotation_deg: np.ndarray  # (3,) about world x, y, z
    heart_centre_mm: np.ndarray  # (3,) where the template's centroid lands (world mm)
    min_jacobian: float  # smallest Jacobian determinant of the deformation on the grid


def _label_summary() -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(DEFAULT_CLASS_NAMES.items()))


def prepare_template(template: Volume, name: str = "template") -> Template:
    """Check a template label map and precompute its centroid and outline.

    Refuses (``InputError``, one line naming ``name``) values other than 0 and the tutorial's 1..5, a
    map with no labelled voxel, and structures that could not fit the phantom's 192 mm field of view
    at the largest scale (x1.12) and a rotation of up to 15 degrees per axis."""
    data = np.asarray(template.data)
    if data.ndim != 3:
        raise InputError(f"{name}: template label map must be 3-D, got shape {data.shape}")
    values = np.unique(data)
    bad = [v for v in values.tolist() if v != int(v) or int(v) not in (0,) + TEMPLATE_LABELS]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise InputError(f"{name}: template labels must be 0 (background) and the tutorial's values ({_label_summary()}); "
                         f"found {shown}: remap the template to that numbering first")
    labels = data.astype(np.uint8)
    present = tuple(int(v) for v in values if v != 0)
    if not present:
        raise InputError(f"{name}: template has no labelled voxel (all background)")
    affine = np.asarray(template.affine, dtype=np.float64)
    mask = labels > 0
    centroid_index = np.argwhere(mask).mean(axis=0)
    centroid = affine[:3, :3] @ centroid_index + affine[:3, 3]
    outline_index = np.argwhere(mask & ~ndimage.binary_erosion(mask, border_value=0))
    outline = outline_index @ affine[:3, :3].T + affine[:3, 3] - centroid

    field_mm = (PHANTOM_SHAPE[0] - 1) * PHANTOM_SPACING_MM  # span of the grid's voxel centres
    span = outline.max(0) - outline.min(0) + np.abs(affine[:3, :3]).sum(axis=1)  # voxel centres' span + a voxel
    needed = 0.0
    for angles in itertools.product((-ROTATION_DEG, 0.0, ROTATION_DEG), repeat=3):
        moved = outline @ Rotation.from_euler("xyz", angles, degrees=True).as_matrix().T
        needed = max(needed, float((moved.max(0) - moved.min(0)).max()) * SCALE_RANGE[1])
    if needed > field_mm:
        raise InputError(f"{name}: labelled structures span {span[0]:.0f} x {span[1]:.0f} x {span[2]:.0f} mm (R, A, S); "
                         f"scaled by up to {SCALE_RANGE[1]} and rotated by up to {ROTATION_DEG:g} degrees they need "
                         f"{needed:.0f} mm, more than the phantom's field of view ({PHANTOM_SHAPE[0]} voxels of "
                         f"{PHANTOM_SPACING_MM:g} mm, {PHANTOM_SHAPE[0] * PHANTOM_SPACING_MM:g} mm): crop the template")
    return Template(labels=labels, affine=affine, index_from_world=np.linalg.inv(affine), centroid_mm=centroid,
                    outline_mm=outline, values=present, name=name)


def _fit_shift(shift: np.ndarray, moved_outline: np.ndarray, margin_mm: float) -> np.ndarray:
    """Clip the position jitter so that the moved outline (relative to the grid centre, before the
    shift) lies ``margin_mm`` inside the grid's voxel centres; centre it on an axis where it cannot."""
    half = (PHANTOM_SHAPE[0] - 1) * PHANTOM_SPACING_MM / 2.0
    lo, hi = moved_outline.min(0), moved_outline.max(0)
    low, high = -half + margin_mm - lo, half - margin_mm - hi
    return np.where(low <= high, np.clip(shift, low, high), -(lo + hi) / 2.0)


def generate_template_case_details(rng: np.random.Generator, template: Volume | Template,
                                   amplitude_mm: float = DEFAULT_AMPLITUDE_MM,
                                   smoothness_mm: float = DEFAULT_SMOOTHNESS_MM, axcodes: str = "LAS",
                                   name: str = "template") -> TemplateCase:
    """One case from ``template`` (a label ``Volume``, or a ``prepare_template`` result to reuse), with
    its draws. All random draws come from ``rng`` in a fixed order: crop centre, scale, rotation,
    jitter, velocity field, intensities. See the module docstring for the model."""
    t = template if isinstance(template, Template) else prepare_template(template, name)
    if not amplitude_mm >= 0:
        raise InputError(f"deformation amplitude must be 0 mm or more, got {amplitude_mm}")
    if not smoothness_mm > 0:
        raise InputError(f"deformation smoothness must be more than 0 mm, got {smoothness_mm}")
    shape, spacing = PHANTOM_SHAPE, PHANTOM_SPACING_MM

    volume_centre = CENTRE_MM + rng.uniform(-CENTRE_JITTER_MM, CENTRE_JITTER_MM, 3)
    scale = float(rng.uniform(*SCALE_RANGE))
    angles = rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    shift = rng.uniform(-JITTER_MM, JITTER_MM, 3)
    velocity = random_velocity_field(shape, spacing, rng, amplitude_mm, smoothness_mm)

    shift = _fit_shift(shift, scale * t.outline_mm @ rotation.T, 3.0 + 2.0 * amplitude_mm)
    heart_centre = volume_centre + shift

    # The RAS+ canonical grid: array axes along world x, y, z, so displacements are world mm.
    affine_ras = orientation_affine("RAS", spacing, shape, volume_centre)
    world = np.indices(shape, dtype=np.float64).transpose(1, 2, 3, 0) @ affine_ras[:3, :3].T + affine_ras[:3, 3]
    displacement = integrate_velocity(velocity, spacing)
    moved = world + displacement.transpose(1, 2, 3, 0)  # phi(y), world mm
    in_template = t.centroid_mm + ((moved - heart_centre) @ rotation) / scale  # G^-1: R^T (y - h) / s + c
    index = in_template @ t.index_from_world[:3, :3].T + t.index_from_world[:3, 3]
    label = take_nearest(t.labels, index.transpose(3, 0, 1, 2), 0)
    min_jacobian = float(jacobian_determinant(displacement, spacing).min())

    image = synthesize_hu(rng, label, world, volume_centre, aorta=None, lung_clearance_vox=LUNG_CLEARANCE_VOX)

    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(tuple("RAS")),
                                           nib.orientations.axcodes2ornt(tuple(axcodes.upper())))
    affine = affine_ras @ nib.orientations.inv_ornt_aff(ornt, shape)
    label = np.ascontiguousarray(nib.orientations.apply_orientation(label, ornt))
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, ornt))
    return TemplateCase(image_hu=image, label=label, affine=affine, scale=scale, rotation_deg=angles,
                        heart_centre_mm=heart_centre, min_jacobian=min_jacobian)


def generate_template_case(rng: np.random.Generator, template: Volume | Template,
                           amplitude_mm: float = DEFAULT_AMPLITUDE_MM, smoothness_mm: float = DEFAULT_SMOOTHNESS_MM,
                           axcodes: str = "LAS", name: str = "template") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image HU int16, label uint8, affine) of one case on the 64^3, 3 mm phantom grid, in ``axcodes``
    voxel order; see ``generate_template_case_details``."""
    case = generate_template_case_details(rng, template, amplitude_mm, smoothness_mm, axcodes, name)
    return case.image_hu, case.label, case.affine


TEMPLATE_PHANTOM_README = """SYNTHETIC DATA - NOT PATIENT IMAGES.
Generated by `sam3d-med phantom --template ...` (sam3d_med.data.template_phantom): each case is a REAL
template label map (files and sha256 in classes.json) moved by a random similarity (scale, rotation,
position) and deformed by a smooth random diffeomorphism (stationary velocity field, scaling and
squaring), with CT-like intensities synthesised from the labels. The anatomy is derived from the given
real templates; the images are not scans. Layout as TotalSegmentator heart crops: sNNNN/sNNNN-image.nii.gz
(int16, Hounsfield-like units) and sNNNN/sNNNN-label.nii.gz (uint8 labels, names in classes.json).
"""


def renumbered(template: Volume, label_map: dict[int, int] | None) -> Volume:
    """The template with its labels renumbered by ``label_map`` (source value -> tutorial value; values
    it does not name become background, as ``crop --labels`` does); unchanged without a map."""
    if not label_map:
        return template
    values = np.asarray(template.data)
    if values.min() < 0 or not np.all(np.mod(values, 1) == 0):
        raise InputError("template label values must be whole numbers >= 0")
    return Volume(relabelled(values, label_map), template.affine, template.header_forms)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_template_phantom_dataset(out_dir: str | Path, templates: list, n_cases: int, seed: int = 0,
                                   amplitude_mm: float = DEFAULT_AMPLITUDE_MM,
                                   smoothness_mm: float = DEFAULT_SMOOTHNESS_MM, axcodes: str = "LAS",
                                   first_index: int = 1, progress: bool = False,
                                   label_map: dict[int, int] | None = None) -> list[Path]:
    """Write ``n_cases`` template-based synthetic cases under ``out_dir``; returns the case folders.

    ``templates``: paths of label maps (NIfTI) in the tutorial's numbering, all read and checked
    before anything is written. Case ``n`` uses ``np.random.default_rng([seed, n])`` and template
    ``templates[(n - first_index) % len(templates)]``, so the templates are used in turn and any case
    can be regenerated alone. classes.json records the templates' file names and sha256, and the
    deformation's amplitude and smoothness. ``label_map``: the templates' own values -> the tutorial's
    (``renumbered``), for label maps numbered otherwise (biv-me: {1: 2, 2: 5, 3: 4}).
    """
    paths = [Path(p) for p in templates]
    if not paths:
        raise InputError("no template given")
    if not amplitude_mm >= 0:
        raise InputError(f"deformation amplitude must be 0 mm or more, got {amplitude_mm}")
    if not smoothness_mm > 0:
        raise InputError(f"deformation smoothness must be more than 0 mm, got {smoothness_mm}")
    prepared = [prepare_template(renumbered(load_volume(p, what="template label map"), label_map), name=str(p))
                for p in paths]
    meta = dict(axcodes=axcodes, spacing_mm=PHANTOM_SPACING_MM,
                **({"template_label_map": {str(k): v for k, v in sorted(label_map.items())}} if label_map else {}),
                templates=[{"file": p.name, "sha256": _sha256(p), "labels": list(t.values)}
                           for p, t in zip(paths, prepared)],
                template_order="case n uses templates[(n - first_index) % len(templates)]", first_index=first_index,
                deformation="stationary velocity field, scaling and squaring (Arsigny et al. 2006)",
                deformation_amplitude_mm=float(amplitude_mm), deformation_amplitude_is="RMS of the velocity field",
                deformation_smoothness_mm=float(smoothness_mm))
    numbers = itertools.count(first_index)  # write_synthetic_dataset makes cases n = first_index, ... in order

    def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = next(numbers)
        return generate_template_case(rng, prepared[(n - first_index) % len(prepared)], amplitude_mm, smoothness_mm,
                                      axcodes)

    return write_synthetic_dataset(out_dir, n_cases, seed, first_index, progress, make_case, DEFAULT_CLASS_NAMES,
                                   TEMPLATE_PHANTOM_README, "sam3d_med.data.template_phantom", meta,
                                   desc="template phantom")
