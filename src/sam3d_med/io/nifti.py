"""NIfTI reading and writing with explicit geometry.

Conventions used throughout sam3d-med:
- A volume array is indexed ``[i, j, k]`` (voxel indices along the file's first, second and third
  array axis). Its ``affine`` (4x4, float64) maps ``[i, j, k, 1]`` to world coordinates in **mm** in
  NIfTI's RAS+ world frame: +x towards the patient's Right, +y Anterior, +z Superior.
- "Canonical" means the array has been reordered/flipped (no resampling) so that its axes point as
  close as possible to +x, +y, +z (``nibabel.as_closest_canonical``); the affine is updated to match,
  so every voxel keeps its world position.
- A NIfTI header holds two transforms, the sform and the qform, each with a code (0: unset). Where
  both are set and disagree, readers differ: nibabel (and sam3d-med) use the sform, ITK (the reader of
  3D Slicer and ITK-SNAP) may use the qform. ``load_volume`` warns (``GeometryWarning``) naming both
  and the one used, and keeps both (``Volume.header_forms``); ``save_volume(..., like=volume)`` writes
  an output on that volume's grid with the same two transforms and codes, so that every reader puts
  the output exactly where it puts the input.
- One rule for a label and its image (``label_on_image_grid``): the label is accepted when its voxel
  centres coincide with the image's in the world (stored in the same or another voxel order: it is
  reordered onto the image's), and refused, saying what differs in mm and axes, when they do not.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from .atomic import atomic_path


class GeometryWarning(UserWarning):
    """Geometry that viewers may read differently, or a label reordered onto its image: said once."""


@dataclass(frozen=True)
class HeaderForms:
    """The two transforms of a NIfTI header, as stored: sform and qform (4x4, index -> world mm) with
    their codes (0: unset)."""

    sform: np.ndarray
    sform_code: int
    qform: np.ndarray
    qform_code: int


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (I, J, K) and ``affine`` (4, 4) mapping voxel [i, j, k, 1] -> world RAS+ mm
    (centre of each voxel): the geometry of a volume without its values, as one thing."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing_mm(self) -> np.ndarray:
        return voxel_spacing_mm(self.affine)


@dataclass
class Volume:
    """A 3-D array indexed [i, j, k] and the affine mapping voxel index -> world RAS+ mm.

    ``header_forms``: the file's sform and qform when the array is in the file's own voxel order (a
    volume loaded with ``canonical=False``), for outputs on its grid (``save_volume(like=...)``)."""

    data: np.ndarray
    affine: np.ndarray
    header_forms: HeaderForms | None = None

    @property
    def spacing_mm(self) -> np.ndarray:
        return voxel_spacing_mm(self.affine)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return nib.aff2axcodes(self.affine)


def voxel_spacing_mm(affine: np.ndarray) -> np.ndarray:
    """Length in mm of one voxel step along each array axis (norms of the affine's columns)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _voxel_correspondence(label: Volume, image: Volume, atol_vox: float = 1e-3):
    """How the label's voxels map onto the image's when their centres coincide in the world: per image
    axis, (label axis, flipped); None when they do not coincide (other spacing, rotation, shift, size)."""
    to_image = np.linalg.solve(image.affine, label.affine)  # label index -> image index
    rotation, offset = to_image[:3, :3], to_image[:3, 3]
    order = []
    for a in range(3):
        b = int(np.argmax(np.abs(rotation[a])))
        sign = np.sign(rotation[a, b])
        expected = np.zeros(3)
        expected[b] = sign
        if not np.allclose(rotation[a], expected, atol=atol_vox):
            return None
        if image.data.shape[a] != label.data.shape[b]:
            return None
        if abs(offset[a] - (0.0 if sign > 0 else label.data.shape[b] - 1.0)) > atol_vox:  # index 0 -> 0 or n - 1
            return None
        order.append((b, sign < 0))
    if sorted(b for b, _ in order) != [0, 1, 2]:
        return None
    return order


def _in_voxels(mm: float, image: Volume) -> float:
    """A tolerance in mm as a fraction of the image's smallest voxel side (index units)."""
    return mm / max(float(voxel_spacing_mm(image.affine).min()), 1e-6)


def _world_box(volume: Volume) -> np.ndarray:
    """(2, 3): the lowest and highest world coordinates (R, A, S) of the grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, volume.data.shape[0] - 1) for j in (0, volume.data.shape[1] - 1)
                        for k in (0, volume.data.shape[2] - 1)], dtype=np.float64)
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return np.stack([world.min(0), world.max(0)])


def _spans(box: np.ndarray) -> str:
    return ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, lo, hi in zip("RAS", *box))


def grid_mismatch(label: Volume, image: Volume, atol_mm: float = 1e-3) -> str | None:
    """None when the label's voxel centres coincide with the image's in the world (in any voxel order);
    else what differs, in words, mm and axes, and what to do."""
    if _voxel_correspondence(label, image, _in_voxels(atol_mm, image)) is not None:
        return None
    differences = []
    if sorted(label.data.shape) != sorted(image.data.shape):
        differences.append(f"shape {label.data.shape} vs {image.data.shape}")
    spacing_l, spacing_i = voxel_spacing_mm(label.affine), voxel_spacing_mm(image.affine)
    if not np.allclose(sorted(spacing_l), sorted(spacing_i), atol=atol_mm):
        differences.append(f"voxel size {np.round(spacing_l, 3).tolist()} vs {np.round(spacing_i, 3).tolist()} mm")
    if label.axcodes != image.axcodes:
        differences.append(f"axes {''.join(label.axcodes)} vs {''.join(image.axcodes)}")
    box_l, box_i = _world_box(label), _world_box(image)
    offset = label.affine[:3, 3] - image.affine[:3, 3]
    if not differences and not np.allclose(offset, 0, atol=atol_mm):  # the same grid, elsewhere
        differences.append(f"origin shifted by {np.round(offset, 2).tolist()} mm")
    elif not np.allclose(box_l, box_i, atol=atol_mm):
        shift = (box_l.mean(0) - box_i.mean(0)).round(1).tolist()
        differences.append(f"voxel centres span {_spans(box_l)} mm vs the image's {_spans(box_i)} mm (centre shifted "
                           f"by {shift} mm along R, A, S)")
    elif not differences:
        differences.append("axis directions (an oblique rotation)")
    return ("label grid does not match the image grid (" + "; ".join(differences) + "): the label's voxels must lie "
            "on the image's, in any voxel order; resample it onto the image (e.g. in 3D Slicer: Resample Image "
            "(BRAINS), reference = the image, nearest neighbour) or fix the header that is wrong")


def label_on_image_grid(label: Volume, image: Volume, label_path: str | os.PathLike) -> Volume:
    """The label on the image's voxel grid: itself, or reordered (axes permuted and flipped, no
    resampling) when it is stored in another voxel order whose voxels coincide with the image's in the
    world (a ``GeometryWarning`` says so); refused (``InputError`` naming what differs in mm and axes)
    when they do not coincide. Both volumes as loaded (``canonical=False``, or both canonical)."""
    order = _voxel_correspondence(label, image, _in_voxels(1e-3, image))
    if order is None:
        raise InputError(f"{label_path}: {grid_mismatch(label, image)}")
    if [b for b, _ in order] == [0, 1, 2] and not any(f for _, f in order):
        return Volume(label.data, image.affine, image.header_forms)
    data = np.transpose(label.data, [b for b, _ in order])
    data = np.flip(data, axis=[a for a, (_, flipped) in enumerate(order) if flipped])
    warnings.warn(GeometryWarning(
        f"{label_path}: stored in voxel order {''.join(label.axcodes)}, the image in {''.join(image.axcodes)}: "
        f"reordered onto the image's grid by their headers (every label voxel keeps its world position; a label "
        f"written with the image's array and another header would be mirrored: check the overlay in a viewer)"))
    return Volume(np.ascontiguousarray(data), image.affine, image.header_forms)


def _header_forms(img, affine: np.ndarray) -> HeaderForms:
    """The header's sform and qform with their codes (an unset one: ``affine``, code 0)."""
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    return HeaderForms(affine if sform is None else np.asarray(sform, np.float64), int(scode),
                       affine if qform is None else np.asarray(qform, np.float64), int(qcode))


