"""A 2-D image (PNG) and a mask PNG -> the reconstructed 3-D shape (``visualize_finetuned.py``).

A PNG has no world geometry, so the geometry is assumed and said:
- each PNG pixel is ``pixel_spacing_mm`` square (default: the model's voxel size, so one pixel is
  one voxel of the training grid);
- the image is a slice along array ``axis`` (default 2: axial) through the centre of the model's
  grid (RAS+, ``spacing_mm`` voxels, centred on the world origin), in display orientation
  (``viz.slices.to_display``: anterior/superior at the top, the patient's right on the right), as
  ``sam3d-med export-slice`` writes it and every figure of the tool shows slices;
- the PNG's centre is the grid's centre; the image is resampled onto the grid (linear; mask nearest).
Intensities: an RGB PNG whose channels differ is taken as the three CT windows the model uses
(what ``export-slice`` writes); a grey PNG is taken as one CT window (``png_window`` level, width in
HU, default the soft-tissue window 40/400), converted back to HU and windowed like the training data.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import ndimage

from ..data.input_slices import InputSlices
from ..data.geometry import canonical_resampled, take_slice
from ..data.preprocess import CT_WINDOWS, window_ct
from ..data.surfaces import voxel_volume_mm3
from ..errors import InputError
from ..eval.predict import (canonical_slice, load_matching_label, reconstruct_logits,
                            slice_model_inputs, surface_of_logits, write_mesh)
from ..io.atomic import atomic_path, atomic_write_json
from ..io.nifti import load_volume, save_volume
from ..io.png import from_display, read_mask_png, to_display
from .palette import class_colour, rgba_of_labels
from .render import mesh_views_figure
from .slices import comparison_figure, draw_slice, save_figure

SOFT_TISSUE_WINDOW = CT_WINDOWS[0]


def read_image_png(path: Path, png_window: tuple[float, float] = SOFT_TISSUE_WINDOW) -> tuple[np.ndarray, str]:
    """PNG -> ((3, H, W) CT windows in [0, 1], how the intensities were read)."""
    try:
        pixels = np.asarray(mpimg.imread(str(path)), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({type(exc).__name__})") from None
    if pixels.ndim == 3 and pixels.shape[-1] >= 3 and np.abs(pixels[..., :3] - pixels[..., :1]).max() > 1.5 / 255:
        return np.moveaxis(pixels[..., :3], -1, 0).copy(), "RGB channels read as the model's three CT windows"
    grey = pixels if pixels.ndim == 2 else pixels[..., 0]
    level, width = png_window
    hu = level - width / 2.0 + grey * width
    return window_ct(hu), f"grey read as CT window level {level:g} / width {width:g} HU"


def assumed_frame(resolution: int, spacing_mm: float) -> np.ndarray:
    """Affine of the assumed grid: RAS+, isotropic ``spacing_mm``, centred on the world origin."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -(resolution - 1) / 2.0 * spacing_mm
    return affine


def _onto_grid(plane: np.ndarray, resolution: int, spacing_mm: float, pixel_mm: float, order: int) -> np.ndarray:
    """[H, W] PNG plane -> [R, R] on the grid's in-plane pixels (centres aligned, outside = 0)."""
    offsets_mm = (np.arange(resolution) - (resolution - 1) / 2.0) * spacing_mm
    rows = offsets_mm / pixel_mm + (plane.shape[0] - 1) / 2.0
    cols = offsets_mm / pixel_mm + (plane.shape[1] - 1) / 2.0
    coords = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    return ndimage.map_coordinates(plane.astype(np.float32), coords, order=order, mode="constant", cval=0.0)


