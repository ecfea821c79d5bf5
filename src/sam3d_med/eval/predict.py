"""Prediction for users: one slice of a NIfTI scan + a mask -> 3-D structure as NIfTI on the scan's grid.

Geometry, step by step:
1. The scan (and a label volume, when the mask comes from one) are read as stored; the requested
   slice is ``slice_idx`` along array ``axis`` **of the file as stored** (what a viewer shows).
2. The image follows preprocessing: RAS+ canonical order, resampling to the model's spacing. The
   conditioning slice is the canonical slice through the world position of the stored slice's
   centre; a mask from a label volume samples the stored slice at each canonical pixel's in-plane
   position (nearest pixel). A PNG mask is given on the canonical slice itself, in display
   orientation, as every PNG of the tool (``export-slice`` writes them; ``viz.slices.to_display``).
3. The model's inputs are built from that slice exactly as in training (``condition_inputs``).
4. The reconstruction is brought onto the canonical grid: in the object frame the predicted shape
   (its own cube) is placed by the predicted pose (``model.placement``), any grid size; in the volume
   frame the decoded grid is a 64^3 window of the canonical grid (``volume_frame_view``: the whole
   grid for a 64^3 crop; otherwise placed around the labelled structures as in training, or around
   the input mask when only a mask is given), padded with air beyond the scan. By default the input
   plane is then set to the input mask (``impose_input_slices``): that slice is given, not predicted.
5. The probability is sampled back at the world position of every voxel of the scan's own grid
   (linear interpolation), so the output NIfTI has the scan's shape, affine and orientation and
   overlays it in 3D Slicer / ITK-SNAP. The mask is probability >= 0.5.
6. The surface mesh (world mm, outward normals) is extracted in the object cube (finer than the scan
   for a small structure) and mapped to world mm by the pose; for the mean of several draws on a grid
   3 x finer than the scan's around the structure; in the volume frame on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage, special

from ..data.crop import AIR_HU
from ..data.dataset import condition_inputs, condition_inputs_of_slices
from ..data.geometry import (bounding_box, canonical_resampled, take_slice, voxel_to_world, world_grid,
                             world_to_voxel)
from ..data.preprocess import window_ct
from ..data.volume_window import VolumeWindow, window_around, window_around_plane
from ..data.surfaces import mask_surface_mesh, mesh_obj_text, voxel_volume_mm3
from ..errors import InputError
from ..io.atomic import atomic_path, atomic_write_text
from ..io.nifti import Volume, label_on_image_grid, load_volume, save_volume, voxel_spacing_mm
from ..preflight import absent_class_error
from ..data.frames import target_frame
from ..data.input_slices import STREAMS_OF_EXTRA_SLICES, InputSlice, InputSlices
from ..model.placement import (SLICE_LOGIT, grid_points_mm, impose_input_slices, mean_of_draws_at,
                               reconstruct_on_grid)
from ..io.png import from_display, read_mask_png


def back_to_input_grid(prob_canonical: np.ndarray, canonical_affine: np.ndarray, shape_ijk, affine: np.ndarray) -> np.ndarray:
    """Sample a canonical-grid volume at the world position of every voxel of (shape_ijk, affine)."""
    world = np.moveaxis(world_grid(shape_ijk, affine), 0, -1)
    coords = world_to_voxel(world, canonical_affine)
    return ndimage.map_coordinates(prob_canonical, np.moveaxis(coords, -1, 0), order=1, mode="constant", cval=0.0)


@dataclass
class CanonicalSlice:
    """A stored slice of a scan, seen on the model's grid (RAS+ canonical, isotropic).

    ``image`` is the canonical resampled scan (HU, [i, j, k]); ``axis``/``index`` the canonical slice
    through the stored slice's centre; ``stored_in_plane`` (2, H, W) the stored slice's in-plane
    voxel coordinates (first, second remaining stored axis) of every canonical pixel of that slice.
    """

    image: Volume
    axis: int
    index: int
    stored_in_plane: np.ndarray

    def mask_from_stored(self, mask_plane: np.ndarray) -> np.ndarray:
        """A stored-slice mask [h, w] sampled at every canonical pixel (nearest pixel) -> bool [H, W]."""
        sampled = ndimage.map_coordinates(np.asarray(mask_plane, dtype=np.float32), self.stored_in_plane, order=0,
                                          mode="constant", cval=0.0)
        return sampled > 0.5

    def mask_from_display_png(self, path: str | Path) -> np.ndarray:
        """A PNG mask of this slice in display orientation on the model's grid (the frame of every PNG
        of the tool: ``export-slice`` writes its masks so) -> bool [H, W] of the canonical slice."""
        plane_shape = take_slice(self.image.data, self.axis, self.index).shape
        display_hw = plane_shape[::-1]  # ``to_display``: rows along the plane's second axis, flipped
        mask_display = read_mask_png(Path(path))
        if mask_display.shape != display_hw:
            raise InputError(f"{path}: mask is {mask_display.shape[0]}x{mask_display.shape[1]} pixels; this slice on the "
                             f"model's {voxel_spacing_mm(self.image.affine)[0]:g} mm grid is {display_hw[0]}x{display_hw[1]} "
                             f"in display orientation (`sam3d-med export-slice` writes the image and masks in that "
                             f"frame; or give --label with a label volume)")
        return from_display(mask_display)

    def windowed(self, window: VolumeWindow) -> "CanonicalSlice":
        """This slice seen through a volume-frame window of the canonical grid (``data.volume_window``)."""
        index = window.slice_index(self.axis, self.index)
        if index is None:
            raise InputError("the input slice lies outside the volume frame's window around the labelled structures")
        image = Volume(data=window.take(self.image.data, AIR_HU), affine=window.affine(self.image.affine))
        # pixels of the window beyond the scan have no stored pixel: coordinates far outside it
        return CanonicalSlice(image, self.axis, index, window.take_plane(self.stored_in_plane, self.axis, -1.0e6))


def model_inputs_of_slices(views: list[CanonicalSlice], masks: list[np.ndarray], crop_size: int, frame,
                           extra_slice_streams: str | None) -> dict:
    """The model's inputs from slices of one canonical grid (the first is the primary one) with their
    canonical masks [H, W] (``dataset.condition_inputs_of_slices``: one normalisation for all)."""
    windows = window_ct(views[0].image.data)
    world = world_grid(views[0].image.data.shape, views[0].image.affine)
    slices = [(torch.from_numpy(np.ascontiguousarray(take_slice(windows, v.axis, v.index, leading=1), dtype=np.float32)),
               torch.from_numpy(np.asarray(m, dtype=np.float32))[None],
               torch.from_numpy(np.ascontiguousarray(take_slice(world, v.axis, v.index, leading=1), dtype=np.float32)))
              for v, m in zip(views, masks)]
    return condition_inputs_of_slices(slices, views[0].image.affine, tuple(views[0].image.data.shape), crop_size,
                                      frame=frame, extra_streams=None if extra_slice_streams is None
                                      else STREAMS_OF_EXTRA_SLICES[extra_slice_streams])


def slice_model_inputs(image3_plane: np.ndarray, mask_plane: np.ndarray, affine: np.ndarray, shape_ijk, axis: int,
                       index: int, crop_size: int, frame: str) -> dict:
    """``condition_inputs`` of slice ``index`` along ``axis`` of a grid (``shape_ijk``, ``affine``):
    ``image3_plane`` (3, H, W) CT windows in [0, 1], ``mask_plane`` [H, W]; the pointmap is the world
    position (mm) of every pixel's voxel centre, as in the cache."""
    points = take_slice(world_grid(shape_ijk, affine), axis, index, leading=1)
    return condition_inputs(torch.from_numpy(np.ascontiguousarray(image3_plane, dtype=np.float32)),
                            torch.from_numpy(np.asarray(mask_plane, dtype=np.float32))[None],
                            torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), affine, tuple(shape_ijk),
                            crop_size, frame=frame)


