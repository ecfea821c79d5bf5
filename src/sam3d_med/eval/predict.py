"""Prediction for users: one slice of a NIfTI scan + a mask -> 3-D structure as NIfTI on the scan's grid.

Geometry, step by step:
1. The scan (and a label volume, when the mask comes from one) are read as stored; the requested
   slice is ``slice_idx`` along array ``axis`` **of the file as stored** (what a viewer shows).
2. The image follows preprocessing: RAS+ canonical order, resampling to the model's spacing. The
   conditioning slice is the canonical slice through the world position of the stored slice's
   centre; its mask samples the stored 2-D mask (a PNG mask is the stored slice's [h, w] pixel grid:
   rows along the first remaining array axis, columns along the second) at each canonical pixel's
   in-plane position, nearest pixel.
3. The model's inputs are built from that slice exactly as in training (``condition_inputs``).
4. The predicted probability (on the canonical grid) is sampled back at the world position of every
   voxel of the scan's own grid (linear interpolation), so the output NIfTI has the scan's shape,
   affine and orientation and overlays it in 3D Slicer / ITK-SNAP. The mask is probability >= 0.5.
5. The surface mesh (world mm, outward normals) is extracted on the canonical grid.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from ..data.dataset import condition_inputs
from ..data.geometry import resample_isotropic, take_slice, voxel_to_world, world_grid, world_to_voxel
from ..data.preprocess import window_ct
from ..data.surfaces import mask_surface_mesh
from ..errors import InputError
from ..io.atomic import atomic_path
from ..io.nifti import Volume, load_volume, save_volume, voxel_spacing_mm


def _mask_from_png(path: Path, shape_hw: tuple[int, int]) -> np.ndarray:
    import matplotlib.image as mpimg

    try:
        pixels = mpimg.imread(str(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read mask image ({type(exc).__name__})") from None
    if pixels.ndim == 3:
        pixels = pixels[..., :3].max(axis=-1)
    if pixels.shape != shape_hw:
        raise InputError(f"{path}: mask is {pixels.shape[0]}x{pixels.shape[1]} pixels, the slice is "
                         f"{shape_hw[0]}x{shape_hw[1]} (rows x columns of the stored slice)")
    return pixels > 0.5 * pixels.max() if pixels.max() > 0 else pixels > 0


def canonical_resampled(volume: Volume, spacing_mm: float, order: int) -> Volume:
    """RAS+ canonical order (nibabel), then isotropic ``spacing_mm`` (as preprocessing does)."""
    img = nib.as_closest_canonical(nib.Nifti1Image(volume.data, volume.affine))
    data, affine = resample_isotropic(np.asarray(img.dataobj), img.affine, spacing_mm, order=order)
    return Volume(data=data, affine=affine)


def back_to_input_grid(prob_canonical: np.ndarray, canonical_affine: np.ndarray, shape_ijk, affine: np.ndarray) -> np.ndarray:
    """Sample a canonical-grid volume at the world position of every voxel of (shape_ijk, affine)."""
    world = np.moveaxis(world_grid(shape_ijk, affine), 0, -1)
    coords = world_to_voxel(world, canonical_affine)
    return ndimage.map_coordinates(prob_canonical, np.moveaxis(coords, -1, 0), order=1, mode="constant", cval=0.0)


def predict_volume(model, image_path: str | Path, axis: int, slice_idx: int, out_path: str | Path, *,
                   mask_png: str | Path | None = None, label_path: str | Path | None = None, class_id: int | None = None,
                   spacing_mm: float = 3.0, crop_size: int = 256, sampler=None, seed: int = 0,
                   probability_path: str | Path | None = None, mesh_path: str | Path | None = None,
                   device: str = "cpu") -> dict:
    """Write the predicted mask (uint8 NIfTI on the input's grid); optionally probabilities and a mesh."""
    if axis not in (0, 1, 2):
        raise InputError(f"--axis must be 0, 1 or 2 (got {axis})")
    image = load_volume(image_path, "image", canonical=False)
    if not 0 <= slice_idx < image.data.shape[axis]:
        raise InputError(f"--slice_idx {slice_idx} is outside the image's {image.data.shape[axis]} slices along axis {axis}")
    plane_shape = tuple(n for a, n in enumerate(image.data.shape) if a != axis)
    if label_path is not None:
        if class_id is None:
            raise InputError("--label needs --class (the label value to reconstruct)")
        label = load_volume(label_path, "label", canonical=False)
        if label.data.shape != image.data.shape or not np.allclose(label.affine, image.affine, atol=1e-3):
            raise InputError(f"{label_path}: label grid does not match the image grid")
        mask_plane = take_slice(label.data, axis, slice_idx) == class_id
    elif mask_png is not None:
        mask_plane = _mask_from_png(Path(mask_png), plane_shape)
    else:
        raise InputError("give the structure's mask: --mask slice-mask.png, or --label case-label.nii.gz --class N")
    if not mask_plane.any():
        raise InputError(f"the mask is empty on slice {slice_idx} along axis {axis}")

    canon_image = canonical_resampled(image, spacing_mm, order=1)
    shape = canon_image.data.shape
    expected = model.cfg.occupancy_resolution
    if shape != (expected,) * 3:
        raise InputError(f"{image_path}: at {spacing_mm} mm the volume is {shape}; the model predicts a "
                         f"{expected}^3 grid: crop the scan around the heart to {expected}^3 voxels of {spacing_mm} mm "
                         f"(as the training data)")
    # The stored array axis becomes canonical axis ornt[axis, 0]; the canonical slice is the one through
    # the stored slice's centre, and its mask samples the stored mask plane (nearest pixel in-plane).
    canon_axis = int(nib.io_orientation(image.affine)[axis, 0])
    centre = np.array([(n - 1) / 2 for n in image.data.shape], dtype=np.float64)
    centre[axis] = slice_idx
    canon_slice = int(np.clip(np.rint(world_to_voxel(voxel_to_world(centre, image.affine), canon_image.affine)[canon_axis]),
                              0, shape[canon_axis] - 1))
    points_world = take_slice(world_grid(shape, canon_image.affine), canon_axis, canon_slice, leading=1)
    stored = world_to_voxel(np.moveaxis(points_world, 0, -1), image.affine)  # (H, W, 3) stored voxel coords
    in_plane = np.moveaxis(np.delete(stored, axis, axis=-1), -1, 0)
    mask_canon = ndimage.map_coordinates(mask_plane.astype(np.float32), in_plane, order=0, mode="constant", cval=0.0)
    if not mask_canon.any():
        raise InputError("the mask does not reach any pixel of the model's grid (too small for its spacing)")
    image3 = torch.from_numpy(take_slice(window_ct(canon_image.data), canon_axis, canon_slice, leading=1).copy())
    mask2d = torch.from_numpy((mask_canon > 0.5).astype(np.float32))[None]
    points = torch.from_numpy(np.ascontiguousarray(points_world, dtype=np.float32))
    inputs = condition_inputs(image3, mask2d, points, canon_image.affine, shape, crop_size)
    batch = {k: v[None].to(device) for k, v in inputs.items() if k in
             ("image", "rgb_image", "mask", "rgb_image_mask", "pointmap", "rgb_pointmap")}
    with torch.no_grad():
        logits = model.reconstruct(batch, seed=seed, sampler=sampler)
    prob_canonical = torch.sigmoid(logits[0, 0].float()).cpu().numpy()

    prob = back_to_input_grid(prob_canonical, canon_image.affine, image.data.shape, image.affine)
    save_volume(out_path, (prob >= 0.5).astype(np.uint8), image.affine, dtype=np.uint8)
    written = {"mask": str(out_path)}
    if probability_path:
        save_volume(probability_path, prob.astype(np.float32), image.affine, dtype=np.float32)
        written["probability"] = str(probability_path)
    if mesh_path:
        mesh = mask_surface_mesh((0.5 - prob_canonical).astype(np.float32), canon_image.affine)
        if mesh is None:
            raise InputError("the prediction is empty: no surface to write")
        with atomic_path(mesh_path) as tmp:
            mesh.export(str(tmp), file_type=Path(mesh_path).suffix.lstrip(".") or "obj")
        written["mesh"] = str(mesh_path)
    written.update(voxels=int((prob >= 0.5).sum()), canonical_slice=(canon_axis, canon_slice),
                   volume_ml=float((prob >= 0.5).sum() * np.prod(voxel_spacing_mm(image.affine)) / 1000.0))
    return written

