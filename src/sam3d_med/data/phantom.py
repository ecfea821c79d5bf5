"""Synthetic heart phantom: SYNTHETIC CT-like volumes with five cardiac labels.

This is not patient data. It exists so that the demo and the tests run without downloading
TotalSegmentator. Each case is a 64^3 volume at 3 mm isotropic in the TotalSegmentator heart-crop
layout (``sNNNN/sNNNN-image.nii.gz``, ``sNNNN/sNNNN-label.nii.gz``), with labels
1 left atrium, 2 left ventricle, 3 right atrium, 4 right ventricle, 5 myocardium.

Anatomy is built in a heart-local frame (x: patient left, y: anterior, z: superior; mm) from
ellipsoids: the LV cavity along a long axis pointing to the apex (left, anterior, inferior), the
myocardium a shell around it open at the base, the RV a crescent wrapped round the septum on the
right-anterior side, the atria above and behind the ventricles. Each case draws its own scale,
rotation, position and per-structure size and offsets. The anatomy is defined in world millimetres,
so the same seed gives the same anatomy whatever the array orientation requested (used by tests).

Intensities are Hounsfield-like: contrast-filled left blood pool ~320 HU, right ~220 HU, myocardium
~110 HU, epicardial fat ~-90 HU, soft tissue ~40 HU, lungs ~-820 HU, a vertebra ~700 HU and an
unlabelled aorta; Gaussian blur for partial volume at edges, then Gaussian noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..io.atomic import atomic_write_json, atomic_write_text
from ..io.nifti import save_volume
from .classes import CLASSES_FILE, DEFAULT_CLASS_NAMES, class_names_document

PHANTOM_SHAPE = (64, 64, 64)
PHANTOM_SPACING_MM = 3.0
ANATOMY_SCALE = 1.3


@dataclass
class PhantomCase:
    image_hu: np.ndarray  # int16 [i, j, k]
    label: np.ndarray  # uint8 [i, j, k], values 0..5
    affine: np.ndarray  # [i, j, k, 1] -> world RAS+ mm


def orientation_affine(axcodes: str, spacing_mm: float, shape_ijk, centre_world_mm, oblique_deg: float = 0.0):
    """Affine whose array axes point along ``axcodes`` (e.g. "LAS"), rotated by ``oblique_deg`` about
    the world z axis, with the array's centre at ``centre_world_mm``."""
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes.upper()))
    direction = np.zeros((3, 3))
    for array_axis, (world_axis, flip) in enumerate(ornt):
        direction[int(world_axis), array_axis] = float(flip)
    if oblique_deg:
        direction = Rotation.from_euler("z", oblique_deg, degrees=True).as_matrix() @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing_mm
    centre_index = (np.asarray(shape_ijk, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(centre_world_mm, dtype=np.float64) - affine[:3, :3] @ centre_index
    return affine


def _inside_ellipsoid(points, centre, semi_axes, rotation=None):
    """points (..., 3) in mm; True inside the ellipsoid (axes along ``rotation``'s columns)."""
    d = points - centre
    if rotation is not None:
        d = d @ rotation  # coordinates in the ellipsoid's own axes
    return ((d / semi_axes) ** 2).sum(axis=-1) <= 1.0


def _frame_with_z_along(u):
    """A rotation matrix whose third column is the unit vector ``u``."""
    u = u / np.linalg.norm(u)
    helper = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = np.cross(helper, u)
    a /= np.linalg.norm(a)
    b = np.cross(u, a)
    return np.stack([a, b, u], axis=1)


def generate_case(rng: np.random.Generator, axcodes: str = "LAS", oblique_deg: float = 0.0,
                  shape_ijk=PHANTOM_SHAPE, spacing_mm: float = PHANTOM_SPACING_MM) -> PhantomCase:
    """One synthetic case; all random draws come from ``rng`` in a fixed order."""
    # The crop's centre in world mm: a scanner-like, non-zero position.
    volume_centre = np.array([-8.5, -24.0, 312.0]) + rng.uniform(-10, 10, 3)
    affine = orientation_affine(axcodes, spacing_mm, shape_ijk, volume_centre, oblique_deg)

    # World mm of every voxel centre, (I, J, K, 3).
    ijk = np.indices(shape_ijk, dtype=np.float64).transpose(1, 2, 3, 0)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]

    # Heart-local frame: x = patient left (-x world), y = anterior (+y), z = superior (+z).
    ras_to_local = np.diag([-1.0, 1.0, 1.0])
    # Sizes below are for a small adult heart; ANATOMY_SCALE brings it to a heart crop's proportions
    # (the heart fills most of the 192 mm field of view, as in TotalSegmentator's crops).
    scale = ANATOMY_SCALE * rng.uniform(0.88, 1.12)
    rotation = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
    heart_centre = volume_centre + rng.uniform(-8, 8, 3)
    local = ((world - heart_centre) @ ras_to_local.T) @ rotation / scale

    def jitter(lo=0.88, hi=1.12, n=3):
        return rng.uniform(lo, hi, n)

    # Left ventricle: long axis from base to apex towards left, anterior, inferior.
    lv_axis = np.array([0.5, 0.45, -0.75]) + rng.uniform(-0.1, 0.1, 3)
    lv_frame = _frame_with_z_along(lv_axis)
    lv_centre = np.array([10.0, 4.0, -8.0]) + rng.uniform(-3, 3, 3)
    lv_semi = np.array([19.0, 19.0, 36.0]) * jitter()
    wall_mm = rng.uniform(8.0, 12.0)
    lv_cavity = _inside_ellipsoid(local, lv_centre, lv_semi, lv_frame)
    lv_outer = _inside_ellipsoid(local, lv_centre, lv_semi + wall_mm, lv_frame)
    along_axis = (local - lv_centre) @ lv_frame[:, 2]
    base_cut = along_axis > -0.72 * lv_semi[2]  # the LV opens towards the atria at its base
    myocardium = lv_outer & ~lv_cavity & base_cut
    lv = lv_cavity & base_cut

    rv_centre = lv_centre + np.array([-24.0, 17.0, 4.0]) + rng.uniform(-3, 3, 3)
    rv_frame = _frame_with_z_along(lv_axis + np.array([-0.3, 0.2, 0.0]))
    rv_semi = np.array([22.0, 30.0, 36.0]) * jitter()
    rv = _inside_ellipsoid(local, rv_centre, rv_semi, rv_frame) & ~lv_outer

    la_centre = np.array([6.0, -22.0, 30.0]) + rng.uniform(-3, 3, 3)
    la = _inside_ellipsoid(local, la_centre, np.array([24.0, 17.0, 17.0]) * jitter())
    ra_centre = np.array([-30.0, -4.0, 26.0]) + rng.uniform(-3, 3, 3)
    ra = _inside_ellipsoid(local, ra_centre, np.array([19.0, 19.0, 22.0]) * jitter())

    label = np.zeros(shape_ijk, dtype=np.uint8)
    # Later assignments only fill voxels still free: myocardium and ventricles win over atria.
    for value, region in ((5, myocardium), (2, lv), (4, rv), (1, la), (3, ra)):
        label[region & (label == 0)] = value

    # --- intensities (HU) ---
    aorta = (((local[..., 0] - 2.0) / 12.0) ** 2 + ((local[..., 1] + 2.0) / 12.0) ** 2 <= 1.0) & (local[..., 2] > 25.0)
    image = synthesize_hu(rng, label, world, volume_centre, aorta=aorta)
    return PhantomCase(image_hu=image, label=label, affine=affine)


# Intensity ranges (HU) drawn per case: the phantom's; ``real_anatomy.HU_STYLES`` adds a real CTA's.
PHANTOM_HU = {"left_blood": (280.0, 360.0), "right_blood_drop": (60.0, 140.0), "myocardium": (90.0, 130.0),
              "noise": (15.0, 30.0)}
CAVITY_WALL_VOX = {2: 2, 4: 2, 1: 1, 3: 1}  # unlabelled wall round each cavity: ventricles 2 voxels, atria 1


def synthesize_hu(rng: np.random.Generator, label: np.ndarray, world_mm: np.ndarray, volume_centre,
                  aorta: np.ndarray | None = None, lung_clearance_vox: int = 0, values: dict = PHANTOM_HU,
                  cavity_walls: bool = False) -> np.ndarray:
    """CT-like Hounsfield units (int16, the shape of ``label``) for a phantom label map in the tutorial's
    numbering (1 LA, 2 LV, 3 RA, 4 RV, 5 myocardium; absent labels simply get no blood pool).

    ``world_mm`` (I, J, K, 3): world RAS+ mm of every voxel centre; ``volume_centre`` (3,): the crop's
    centre in world mm, about which the body (lungs, spine) is placed. Soft tissue 40 HU; lungs -820 HU
    (two ellipsoids left and right of the centre; with ``lung_clearance_vox`` > 0 only farther than that
    many voxels from the heart, for anatomy not built to leave them room); a vertebra 700 HU; a 2-voxel
    rim of epicardial fat -90 HU round the labelled heart; ``aorta`` (optional mask) and the left blood
    pool (labels 1, 2) ~U(280, 360) HU, the right (3, 4) 60-140 HU lower; myocardium (5) ~U(90, 130) HU;
    Gaussian blur (sigma 0.7 voxel) for partial volume, then Gaussian noise of standard deviation
    ~U(15, 30) HU. ``values``: other ranges for these draws (same keys as ``PHANTOM_HU``). With
    ``cavity_walls`` and no myocardium label (cavity surfaces only), an unlabelled wall of myocardial
    intensity round the cavities (``CAVITY_WALL_VOX``) that the fat rim then surrounds. Draws from
    ``rng`` in this fixed order: left blood, right-blood drop, myocardium, noise level, noise.
    """
    shape_ijk = label.shape
    left_blood = rng.uniform(*values["left_blood"])
    right_blood = left_blood - rng.uniform(*values["right_blood_drop"])  # contrast reaches the left heart first
    hu = np.full(shape_ijk, 40.0)  # chest wall / soft tissue
    body = world_mm - np.asarray(volume_centre, dtype=np.float64)
    myocardium = label == 5
    if cavity_walls and not myocardium.any():
        for value, thickness in CAVITY_WALL_VOX.items():
            if (label == value).any():
                myocardium |= ndimage.binary_dilation(label == value, iterations=thickness)
        myocardium &= label == 0
    heart = (label > 0) | myocardium
    lung_left = _inside_ellipsoid(body, np.array([70.0, -10.0, 0.0]), np.array([55.0, 80.0, 140.0]))
    lung_right = _inside_ellipsoid(body, np.array([-72.0, -10.0, 0.0]), np.array([55.0, 80.0, 140.0]))
    lungs = lung_left | lung_right
    if lung_clearance_vox > 0:
        lungs &= ~ndimage.binary_dilation(heart, iterations=int(lung_clearance_vox))
    hu[lungs] = -820.0
    spine = ((body[..., 0] / 16.0) ** 2 + ((body[..., 1] + 75.0) / 16.0) ** 2) <= 1.0
    hu[spine] = 700.0
    fat = ndimage.binary_dilation(heart, iterations=2) & ~heart
    hu[fat] = -90.0
    if aorta is not None:
        hu[aorta & ~heart] = left_blood
    hu[myocardium] = rng.uniform(*values["myocardium"])
    hu[(label == 1) | (label == 2)] = left_blood
    hu[(label == 3) | (label == 4)] = right_blood
    hu = ndimage.gaussian_filter(hu, sigma=0.7)  # partial volume at edges
    hu += rng.normal(0.0, rng.uniform(*values["noise"]), shape_ijk)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


PHANTOM_README = """SYNTHETIC DATA - NOT PATIENT IMAGES.
Generated by `sam3d-med phantom` (sam3d_med.data.phantom): CT-like volumes of a simplified heart built
from ellipsoids, for demos and tests. Layout as TotalSegmentator heart crops: sNNNN/sNNNN-image.nii.gz
(int16, Hounsfield-like units) and sNNNN/sNNNN-label.nii.gz (uint8 labels, names in classes.json).
"""


def write_phantom_dataset(out_dir: str | Path, n_cases: int, seed: int = 0, axcodes: str = "LAS",
                          oblique_deg: float = 0.0, first_index: int = 1, progress: bool = False) -> list[Path]:
    """Write ``n_cases`` synthetic cases under ``out_dir``; returns the case folders.

    Case ``n`` uses ``np.random.default_rng([seed, n])``, so any case can be regenerated alone and
    a dataset is identical for the same seed.
    """
    meta = dict(axcodes=axcodes, oblique_deg=oblique_deg, spacing_mm=PHANTOM_SPACING_MM)

    def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        case = generate_case(rng, axcodes=axcodes, oblique_deg=oblique_deg)
        return case.image_hu, case.label, case.affine

    return write_synthetic_dataset(out_dir, n_cases, seed, first_index, progress, make_case, DEFAULT_CLASS_NAMES,
                                   PHANTOM_README, "sam3d_med.data.phantom", meta, desc="phantom")


def write_synthetic_dataset(out_dir: str | Path, n_cases: int, seed: int, first_index: int, progress: bool,
                            make_case, class_names: dict, readme: str, generator: str, meta: dict | None = None,
                            desc: str = "cases") -> list[Path]:
    """The layout shared by the synthetic data sets: ``classes.json`` (marked synthetic, with the
    generator, seed and ``meta``), ``README_SYNTHETIC.txt`` and ``sNNNN/sNNNN-{image,label}.nii.gz``
    where case n is ``make_case(np.random.default_rng([seed, n]))`` -> (image HU, label, affine)."""
    out_dir = Path(out_dir)
    doc = class_names_document(class_names)
    doc.update(synthetic=True, generator=generator, seed=seed, **(meta or {}))
    refuse_another_data_set(out_dir, doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / CLASSES_FILE, doc)
    atomic_write_text(out_dir / "README_SYNTHETIC.txt", readme)
    indices = range(first_index, first_index + n_cases)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=desc, unit="case")
    folders = []
    for n in indices:
        image, label, affine = make_case(np.random.default_rng([seed, n]))
        case_id = f"s{n:04d}"
        folder = out_dir / case_id
        save_volume(folder / f"{case_id}-image.nii.gz", image, affine, dtype=np.int16)
        save_volume(folder / f"{case_id}-label.nii.gz", label, affine, dtype=np.uint8)
        folders.append(folder)
    return folders


def refuse_another_data_set(out_dir: Path, doc: dict) -> None:
    """``InputError`` when ``out_dir`` already holds cases of another data set (another generator,
    seed, templates or settings: its classes.json differs beyond ``first_index``, or case folders
    without a synthetic classes.json): writing into it would leave a mix that its classes.json
    misdescribes. The same set again (or more of its cases) is fine."""
    if not out_dir.is_dir():
        return
    path = out_dir / CLASSES_FILE
    try:
        existing = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        existing = None
    if existing is None:
        if any(p.is_dir() and not p.name.startswith(".") for p in out_dir.iterdir()):
            raise InputError(f"{out_dir}: already holds case folders that are not a synthetic data set of this tool: "
                             f"give another --out")
        return
    new = json.loads(json.dumps(doc))  # as the file will read (tuples as lists)
    differ = sorted(k for k in set(existing) | set(new) if k != "first_index" and existing.get(k) != new.get(k))
    if differ:
        raise InputError(f"{out_dir}: holds another synthetic data set (different: {', '.join(differ)}): give another "
                         f"--out, or delete it first")
