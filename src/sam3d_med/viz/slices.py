"""Slices of [i, j, k] volumes drawn as a radiologist reads them, with label overlays and error maps.

Display convention (every figure): a slice along array axis ``a`` keeps the two other array axes
(p, q) in order; p runs left to right on the screen and q bottom to top, each pixel drawn with its
physical aspect (spacing in mm). On a RAS+ canonical grid (what preprocessing and the model use)
that puts the patient's right on the screen's right in axial and coronal views (the neurological
convention). Because that is a choice, every panel carries the anatomical letters of its edges
(from ``nibabel.aff2axcodes`` of the volume's affine), so no reader has to guess.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from ..data.geometry import bounding_box, take_slice
from ..io.atomic import atomic_path
from ..io.nifti import voxel_spacing_mm
from ..io.png import from_display, to_display  # noqa: F401 (the figures' orientation; imported from here)
from .palette import class_colour, error_codes, legend_handles, rgba_of_errors, rgba_of_labels

AXIS_VIEW_NAMES = {"R": "sagittal", "L": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}
_OPPOSITE = dict(zip("RLAPSI", "LRPAIS"))


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path


def view_name(affine: np.ndarray, axis: int) -> str:
    """'axial', 'coronal' or 'sagittal' for slices along array ``axis`` of a volume with ``affine``."""
    return AXIS_VIEW_NAMES[nib.aff2axcodes(affine)[axis]]


def display_slices(labels_ijk: np.ndarray, per_axis: int = 3, include=None) -> list[tuple[int, int]]:
    """(axis, index) of ``per_axis`` slices along each array axis, spread evenly through the extent of
    the foreground (the centre when there is none); each slice of ``include`` ((axis, index), or a list
    of them) replaces the nearest one on its axis."""
    chosen = []
    included = input_planes(include)
    foreground = np.asarray(labels_ijk) != 0
    box = bounding_box(foreground, margin=0) if foreground.any() else None
    for axis in range(3):
        lo, hi = (box[axis].start, box[axis].stop - 1) if box else ((labels_ijk.shape[axis] - 1) / 2,) * 2
        picks = [int(round(lo + (hi - lo) * (n + 1) / (per_axis + 1))) for n in range(per_axis)]
        for _, index in (s for s in included if s[0] == axis):
            if index in picks:
                continue
            free = [n for n, p in enumerate(picks) if (axis, p) not in included] or list(range(len(picks)))
            nearest = min(free, key=lambda n: abs(picks[n] - index))
            picks[nearest] = int(index)
        chosen += [(axis, p) for p in sorted(set(picks))]
    return chosen


def input_planes(input_slices) -> list[tuple[int, int]]:
    """(axis, index) of each input slice: ``input_slices`` is None, one (axis, index) or a list of them."""
    if input_slices is None:
        return []
    if len(input_slices) == 2 and all(isinstance(v, (int, np.integer)) for v in input_slices):
        return [(int(input_slices[0]), int(input_slices[1]))]
    return [(int(a), int(i)) for a, i in input_slices]


def _plane(volume_ijk: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice as an image for ``imshow(origin="lower")``: [q, p] (rows = q, columns = p)."""
    return take_slice(np.asarray(volume_ijk), axis, index).T


def _frame(ax, affine: np.ndarray, axis: int, letters: bool) -> None:
    spacing = voxel_spacing_mm(affine)
    p, q = (a for a in range(3) if a != axis)
    ax.set_aspect(spacing[q] / spacing[p])
    ax.set_xticks([])
    ax.set_yticks([])
    if letters:
        codes = nib.aff2axcodes(affine)
        style = dict(transform=ax.transAxes, color="yellow", fontsize=7, fontweight="bold")
        ax.text(0.02, 0.5, _OPPOSITE[codes[p]], va="center", ha="left", **style)
        ax.text(0.98, 0.5, codes[p], va="center", ha="right", **style)
        ax.text(0.5, 0.98, codes[q], va="top", ha="center", **style)
        ax.text(0.5, 0.02, _OPPOSITE[codes[q]], va="bottom", ha="center", **style)