def reconstruct_from_png(model, image_png: str | Path, mask_png: str | Path, out_dir: str | Path, *,
                         pixel_spacing_mm: float | None = None, spacing_mm: float = 3.0, axis: int = 2,
                         png_window: tuple[float, float] = SOFT_TISSUE_WINDOW, crop_size: int = 256, sampler=None,
                         seed: int = 0, device: str = "cpu", name: str | None = None, frame: str = "object",
                         input_slice: bool = True, pose_fit: bool = True) -> dict:
    """Reconstruct the masked structure and write ``reconstruction.obj`` (mm, assumed frame),
    ``reconstruction.nii.gz``, ``input_overlay.png``, ``mesh_views.png``, ``prediction_slices.png``
    and ``summary.json`` (with the assumptions) into ``out_dir``. Returns the summary."""
    image_png, mask_png, out_dir = Path(image_png), Path(mask_png), Path(out_dir)
    if axis not in (0, 1, 2):
        raise InputError("must be 0, 1 or 2", parameter="axis", value=axis)
    resolution = model.cfg.occupancy_resolution
    pixel_mm = float(pixel_spacing_mm or spacing_mm)
    if pixel_mm <= 0:
        raise InputError("must be positive (mm)", parameter="pixel_spacing_mm", value=pixel_spacing_mm)
    windows_display, intensity_note = read_image_png(image_png, png_window)
    mask_display = read_mask_png(mask_png, windows_display.shape[1:])
    if not mask_display.any():
        raise InputError(f"{mask_png}: the mask is empty")
    # display orientation -> the grid's [p, q] plane
    windows = np.stack([from_display(w) for w in windows_display])
    mask = from_display(mask_display)
    mask_grid = _onto_grid(mask, resolution, spacing_mm, pixel_mm, order=0) > 0.5
    if not mask_grid.any():
        raise InputError(f"{mask_png}: at {pixel_mm:g} mm per pixel the mask covers no {spacing_mm:g} mm voxel of the "
                         f"model's grid (or lies outside it): give the true pixel size with --pixel_spacing")
    if mask_grid.sum() * spacing_mm**2 < 0.9 * mask.sum() * pixel_mm**2 - spacing_mm**2:
        raise InputError(f"{mask_png}: at {pixel_mm:g} mm per pixel the mask reaches beyond the model's "
                         f"{resolution * spacing_mm:g} mm field of view (or is smaller than one {spacing_mm:g} mm voxel): "
                         f"give the true pixel size with --pixel_spacing")
    image_grid = np.stack([_onto_grid(w, resolution, spacing_mm, pixel_mm, order=1) for w in windows])

    shape, index = (resolution,) * 3, resolution // 2
    affine = assumed_frame(resolution, spacing_mm)
    inputs = slice_model_inputs(image_grid, mask_grid, affine, shape, axis, index, crop_size, frame)
    reconstruction = reconstruct_logits(model, [inputs], shape, affine, frame=frame, seed=seed, sampler=sampler,
                                        device=device, input_slices=[InputSlices.one(axis, index, mask_grid)] if input_slice else None,
                                        pose_fit=pose_fit)[0]
    predicted = reconstruction.logits > 0
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or mask_png.stem
    assumption = (f"assumed geometry (a PNG has none): {pixel_mm:g} mm pixels, a slice along axis {axis} through the "
                  f"centre of a {resolution}^3 grid of {spacing_mm:g} mm voxels; {intensity_note}")
    summary = {"image": str(image_png), "mask": str(mask_png), "assumption": assumption,
               "pixel_spacing_mm": pixel_mm, "grid": {"resolution": resolution, "spacing_mm": spacing_mm,
                                                      "axis": axis, "slice_idx": index, "affine": affine.tolist()},
               "predicted_voxels": int(predicted.sum()),
               "predicted_volume_ml": voxel_volume_mm3(predicted, affine) / 1000.0, "files": {}}

    files = summary["files"]
    save_volume(out_dir / "reconstruction.nii.gz", predicted.astype(np.uint8), affine, dtype=np.uint8)
    files["volume"] = str(out_dir / "reconstruction.nii.gz")
    mesh = surface_of_logits(reconstruction.surface_logits, reconstruction.surface_affine) if predicted.any() else None
    if mesh is not None:  # the p = 0.5 surface of the map the NIfTI holds (eval.predict.surface_map)
        write_mesh(mesh, out_dir / "reconstruction.obj")
        files["mesh"] = str(out_dir / "reconstruction.obj")
    else:  # nothing predicted: no surface, and none from an earlier run left to describe another prediction
        (out_dir / "reconstruction.obj").unlink(missing_ok=True)
    label = 1
    colour = class_colour(label)

    fig = Figure(figsize=(9.5, 5.2))
    left, right = fig.subplots(1, 2)
    left.imshow(windows_display[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")  # the soft-tissue window
    left.imshow(rgba_of_labels(mask_display.astype(np.uint8) * label, 0.45), interpolation="nearest")
    left.contour(mask_display, levels=[0.5], colors=[colour], linewidths=1.0)
    left.set_title(f"{image_png.name} + {mask_png.name}\n({mask_display.shape[0]}x{mask_display.shape[1]} px, "
                   f"display orientation)", fontsize=9)
    left.set_xticks([])
    left.set_yticks([])
    volume_image = np.full(shape, np.nan, dtype=np.float32)
    volume_labels = np.zeros(shape, dtype=np.uint8)
    take_slice(volume_image, axis, index)[...] = image_grid[0]  # views: these write into the volumes
    take_slice(volume_labels, axis, index)[...] = mask_grid * label
    draw_slice(right, volume_image, affine, axis, index, labels_ijk=volume_labels)
    right.set_title(f"as the model sees it: {resolution}x{resolution} px of {spacing_mm:g} mm", fontsize=9)
    fig.suptitle(assumption, fontsize=8, wrap=True)
    files["overlay"] = str(save_figure(fig, out_dir / "input_overlay.png"))

    meshes = [(mesh, colour)] if mesh is not None else []
    fig = mesh_views_figure([("reconstruction", meshes)], title=f"{name}: {summary['predicted_volume_ml']:.1f} ml",
                            legend=[Patch(facecolor=colour, label=name)])
    files["renders"] = str(save_figure(fig, out_dir / "mesh_views.png"))
    fig = comparison_figure(volume_image, affine, predicted.astype(np.uint8) * label, {label: name},
                            input_slice=(axis, index), title=f"{name}: reconstruction on slices of the assumed grid "
                                                             "(image known on the input slice only)")
    files["slices"] = str(save_figure(fig, out_dir / "prediction_slices.png"))
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def export_slice_png(image_path: str | Path, label_path: str | Path, axis: int, slice_idx: int, out_dir: str | Path,
                     class_names: dict[int, str], spacing_mm: float = 3.0) -> dict:
    """A slice of a scan as the PNG inputs of ``visualize_finetuned.py``: ``image.png`` (RGB = the
    model's three CT windows) and ``masks/<NN>_<class>.png`` (one per class on the slice, sorted by
    label value). ``axis``/``slice_idx`` index the file as stored (as ``predict`` and ``visualize
    comparison``); the PNGs show that slice on the model's grid (RAS+, ``spacing_mm`` pixels) in
    display orientation: the frame ``reconstruct_from_png`` assumes."""
    out_dir = Path(out_dir)
    image = load_volume(image_path, "image", canonical=False)
    label = load_matching_label(label_path, image)
    view = canonical_slice(image, axis, slice_idx, spacing_mm)
    canon_label = np.rint(canonical_resampled(label, spacing_mm, order=0).data).astype(np.int64)
    windows = np.stack([to_display(w) for w in window_ct(take_slice(view.image.data, view.axis, view.index))])
    labels = to_display(take_slice(canon_label, view.axis, view.index))
    present = [c for c in sorted(class_names) if (labels == c).any()]
    if not present:
        raise InputError(f"{label_path}: no labelled structure on slice {slice_idx} along axis {axis}")
    written = {"image": out_dir / "image.png", "masks": []}
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    with atomic_path(written["image"]) as tmp:
        mpimg.imsave(tmp, np.moveaxis(windows, 0, -1), format="png")
    for c in present:
        path = out_dir / "masks" / f"{c:02d}_{class_names[c]}.png"
        with atomic_path(path) as tmp:
            mpimg.imsave(tmp, (labels == c).astype(np.float32), cmap="gray", vmin=0, vmax=1, format="png")
        written["masks"].append(path)
    return written