def canonical_slice(image: Volume, axis: int, slice_idx: int, spacing_mm: float,
                    canonical: Volume | None = None) -> CanonicalSlice:
    """The stored slice ``slice_idx`` along stored ``axis`` on the model's grid (see module doc);
    ``canonical``: the image on that grid already (another slice's ``image``), not resampled again."""
    if axis not in (0, 1, 2):
        raise InputError("must be 0, 1 or 2", parameter="axis", value=axis)
    if not 0 <= slice_idx < image.data.shape[axis]:
        raise InputError(f"is outside the image's {image.data.shape[axis]} slices along axis {axis}",
                         parameter="slice_idx", value=slice_idx)
    canon_image = canonical if canonical is not None else canonical_resampled(image, spacing_mm, order=1)
    shape = canon_image.data.shape
    # The stored array axis becomes canonical axis ornt[axis, 0]; the canonical slice is the one through
    # the stored slice's centre.
    canon_axis = int(nib.io_orientation(image.affine)[axis, 0])
    centre = np.array([(n - 1) / 2 for n in image.data.shape], dtype=np.float64)
    centre[axis] = slice_idx
    index = int(np.clip(np.rint(world_to_voxel(voxel_to_world(centre, image.affine), canon_image.affine)[canon_axis]),
                        0, shape[canon_axis] - 1))
    points_world = take_slice(world_grid(shape, canon_image.affine), canon_axis, index, leading=1)
    stored = world_to_voxel(np.moveaxis(points_world, 0, -1), image.affine)  # (H, W, 3) stored voxel coords
    return CanonicalSlice(canon_image, canon_axis, index, np.moveaxis(np.delete(stored, axis, axis=-1), -1, 0))