def _forms_disagreement(forms: HeaderForms, shape) -> str | None:
    """One line when the header's sform and qform are both set and place the volume differently."""
    sform, scode, qform, qcode = forms.sform, forms.sform_code, forms.qform, forms.qform_code
    if not scode or not qcode:
        return None
    shape = np.array(shape[:3], dtype=np.float64) - 1
    corners = np.array([[a, b, c, 1.0] for a in (0, shape[0]) for b in (0, shape[1]) for c in (0, shape[2])])
    apart = float(np.linalg.norm((corners @ (sform - qform).T)[:, :3], axis=1).max())
    if apart < 1e-3:
        return None
    return (f"its sform (code {int(scode)}) and qform (code {int(qcode)}) disagree, by up to {apart:.1f} mm: sam3d-med "
            f"uses the sform {_rows(sform)}, as nibabel does; ITK-based viewers (3D Slicer, ITK-SNAP) may use the qform "
            f"{_rows(qform)}. Outputs on this grid keep both, so every viewer puts them where it puts this file")


def _rows(transform: np.ndarray) -> str:
    """The 3 x 4 top of a transform on one line."""
    return np.array2string(np.round(transform[:3], 3), separator=", ").replace("\n", "")


def as_canonical(volume: Volume) -> Volume:
    """The volume in RAS+ canonical voxel order (``nibabel.as_closest_canonical``: axes permuted and
    flipped, no resampling; every voxel keeps its world position)."""
    img = nib.as_closest_canonical(nib.Nifti1Image(volume.data, volume.affine))
    return Volume(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64))


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
    forms = _header_forms(img, affine) if hasattr(img, "get_sform") else None
    if forms is not None:
        disagreement = _forms_disagreement(forms, img.shape)
        if disagreement:
            warnings.warn(GeometryWarning(f"{path}: {what}: {disagreement}"))
    # the file's own forms describe its own voxel order only
    return Volume(data=np.asarray(data), affine=affine, header_forms=None if canonical else forms)


def save_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, dtype=None,
                like: Volume | None = None) -> None:
    """Write ``data`` (indexed [i, j, k]) with ``affine`` as NIfTI-1, atomically.

    Both the sform and the qform are set to ``affine`` (code 1, scanner) so that viewers that read
    either (3D Slicer, ITK-SNAP) place the volume at the same world position; with ``like`` (an input
    on whose grid ``data`` lies, loaded with ``canonical=False``) the input's own sform and qform and
    their codes instead, so that every reader puts the output where it puts the input, whichever
    transform it reads.
    """
    arr = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    forms = like.header_forms if like is not None else None
    if forms is not None and like.data.shape[:3] == arr.shape[:3] and np.allclose(like.affine, affine, atol=1e-6):
        img.set_sform(forms.sform, code=forms.sform_code)
        img.set_qform(forms.qform, code=forms.qform_code)
    else:
        img.set_sform(img.affine, code=1)
        img.set_qform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
