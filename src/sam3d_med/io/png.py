"""PNG slices as every figure and mask file of the tool holds them: the display orientation.

A slice along array axis ``a`` of a RAS+ grid keeps the two other array axes (p, q) in order; in
display orientation q runs upwards (anterior or superior at the top) and p to the right (the
patient's right on the screen's right in axial and coronal views: the neurological convention). An
image [row, column] in that orientation is ``to_display(plane[p, q])``; ``from_display`` inverts it.
``export-slice`` writes its image and masks so, ``predict --mask`` and ``visualize finetuned`` read
them so, and every figure draws so (``viz.slices``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def to_display(plane_pq: np.ndarray) -> np.ndarray:
    """A slice [p, q] of the RAS+ grid (p, q: its two remaining axes in increasing order) -> an image
    [row, column] in display orientation (module doc)."""
    return np.asarray(plane_pq).T[::-1]


def from_display(image_rc: np.ndarray) -> np.ndarray:
    """The inverse of ``to_display``: an image in display orientation -> the slice [p, q]."""
    return np.asarray(image_rc)[::-1].T


def read_mask_png(path: Path, shape_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG -> bool [rows, columns]: pixels above half the image's maximum (any channel).
    ``InputError`` for a file that is not an image, or (with ``shape_hw``) of another size."""
    import matplotlib.image as mpimg

    try:
        pixels = mpimg.imread(str(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read mask image ({type(exc).__name__})") from None
    if pixels.ndim == 3:
        pixels = pixels[..., :3].max(axis=-1)
    if shape_hw is not None and pixels.shape != shape_hw:
        raise InputError(f"{path}: mask is {pixels.shape[0]}x{pixels.shape[1]} pixels, the slice is "
                         f"{shape_hw[0]}x{shape_hw[1]} (rows x columns, display orientation)")
    return pixels > 0.5 * pixels.max() if pixels.max() > 0 else pixels > 0