def volume_frame_view(view: CanonicalSlice, masks_canonical: list[np.ndarray], side: int,
                      labels_canonical: np.ndarray | None = None
                      ) -> tuple[CanonicalSlice, list[np.ndarray], VolumeWindow]:
    """Volume frame: the slice and its masks ([H, W] on the canonical grid) seen through the model's
    ``side``^3 window, placed as in training around all labelled structures when a label volume is
    given (``labels_canonical`` [i, j, k] on the canonical grid), otherwise around the input masks
    (their in-plane box; through the plane, centred on the slice: all a mask tells). The result's
    grid is the window's (returned too); ``back_to_input_grid`` maps it back by world position."""
    shape = view.image.data.shape
    if labels_canonical is not None and (labels_canonical > 0).any():
        window = window_around(labels_canonical > 0, side, "the labelled structures")
    else:
        window = window_around_plane(np.any(masks_canonical, axis=0), view.axis, view.index, shape, side)
    return view.windowed(window), [window.take_plane(m, view.axis, False) for m in masks_canonical], window


@dataclass
class Reconstruction:
    """One reconstruction on a grid, and the same probability map on a finer grid for its surface."""

    logits: np.ndarray  # [i, j, k] on the grid it was asked for (the input plane set to the mask when given)
    surface_logits: np.ndarray  # the same map on ``finer_surface_grid`` around the structure: equal to ``logits``
    # at every grid voxel centre, the model's own finer values between them, the input plane's constraint and the
    # grid's field of view kept; nothing predicted: ``logits`` itself
    surface_affine: np.ndarray  # (4, 4): index of ``surface_logits`` -> world mm


SURFACE_SUPERSAMPLING = 3  # the mean of several draws is meshed on a grid this much finer than the scan's
SURFACE_MARGIN_VOXELS = 2  # that grid covers the predicted structure's box on the scan grid grown by this


def surface_box(logits_ijk: np.ndarray) -> tuple[slice, ...] | None:
    """The box of ``logits_ijk`` > 0 grown by ``SURFACE_MARGIN_VOXELS`` (within the grid), None if empty."""
    inside = np.asarray(logits_ijk) > 0
    return bounding_box(inside, margin=SURFACE_MARGIN_VOXELS) if inside.any() else None


