"""Which K = 1..3 cached slices of one structure condition a sample (numpy only, no torch).

Frame: the case's scan grid as cached (``shape_ijk``); a slice is one entry of ``case["slices"]``,
``slice_idx`` counted along the stored array ``axis`` (0 = i, 1 = j, 2 = k). Only cached slices
(those with foreground) can be chosen, and only those where the class has at least ``min_pixels``.
The first slice is always the caller's primary slice ``first``; the others follow by ``policy``:

- ``orthogonal``: the class's largest section (most pixels, ties to the lower ``slice_idx``, as
  ``choose_slices``' "max_area") on each other axis, the two other axes ascending; an axis with no
  cached slice of the class is skipped.
- ``parallel``: slices along ``first``'s axis about ``spacing_mm`` (mm) apart: offsets of +1, -1, +2,
  -2, ... steps of round(``spacing_mm`` / that axis's voxel spacing) voxels (at least 1) from
  ``first``, each snapped to the nearest cached slice of the class not yet chosen (ties: the one
  closer to ``first``, then the lower index).
- ``random``: other cached slices of the class (any axis) drawn without replacement with ``rng``.

Determinism: the first two policies depend on the case only; ``random`` and ``draw_num_slices`` on
``rng``'s state only (the same state gives the same slices / K). Errors are ``ValueError`` with one
sentence, for callers to turn into a user error.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .cache import case_spacing, class_pixels
from .input_slices import MAX_SLICES, SLICE_POLICIES  # declared with the input slices


def _key(entry: dict) -> tuple[int, int]:
    return int(entry["axis"]), int(entry["slice_idx"])


def _whole(value) -> int | None:
    """``value`` as an int when it is a whole number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real) and float(value).is_integer():
        return int(value)
    return None


def _too_few(case: dict, class_id: int, found: int, k: int, policy: str) -> ValueError:
    return ValueError(
        f"case {case.get('case_id', '?')} has only {found} slice(s) of class {class_id} usable by the "
        f"{policy!r} slice policy, fewer than the {k} requested"
    )


def input_slice_entries(case: dict, class_id: int, first: dict, k: int, policy: str, *,
                        spacing_mm: float = 15.0, min_pixels: int = 1,
                        rng: np.random.Generator | None = None) -> list[dict]:
    """``k`` distinct slice entries of ``case`` where ``class_id`` has >= ``min_pixels`` pixels,
    ``first`` first, the rest chosen by ``policy`` (see the module docstring)."""
    if policy not in SLICE_POLICIES:
        raise ValueError(f"slice policy {policy!r} is not one of {', '.join(SLICE_POLICIES)}")
    kk = _whole(k)
    if kk is None or not 1 <= kk <= MAX_SLICES:
        raise ValueError(f"number of slices {k!r} must be a whole number from 1 to {MAX_SLICES}")
    if policy == "random" and rng is None:
        raise ValueError("the 'random' slice policy needs a numpy random Generator (rng)")
    if not any(e is first or e == first for e in case["slices"]) or class_pixels(first, class_id) < min_pixels:
        raise ValueError(
            f"the first slice (axis {first.get('axis')}, index {first.get('slice_idx')}) is not a cached slice "
            f"of case {case.get('case_id', '?')} with at least {min_pixels} pixel(s) of class {class_id}"
        )
    if kk == 1:
        return [first]

    seen, others = {_key(first)}, []
    for e in case["slices"]:  # usable entries other than first, each (axis, index) once, manifest order
        if class_pixels(e, class_id) >= min_pixels and _key(e) not in seen:
            seen.add(_key(e))
            others.append(e)
    axis0, idx0 = _key(first)

    if policy == "orthogonal":
        chosen = []
        for axis in (a for a in range(3) if a != axis0):
            on_axis = [e for e in others if int(e["axis"]) == axis]
            if on_axis:
                chosen.append(max(on_axis, key=lambda e: (class_pixels(e, class_id), -int(e["slice_idx"]))))
        if 1 + len(chosen) < kk:
            raise _too_few(case, class_id, 1 + len(chosen), kk, policy)
        return [first] + chosen[: kk - 1]

    if policy == "parallel":
        if not (isinstance(spacing_mm, Real) and spacing_mm > 0):
            raise ValueError(f"slice spacing {spacing_mm!r} mm must be a positive number")
        step = max(1, math.floor(float(spacing_mm) / case_spacing(case)[axis0] + 0.5))
        pool = [e for e in others if int(e["axis"]) == axis0]
        if 1 + len(pool) < kk:
            raise _too_few(case, class_id, 1 + len(pool), kk, policy)
        chosen = []
        for n in range(kk - 1):
            target = idx0 + (n // 2 + 1) * step * (1 if n % 2 == 0 else -1)
            best = min(pool, key=lambda e: (abs(int(e["slice_idx"]) - target),
                                            abs(int(e["slice_idx"]) - idx0), int(e["slice_idx"])))
            pool.remove(best)
            chosen.append(best)
        return [first] + chosen

    # random
    if 1 + len(others) < kk:
        raise _too_few(case, class_id, 1 + len(others), kk, policy)
    picks = rng.choice(len(others), size=kk - 1, replace=False)
    return [first] + [others[int(i)] for i in picks]


def draw_num_slices(num_slices, rng: np.random.Generator) -> int:
    """K for one sample from ``data.num_slices``: ``[k]`` always k; ``[lo, hi]`` uniform on lo..hi
    (inclusive, drawn with ``rng``); 1 <= lo <= hi <= 3."""
    try:
        whole = [] if isinstance(num_slices, (str, bytes)) else [_whole(v) for v in num_slices]
    except TypeError:  # not a sequence
        whole = []
    if not 1 <= len(whole) <= 2 or None in whole or not 1 <= whole[0] <= whole[-1] <= MAX_SLICES:
        raise ValueError(
            f"num_slices {num_slices!r} must be [k] or [lo, hi] with whole numbers 1 <= lo <= hi <= {MAX_SLICES}"
        )
    lo, hi = whole[0], whole[-1]
    return lo if lo == hi else int(rng.integers(lo, hi + 1))
