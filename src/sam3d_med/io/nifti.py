"""NIfTI reading and writing with explicit geometry.

Conventions used throughout sam3d-med:
- A volume array is indexed ``[i, j, k]`` (voxel indices along the file's first, second and third
  array axis). Its ``affine`` (4x4, float64) maps ``[i, j, k, 1]`` to world coordinates in **mm** in
  NIfTI's RAS+ world frame: +x towards the patient's Right, +y Anterior, +z Superior.
- "Canonical" means the array has been reordered/flipped (no resampling) so that its axes point as
  close as possible to +x, +y, +z (``nibabel.as_closest_canonical``); the affine is updated to match,
  so every voxel keeps its world position.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from .atomic import atomic_path


@dataclass
class Volume:
    """A 3-D array indexed [i, j, k] and the affine mapping voxel index -> world RAS+ mm."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def spacing_mm(self) -> np.ndarray:
        return voxel_spacing_mm(self.affine)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return nib.aff2axcodes(self.affine)


def voxel_spacing_mm(affine: np.ndarray) -> np.ndarray:
    """Length in mm of one voxel step along each array axis (norms of the affine's columns)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def grid_mismatch(label: Volume, image: Volume, atol_mm: float = 1e-3) -> str | None:
    """None when ``label`` lies on ``image``'s voxel grid; else what differs, in words and mm, and
    what to do (a label must be voxel-for-voxel on its image's grid)."""
    differences = []
    if label.data.shape != image.data.shape:
        differences.append(f"shape {label.data.shape} vs {image.data.shape}")
    spacing_l, spacing_i = voxel_spacing_mm(label.affine), voxel_spacing_mm(image.affine)
    if not np.allclose(spacing_l, spacing_i, atol=atol_mm):
        differences.append(f"voxel size {np.round(spacing_l, 3).tolist()} vs {np.round(spacing_i, 3).tolist()} mm")
    directions_l, directions_i = label.affine[:3, :3] / spacing_l, image.affine[:3, :3] / spacing_i
    if not np.allclose(directions_l, directions_i, atol=1e-4):
        differences.append(f"axes {''.join(label.axcodes)} vs {''.join(image.axcodes)}" if label.axcodes != image.axcodes
                           else "axis directions (an oblique rotation)")
    offset = label.affine[:3, 3] - image.affine[:3, 3]
    if not np.allclose(offset, 0, atol=atol_mm):
        differences.append(f"origin shifted by {np.round(offset, 2).tolist()} mm")
    if not differences:
        return None
    return ("label grid does not match the image grid (" + ", ".join(differences) + "): the label must be on the "
            "image's voxel grid; resample it onto the image (e.g. in 3D Slicer: Resample Image (BRAINS), reference "
            "= the image, nearest neighbour) or fix the header that is wrong")


def load_volume(path: str | os.PathLike, what: str = "volume", canonical: bool = True) -> Volume:
    """Read a 3-D NIfTI file; optionally reorient it to RAS+ canonical voxel order.

    Raises ``InputError`` with one line naming the file and the problem for a missing, unreadable
    or corrupt file, for data that is not 3-D (a trailing singleton 4th axis is accepted), and for
    non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file is missing")
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) != 3:
            raise InputError(f"{path}: {what} must be 3-D, got {len(img.shape)}-D shape {tuple(img.shape)}")
        if canonical:
            img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: {what} has {bad} non-finite values (NaN or inf)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: {what} has an invalid (singular or non-finite) affine")
    return Volume(data=np.asarray(data), affine=affine)


def save_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, dtype=None) -> None:
    """Write ``data`` (indexed [i, j, k]) with ``affine`` as NIfTI-1, atomically.

    Both the sform and the qform are set to ``affine`` (code 1, scanner) so that viewers that read
    either (3D Slicer, ITK-SNAP) place the volume at the same world position.
    """
    arr = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