def finer_surface_grid(logits_ijk: np.ndarray, affine: np.ndarray, factor: int = SURFACE_SUPERSAMPLING):
    """The grid on which the mean of several object-frame draws is meshed: the box of ``logits_ijk``
    > 0 on the scan grid (``affine``: index -> world mm), grown by ``SURFACE_MARGIN_VOXELS``, with
    ``factor`` x finer voxels in the same orientation; each scan voxel centre i is the fine voxel
    centre factor * (i - lo) + (factor - 1) / 2 (odd ``factor``). Returns (shape, affine) or None
    (nothing predicted)."""
    box = surface_box(logits_ijk)
    if box is None:
        return None
    lo = np.array([b.start for b in box], dtype=np.float64)
    to_scan_index = np.eye(4)  # fine index f -> scan index lo - 1/2 + (f + 1/2) / factor
    to_scan_index[:3, :3] /= factor
    to_scan_index[:3, 3] = lo - 0.5 + 0.5 / factor
    return tuple((b.stop - b.start) * factor for b in box), np.asarray(affine, dtype=np.float64) @ to_scan_index


def reconstruct_logits(model, inputs: list[dict], shape_ijk, affine: np.ndarray, *, frame: str, seed: int = 0,
                       sampler=None, device: str = "cpu", batch_size: int = 8,
                       input_slices: Sequence[InputSlices] | None = None,
                       pose_fit: bool = True) -> list[Reconstruction]:
    """N ``condition_inputs`` -> N reconstructions on the grid (``shape_ijk``, ``affine``), in batches.

    ``input_slices``: per input, its slices on that grid; given, the pose is fitted to them unless
    ``pose_fit`` is off (object frame, ``fit_pose_to_input_slices``) and the prediction on each of
    their planes is set to its mask (``impose_input_slices``)."""
    frame = target_frame(frame)
    points = frame.grid_points(shape_ijk, affine, device)
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        batch = {k: torch.stack([item[k] for item in chunk]).to(device) for k in chunk[0]}
        given = list(input_slices[start:start + batch_size]) if input_slices is not None else None
        with torch.no_grad():
            result = reconstruct_on_grid(model, batch, frame, points, seed=seed, sampler=sampler,
                                         input_slices=given if pose_fit else None)
            logits = result.logits
            if given is not None:
                logits = impose_input_slices(logits, given)
        logits = logits.float().cpu().numpy()
        for b in range(logits.shape[0]):
            out.append(Reconstruction(logits[b], *surface_map(result, b, logits[b], affine,
                                                              None if given is None else given[b], device)))
    return out


def surface_map(result, sample: int, grid_logits: np.ndarray, affine: np.ndarray, slices: InputSlices | None = None,
                device: str = "cpu"):
    """(logits, affine) of ``grid_logits``' probability map on ``finer_surface_grid``: where the model has
    finer values (object frame: its cube(s) placed by their poses, ``mean_of_draws_at``) those, else the
    grid's own map interpolated (volume frame); then what the grid map was given: each input plane's
    cells (those nearest a voxel of that plane) set to its mask as ``impose_input_slices`` set the
    grid. Every grid voxel centre is a fine cell centre with the grid's value, so the p = 0.5 surface
    is the NIfTI's, with sub-voxel detail, inside the grid's field of view. Nothing predicted on the
    grid: the grid itself (no surface)."""
    fine_grid = finer_surface_grid(grid_logits, affine)
    if fine_grid is None:
        return grid_logits, np.asarray(affine, dtype=np.float64)
    shape, fine_affine = fine_grid
    factor = SURFACE_SUPERSAMPLING
    lo = [b.start for b in surface_box(grid_logits)]  # fine cell f lies in grid voxel lo + f // factor
    draws = result.draws or ([result] if result.cube_logits is not None else None)
    if draws:
        fine = mean_of_draws_at(draws, sample, grid_points_mm(shape, fine_affine, device)).float().cpu().numpy()
    else:  # the grid's map between its voxel centres: trilinear, as the NIfTI on another grid samples it
        coords = np.meshgrid(*[lo[a] - 0.5 + (np.arange(n) + 0.5) / factor for a, n in enumerate(shape)], indexing="ij")
        probability = ndimage.map_coordinates(special.expit(grid_logits.astype(np.float64)), coords, order=1,
                                              mode="nearest")
        fine = special.logit(np.clip(probability, 1e-6, 1 - 1e-6)).astype(np.float32)
    for given in slices or ():
        axis, index, mask = given.axis, given.index, np.asarray(given.mask) > 0.5
        offset = index - lo[axis]
        if 0 <= offset * factor < shape[axis]:
            others = [a for a in range(3) if a != axis]
            rows = lo[others[0]] + np.arange(shape[others[0]]) // factor
            cols = lo[others[1]] + np.arange(shape[others[1]]) // factor
            values = np.where(np.asarray(mask)[np.ix_(rows, cols)], SLICE_LOGIT, -SLICE_LOGIT).astype(fine.dtype)
            layers = slice(offset * factor, (offset + 1) * factor)
            np.moveaxis(fine, axis, 0)[layers] = values[None]
    return fine, fine_affine


