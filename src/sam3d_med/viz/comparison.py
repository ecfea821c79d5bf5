"""Prediction vs ground truth for one case: the comparison grid (PNG) and the surfaces.

Used by ``visualize_comparison.py`` (a NIfTI scan: grid + .obj surfaces), ``eval_medical.py
--save_viz`` (a cached test case: grid + compact volumes) and the HTML report (surfaces from those
volumes). Everything is on the model's grid (RAS+
canonical, isotropic): ``image_ijk`` display values in [0, 1] (NaN = no data), label arrays [i, j, k]
with label values, logits [i, j, k] per class, meshes in world mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.input_slices import InputSlice, InputSlices
from ..data.frames import target_frame
from ..data.dataset import cached_case_volumes
from ..data.geometry import canonical_resampled, take_slice
from ..data.preprocess import window_ct
from ..data.surfaces import mask_surface_mesh, signed_distance_mm
from ..errors import InputError
from ..eval.layout import case_figure_path, case_volumes_path
from ..eval.metrics import segmentation_metrics
from ..eval.predict import (canonical_slice, load_matching_label, model_inputs_of_slices, reconstruct_logits, surface_of_logits,
                            volume_frame_view, write_mesh)
from ..io.atomic import atomic_save_npz
from ..io.npz import read_npz
from ..io.nifti import load_volume, voxel_spacing_mm
from .slices import comparison_figure, labels_from_logits, save_figure


def mesh_path(mesh_dir: Path, stem: str, class_id: int, kind: str) -> Path:
    """``<stem>_class<c>_<kind>.obj`` with kind "pred" or "true"."""
    return Path(mesh_dir) / f"{stem}_class{class_id}_{kind}.obj"


def only_classes(labels_ijk: np.ndarray, classes) -> np.ndarray:
    """uint8 labels with every value outside ``classes`` set to background: a comparison covers the
    structures that were reconstructed, not the others (they were never asked for)."""
    labels = np.asarray(labels_ijk)
    return np.where(np.isin(labels, list(classes)), labels, 0).astype(np.uint8)


def case_surfaces(logits_by_class: dict[int, np.ndarray], affine: np.ndarray,
                  true_labels_ijk: np.ndarray | None = None,
                  predicted_surfaces: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[int, dict]:
    """{class: {"pred": mesh|None, "true": mesh|None}} in world mm: the logit-0 level of each class's
    prediction, and the boundary of its true voxels (None where there is no surface).
    ``predicted_surfaces``: per class (logits, affine) to extract the predicted surface from instead of
    the grid (the object cube, finer than the scan)."""
    spacing = voxel_spacing_mm(affine)
    surfaces = {}
    for c, logits in sorted(logits_by_class.items()):
        source = (predicted_surfaces or {}).get(c, (logits, affine))
        surfaces[c] = {"pred": surface_of_logits(*source)}
        if true_labels_ijk is not None:
            surfaces[c]["true"] = mask_surface_mesh(signed_distance_mm(true_labels_ijk == c, spacing), affine)
    return surfaces


def write_case_visuals(png_path: str | Path, mesh_dir: str | Path | None, stem: str, image_ijk: np.ndarray,
                       affine: np.ndarray, logits_by_class: dict[int, np.ndarray], class_names: dict[int, str], *,
                       true_labels_ijk: np.ndarray | None = None, input_slice: tuple[int, int] | None = None,
                       title: str = "", per_axis: int = 3,
                       predicted_surfaces: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """The comparison grid as PNG and, with ``mesh_dir``, per class the predicted (and true) surface
    as .obj in world mm. Returns {"figure": path, "meshes": {class: {"pred": path|None, "true": ...}}}."""
    pred_labels = labels_from_logits(logits_by_class)
    fig = comparison_figure(image_ijk, affine, pred_labels, class_names, true_labels_ijk=true_labels_ijk,
                            input_slice=input_slice, per_axis=per_axis, title=title)
    written = {"figure": str(save_figure(fig, png_path)), "meshes": {}}
    if mesh_dir is None:
        return written
    for c, surfaces in case_surfaces(logits_by_class, affine, true_labels_ijk, predicted_surfaces).items():
        written["meshes"][c] = {}
        for kind, mesh in surfaces.items():
            path = None
            if mesh is not None:  # an empty prediction has no surface: recorded as None, not a file
                path = mesh_path(Path(mesh_dir), stem, c, kind)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mesh(mesh, path)
            written["meshes"][c][kind] = None if path is None else str(path)
    return written


def compare_on_volume(model, image_path: str | Path, axis: int, slice_idx: int, output_png: str | Path, *,
                      class_names: dict[int, str], label_path: str | Path | None = None,
                      mask_png: str | Path | None = None, class_id: int | None = None, spacing_mm: float = 3.0,
                      crop_size: int = 256, sampler=None, seed: int = 0, device: str = "cpu", batch_size: int = 8,
                      per_axis: int = 3, frame: str = "object", input_slice: bool = True,
                      pose_fit: bool = True, further_slices=(), extra_slice_streams: str = "all") -> dict:
    """Reconstruct every structure on a stored slice of a NIfTI scan and draw the comparison grid.

    With ``label_path`` (ground truth on the scan's grid) every class present on the slice is
    reconstructed from its mask there, and the figure has truth and error rows; without it, one
    structure from ``mask_png`` (display orientation on the model's grid, as ``export-slice``
    writes it) labelled ``class_id``. ``further_slices``: (stored axis, index) of more input slices
    (with ``label_path``: each structure from every given slice it appears on; the figure frames them
    all). The meshes go next to ``output_png`` (``<stem>_class<c>_pred.obj`` / ``_true.obj``)."""
    image = load_volume(image_path, "image", canonical=False)
    view = canonical_slice(image, axis, slice_idx, spacing_mm)
    true_labels = None
    if label_path is not None:
        label = load_matching_label(label_path, image)
        true_labels = np.rint(canonical_resampled(label, spacing_mm, order=0).data).astype(np.uint8)
        stored_plane = take_slice(label.data, axis, slice_idx)
        masks = {int(c): stored_plane == c for c in np.unique(stored_plane) if c != 0 and int(c) in class_names}
        if not masks:
            raise InputError(f"{label_path}: no labelled structure ({sorted(class_names)}) on slice {slice_idx} along axis {axis}")
    elif mask_png is not None:
        if class_id is None:
            raise InputError("{mask_png} needs {class_id} (the label value of the structure, for its colour and name)")
        canonical_masks = {int(class_id): view.mask_from_display_png(mask_png)}
    else:
        raise InputError("give the structures' masks: {label_path} case-label.nii.gz, or {mask_png} slice-mask.png "
                         "{class_id} N")
    if label_path is not None:
        canonical_masks = {c: view.mask_from_stored(m) for c, m in masks.items()}
    canonical_masks = {c: m for c, m in canonical_masks.items() if m.any()}
    if not canonical_masks:
        raise InputError("the masks do not reach any pixel of the model's grid (too small for its spacing)")
    classes = sorted(canonical_masks)
    if target_frame(frame).windowed:  # the model's n^3 window of the grid; truth and figures on the same window
        view, windowed, window = volume_frame_view(view, [canonical_masks[c] for c in classes],
                                                   model.cfg.occupancy_resolution, true_labels)
        canonical_masks = dict(zip(classes, windowed))
        if true_labels is not None:
            true_labels = window.take(true_labels, 0)
    views = {c: ([view], [canonical_masks[c]]) for c in classes}
    if further_slices:
        if label_path is None or not target_frame(frame).several_slices:
            raise InputError("several input slices need {label_path} (each structure's masks are read from the labels) "
                             f"and a model of the object frame (this one: {target_frame(frame)})")
        # every structure on any given slice, each from the given slices it is on, in the order given
        for a, i in further_slices:
            further = canonical_slice(image, a, i, spacing_mm, canonical=view.image)
            stored = take_slice(label.data, a, i)
            found = False
            for c in sorted(int(v) for v in np.unique(stored) if v != 0 and int(v) in class_names):
                mask = further.mask_from_stored(stored == c)
                if not mask.any():
                    continue
                found = True
                planes_of_c = views.setdefault(c, ([], []))
                if (further.axis, further.index) not in [(v.axis, v.index) for v in planes_of_c[0]]:
                    planes_of_c[0].append(further)
                    planes_of_c[1].append(mask)
            if not found:
                raise InputError(f"{label_path}: no labelled structure ({sorted(class_names)}) on slice {i} along axis {a}")
        classes = sorted(views)
    given = {c: InputSlices(tuple(InputSlice(v.axis, v.index, m) for v, m in zip(*views[c]))) for c in classes}
    # one batch: every structure's inputs with the further slices' fields when any has further slices
    streams = extra_slice_streams if any(len(views[c][0]) > 1 for c in classes) else None
    reconstructions = reconstruct_logits(
        model, [model_inputs_of_slices(*views[c], crop_size, frame, streams) for c in classes], view.image.data.shape,
        view.image.affine, frame=frame, seed=seed, sampler=sampler, device=device, batch_size=batch_size,
        input_slices=[given[c] for c in classes] if input_slice else None, pose_fit=pose_fit)
    logits_by_class = {c: r.logits for c, r in zip(classes, reconstructions)}
    surfaces = {c: (r.surface_logits, r.surface_affine) for c, r in zip(classes, reconstructions)}
    scores = {}
    if true_labels is not None:
        true_labels = only_classes(true_labels, classes)
        spacing = voxel_spacing_mm(view.image.affine)
        scores = {c: segmentation_metrics(logits_by_class[c] > 0, true_labels == c, spacing) for c in classes}
    names = {c: class_names.get(c, f"class {c}") for c in classes}
    stored = [(axis, slice_idx), *further_slices]
    planes = list(dict.fromkeys((s.axis, s.index) for c in classes for s in given[c]))
    title = (f"{Path(image_path).name}: conditioned on stored slice{'s' * (len(stored) > 1)} "
             + ", ".join(f"{i} along axis {a}" for a, i in stored)
             + f" (= {', '.join(f'{chr(105 + a)}={i}' for a, i in planes)} of the model's RAS+ grid)")
    if scores:
        title += "\nDice " + ", ".join(f"{names[c]} {scores[c]['dice']:.2f}" for c in classes)
    output_png = Path(output_png)
    written = write_case_visuals(output_png, output_png.parent, output_png.stem, window_ct(view.image.data)[0],
                                 view.image.affine, logits_by_class, names, true_labels_ijk=true_labels,
                                 input_slice=planes, title=title, per_axis=per_axis,
                                 predicted_surfaces=surfaces)
    written["scores"] = scores
    return written


def save_case_volumes(path: str | Path, logits_by_class: dict[int, np.ndarray], true_labels_ijk: np.ndarray,
                      affine: np.ndarray) -> None:
    """What the report needs to draw a case's surfaces, compactly (~2 MB; a noisy prediction's .obj
    files could be 100x that): per-class logits as float16, the true labels, the affine."""
    classes = sorted(logits_by_class)
    atomic_save_npz(path, compressed=True, classes=np.asarray(classes, dtype=np.int64),
                    logits=np.stack([logits_by_class[c] for c in classes]).astype(np.float16),
                    true_labels=np.asarray(true_labels_ijk, dtype=np.uint8), affine=np.asarray(affine, dtype=np.float64))


def load_case_volumes(path: str | Path) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """(logits by class, true labels [i, j, k], affine) as written by ``save_case_volumes``."""
    arrays = read_npz(path, ("classes", "logits", "true_labels", "affine"), "case volumes")
    logits = arrays["logits"]
    return ({int(c): logits[n].astype(np.float32) for n, c in enumerate(arrays["classes"])}, arrays["true_labels"],
            arrays["affine"])


def write_evaluation_case_visuals(data_root: Path, case: dict, viz_dir: Path, axis: int, logits: dict, slices: dict,
                                  names: dict, records: list[dict]) -> None:
    """The evaluation's figures of one cached case (``eval.runner``'s ``case_visuals``): its comparison
    grid (``layout.case_figure_path``) and the volumes the report draws its surfaces from
    (``layout.case_volumes_path``), each class as reconstructed from its chosen slice along ``axis``
    and its further input slices, if any (``slices``: class -> [(axis, index), ...], that slice first;
    the figure frames every one); ``logits``: class -> logits on the case's grid."""
    from .slices import view_name

    image, labels, affine = cached_case_volumes(data_root, case)
    labels = only_classes(labels, logits)
    dice = {r["class_id"]: r["dice"] for r in records if r["method"] == "model" and r["axis"] == axis}
    class_names = {c: names[str(c)] for c in logits}

    def planes(c):  # its slice along ``axis`` by index, as before; further slices by axis letter too
        first, *further = slices[c]
        return " + ".join([str(first[1])] + [f"{'ijk'[a]}={i}" for a, i in further])

    title = (f"{case['case_id']}: each class reconstructed from its {view_name(affine, axis)} slice "
             f"({'ijk'[axis]}): " + ", ".join(f"{class_names[c]} {planes(c)} (Dice {dice[c]:.2f})" for c in sorted(logits)))
    framed = list(dict.fromkeys(plane for c in sorted(logits) for plane in slices[c][1:]))
    write_case_visuals(case_figure_path(viz_dir, case["case_id"]), None, case["case_id"], image, affine, logits,
                       class_names, true_labels_ijk=labels, title=title, input_slice=framed or None)
    save_case_volumes(case_volumes_path(viz_dir, case["case_id"]), logits, labels, affine)
