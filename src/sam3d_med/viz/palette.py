"""Colours: one fixed colour per label value (the same in every figure and the report), and the
colours of the error map."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Patch

# Label value -> colour: matplotlib's tab10 (label 1 orange, 2 green, 3 red, 4 purple, 5 brown, ...);
# the error map uses magenta, cyan and yellow, which no class of the heart crops takes.
_TAB10 = colormaps["tab10"].colors

# Error map codes (voxel by voxel, multi-class): what each prediction/truth pair is.
AGREE, FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS = 1, 2, 3, 4
ERROR_COLOURS = {
    AGREE: ((0.75, 0.75, 0.75), "agree (same class)"),
    FALSE_POSITIVE: ((1.00, 0.00, 1.00), "false positive (truth: background)"),
    FALSE_NEGATIVE: ((0.00, 0.85, 1.00), "false negative (predicted: background)"),
    WRONG_CLASS: ((1.00, 0.85, 0.00), "wrong class"),
}


def class_colour(label: int) -> tuple[float, float, float]:
    return tuple(float(v) for v in _TAB10[int(label) % 10])


def class_colour_hex(label: int) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in class_colour(label))


def rgba_of_labels(labels_2d: np.ndarray, alpha: float) -> np.ndarray:
    """[rows, cols] label values -> RGBA float image; background (0) transparent."""
    labels_2d = np.asarray(labels_2d)
    rgba = np.zeros(labels_2d.shape + (4,), dtype=np.float32)
    for value in np.unique(labels_2d):
        if value != 0:
            rgba[labels_2d == value] = (*class_colour(int(value)), alpha)
    return rgba


def error_codes(pred_labels: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """Label arrays of the same shape -> uint8 codes: 0 both background, AGREE, FALSE_POSITIVE, ..."""
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    codes = np.zeros(pred.shape, dtype=np.uint8)
    codes[(pred == true) & (true != 0)] = AGREE
    codes[(pred != 0) & (true == 0)] = FALSE_POSITIVE
    codes[(pred == 0) & (true != 0)] = FALSE_NEGATIVE
    codes[(pred != 0) & (true != 0) & (pred != true)] = WRONG_CLASS
    return codes


def rgba_of_errors(codes_2d: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros(np.shape(codes_2d) + (4,), dtype=np.float32)
    for code, (colour, _) in ERROR_COLOURS.items():
        rgba[codes_2d == code] = (*colour, alpha * (0.5 if code == AGREE else 1.0))
    return rgba


def legend_handles(class_names: dict[int, str], with_errors: bool) -> list[Patch]:
    handles = [Patch(facecolor=class_colour(c), label=f"{c} {name}") for c, name in sorted(class_names.items())]
    if with_errors:
        handles += [Patch(facecolor=colour, label=text) for colour, text in ERROR_COLOURS.values()]
    return handles