def surface_of_logits(logits_ijk: np.ndarray, affine: np.ndarray):
    """Surface (world mm) of the logit-0 level (p = 0.5) of an [i, j, k] logit volume; None if empty."""
    return mask_surface_mesh((-np.asarray(logits_ijk)).astype(np.float32), affine)


def write_mesh(mesh, path: str | Path) -> None:
    """Write a mesh atomically: .obj with the cache's OBJ writer, other formats through trimesh."""
    file_type = Path(path).suffix.lstrip(".").lower() or "obj"
    if file_type == "obj":
        atomic_write_text(path, mesh_obj_text(mesh))
        return
    with atomic_path(path) as tmp:
        mesh.export(str(tmp), file_type=file_type)


def predict_volume(model, image_path: str | Path, axis: int, slice_idx: int, out_path: str | Path, *,
                   mask_png: str | Path | None = None, label_path: str | Path | None = None, class_id: int | None = None,
                   spacing_mm: float = 3.0, crop_size: int = 256, sampler=None, seed: int = 0,
                   probability_path: str | Path | None = None, mesh_path: str | Path | None = None,
                   device: str = "cpu", frame: str = "object", input_slice: bool = True, pose_fit: bool = True,
                   further_slices: Sequence[tuple[int, int]] = (), extra_slice_streams: str = "all") -> dict:
    """Write the predicted mask (uint8 NIfTI on the input's grid); optionally probabilities and a mesh.
    ``input_slice``: the prediction on the input plane is the input mask (module doc, step 4). An
    empty prediction still writes the NIfTI outputs (no mesh) and returns a ``warning``."""
    image = load_volume(image_path, "image", canonical=False)
    view = canonical_slice(image, axis, slice_idx, spacing_mm)
    if label_path is not None:
        if class_id is None:
            raise InputError("{label_path} needs {class_id} (the label value to reconstruct)")
        label = load_matching_label(label_path, image)
        absent = absent_class_error(class_id, label_path, label.data)
        if absent is not None:
            raise absent
        present = label.data == class_id
        mask_plane = take_slice(present, axis, slice_idx)
        if not mask_plane.any():
            where = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
            raise InputError(f"is not on slice {slice_idx} along axis {axis}: it occurs on slices "
                             f"{where.min()}..{where.max()} along that axis (largest: "
                             f"{int(np.argmax(np.moveaxis(present, axis, 0).sum(axis=(1, 2))))})",
                             parameter="class_id", value=class_id)
        mask_canon = view.mask_from_stored(mask_plane)
    elif mask_png is not None:
        mask_canon = view.mask_from_display_png(mask_png)
        if not mask_canon.any():
            raise InputError(f"{mask_png}: the mask is empty")
    else:
        raise InputError("give the structure's mask: {mask_png} slice-mask.png, or {label_path} case-label.nii.gz "
                         "{class_id} N")
    if not mask_canon.any():
        raise InputError("the mask does not reach any pixel of the model's grid (too small for its spacing)")
    views, masks = [view], [mask_canon]
    if further_slices:  # (stored axis, index) of each further slice: its mask from the label volume
        if label_path is None or not target_frame(frame).several_slices:
            raise InputError("several input slices need {label_path} and {class_id} (each slice's mask is read from the "
                             f"labels) and a model of the object frame (this one: {target_frame(frame)})")
        for a, i in further_slices:
            further = canonical_slice(image, a, i, spacing_mm, canonical=view.image)
            plane = take_slice(present, a, i)
            if not plane.any():
                raise InputError(f"is not on slice {i} along axis {a} (a further input slice)", parameter="class_id",
                                 value=class_id)
            views.append(further)
            masks.append(further.mask_from_stored(plane))
    if target_frame(frame).windowed:  # the model's n^3 window of the grid
        labels_canonical = None if label_path is None else canonical_resampled(label, spacing_mm, order=0).data
        view, (mask_canon,), _ = volume_frame_view(view, [mask_canon], model.cfg.occupancy_resolution, labels_canonical)
        views, masks = [view], [mask_canon]
    try:
        given = InputSlices(tuple(InputSlice(v.axis, v.index, m) for v, m in zip(views, masks)))
    except ValueError as exc:  # two slices that are one plane of the model's grid
        raise InputError(f"input slices: {exc} (on the model's {spacing_mm:g} mm grid)") from None
    inputs = model_inputs_of_slices(views, masks, crop_size, frame, extra_slice_streams if len(views) > 1 else None)
    reconstruction = reconstruct_logits(
        model, [inputs], view.image.data.shape, view.image.affine, frame=frame, seed=seed, sampler=sampler,
        device=device, input_slices=[given] if input_slice else None, pose_fit=pose_fit)[0]
    prob_canonical = special.expit(reconstruction.logits.astype(np.float64))

    prob = back_to_input_grid(prob_canonical, view.image.affine, image.data.shape, image.affine)
    predicted = prob >= 0.5
    # the input's own sform and qform (io.nifti: every viewer puts the output where it puts the input)
    save_volume(out_path, predicted.astype(np.uint8), image.affine, dtype=np.uint8, like=image)
    written = {"mask": str(out_path), "input_slices": [[axis, slice_idx], *[[a, i] for a, i in further_slices]]}
    if probability_path:
        save_volume(probability_path, prob.astype(np.float32), image.affine, dtype=np.float32, like=image)
        written["probability"] = str(probability_path)
    # An empty prediction is a result, not an error: the NIfTI outputs are written either way, no mesh
    # (there is no surface; a mesh left by an earlier run at that path is removed, so that nothing on
    # disk describes another prediction), the caller warns, and the status is success. The mesh is the
    # p = 0.5 surface of the map the NIfTI holds (``surface_map``).
    mesh = surface_of_logits(reconstruction.surface_logits, reconstruction.surface_affine) \
        if mesh_path and predicted.any() else None
    if mesh is not None:
        write_mesh(mesh, mesh_path)
        written["mesh"] = str(mesh_path)
    elif mesh_path and Path(mesh_path).exists():
        Path(mesh_path).unlink()
        written["removed"] = str(mesh_path)
    if not predicted.any():
        written["warning"] = ("the prediction is empty (no voxel reaches p = 0.5)"
                              + ("; no mesh written" if mesh_path else ""))
    written.update(voxels=int(predicted.sum()), canonical_slice=(view.axis, view.index),
                   volume_ml=voxel_volume_mm3(predicted, image.affine) / 1000.0)
    return written


def load_matching_label(label_path: str | Path, image: Volume) -> Volume:
    """A label volume on the image's stored grid: its voxels must coincide with the image's in the world, in
    any voxel order (``io.nifti.label_on_image_grid``, the rule of every command)."""
    return label_on_image_grid(load_volume(label_path, "label", canonical=False), image, label_path)