def draw_slice(ax, image_ijk: np.ndarray, affine: np.ndarray, axis: int, index: int, *,
               labels_ijk: np.ndarray | None = None, errors_ijk: np.ndarray | None = None,
               alpha: float = 0.45, letters: bool = True) -> None:
    """One panel: the image slice (values in [0, 1], grey) with, optionally, label colours and
    outlines or the error map on top. NaN image values (no data) are drawn black."""
    ax.set_facecolor("black")
    ax.imshow(_plane(image_ijk, axis, index), cmap="gray", vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest")
    if labels_ijk is not None:
        plane = _plane(labels_ijk, axis, index)
        ax.imshow(rgba_of_labels(plane, alpha), origin="lower", interpolation="nearest")
        for value in np.unique(plane):
            if value != 0:
                ax.contour(plane == value, levels=[0.5], colors=[class_colour(int(value))],
                           linewidths=0.8, origin="lower")
    if errors_ijk is not None:
        ax.imshow(rgba_of_errors(_plane(errors_ijk, axis, index), 0.85), origin="lower", interpolation="nearest")
    _frame(ax, affine, axis, letters)


def comparison_figure(image_ijk: np.ndarray, affine: np.ndarray, pred_labels_ijk: np.ndarray,
                      class_names: dict[int, str], *, true_labels_ijk: np.ndarray | None = None,
                      input_slice=None, per_axis: int = 3, title: str = "") -> Figure:
    """The comparison grid: columns are ``per_axis`` slices along each array axis (through the
    structures), rows the input slice, the ground truth, the prediction and the error map (the last
    two rows need ``true_labels_ijk``). ``input_slice`` (axis, index), or a list of them, are the
    conditioning slices: each one's column is framed, and the other views show where their planes cut
    them (dashed lines).
    ``image_ijk`` holds display values in [0, 1]; label arrays hold label values; all share ``affine``."""
    # Slices go through the true structures when known (stray false positives would spread them thin).
    given = input_planes(input_slice)
    slices = display_slices(pred_labels_ijk if true_labels_ijk is None else true_labels_ijk, per_axis, include=given)
    rows = [("input", {})]
    if true_labels_ijk is not None:
        rows.append(("ground truth", {"labels_ijk": true_labels_ijk}))
    rows.append(("prediction", {"labels_ijk": pred_labels_ijk}))
    if true_labels_ijk is not None:
        rows.append(("error", {"errors_ijk": error_codes(pred_labels_ijk, true_labels_ijk)}))
    fig = Figure(figsize=(1.75 * len(slices) + 0.4, 1.75 * len(rows) + 1.3))
    axes = fig.subplots(len(rows), len(slices), squeeze=False)
    for col, (axis, index) in enumerate(slices):
        marked = (axis, index) in given
        for row, (row_name, overlay) in enumerate(rows):
            ax = axes[row][col]
            draw_slice(ax, image_ijk, affine, axis, index, letters=(row == 0), **overlay)
            if col == 0:
                ax.set_ylabel(row_name, fontsize=9)
            if marked:
                for spine in ax.spines.values():
                    spine.set(color="gold", linewidth=2.5)
        p, q = (a for a in range(3) if a != axis)
        for plane_axis, plane_index in (s for s in given if s[0] != axis):  # where each input plane cuts this view
            line = axes[0][col].axvline if plane_axis == p else axes[0][col].axhline
            line(plane_index, color="gold", linestyle="--", linewidth=0.9)
        axes[0][col].set_title(f"{view_name(affine, axis)} {'ijk'[axis]}={index}" + ("\n(input slice)" if marked else ""),
                               fontsize=8, color="darkgoldenrod" if marked else "black")
    fig.legend(handles=legend_handles(class_names, with_errors=true_labels_ijk is not None), loc="lower center",
               ncol=min(5, len(class_names) + 4), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.86 if title else 0.9, bottom=0.1, wspace=0.05, hspace=0.08)
    return fig


def labels_from_logits(logits_by_class: dict[int, np.ndarray]) -> np.ndarray:
    """One label map from per-class logit volumes [i, j, k]: a voxel takes the class with the highest
    logit among those above 0 (p > 0.5), background where none is."""
    classes = sorted(logits_by_class)
    if not classes:
        raise ValueError("no class predictions to combine")
    stack = np.stack([logits_by_class[c] for c in classes])
    best = np.argmax(stack, axis=0)
    labels = np.asarray(classes, dtype=np.uint8)[best]
    labels[np.max(stack, axis=0) <= 0] = 0
    return labels
