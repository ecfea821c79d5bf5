import subprocess
import sys

import numpy as np
import pytest

from sam3d_med.data.slice_policies import SLICE_POLICIES, draw_num_slices, input_slice_entries


def _entry(axis, idx, counts):
    return {"axis": axis, "slice_idx": idx, "file": f"slices/a{axis}_{idx:03d}.npz",
            "class_pixel_counts": {str(c): n for c, n in counts.items()}}


def _sphere_case(centre=(10, 12, 8), radius=5, axes=(0, 1, 2), spacing=(1.0, 1.0, 1.0), shape=(24, 24, 24)):
    """Class 1: a ball; a slice's pixel count is its disc's area (only slices with foreground cached)."""
    slices = []
    for axis in axes:
        for idx in range(shape[axis]):
            r2 = radius ** 2 - (idx - centre[axis]) ** 2
            if r2 >= 0:
                slices.append(_entry(axis, idx, {1: int(round(np.pi * r2)) + 1}))
    return {"case_id": "s0001", "shape_ijk": list(shape), "spacing_mm": list(spacing),
            "class_voxel_counts": {"1": 500}, "slices": slices}


def _at(case, axis, idx):
    return next(e for e in case["slices"] if e["axis"] == axis and e["slice_idx"] == idx)


def _keys(entries):
    return [(e["axis"], e["slice_idx"]) for e in entries]


def test_orthogonal_picks_the_largest_section_on_each_other_axis_in_axis_order():
    case = _sphere_case()
    first = _at(case, 1, 10)  # off-centre slice on axis 1
    got = input_slice_entries(case, 1, first, 3, "orthogonal")
    assert got[0] is first
    assert _keys(got) == [(1, 10), (0, 10), (2, 8)]  # the ball's centre on axes 0 and 2
    assert [e["axis"] for e in got] == [1, 0, 2] and len(set(_keys(got))) == 3
    assert _keys(input_slice_entries(case, 1, first, 2, "orthogonal")) == [(1, 10), (0, 10)]


def test_orthogonal_breaks_ties_to_the_lower_index_and_respects_min_pixels():
    first = _entry(0, 5, {1: 30})
    case = {"case_id": "t", "spacing_mm": [1, 1, 1], "class_voxel_counts": {"1": 99}, "slices": [
        first, _entry(1, 7, {1: 20}), _entry(1, 4, {1: 20}), _entry(1, 9, {1: 3}),
        _entry(2, 2, {1: 4, 2: 50}), _entry(2, 6, {1: 12})]}
    assert _keys(input_slice_entries(case, 1, first, 3, "orthogonal")) == [(0, 5), (1, 4), (2, 6)]
    # with min_pixels=15, axis 2 has no usable slice: skipped, so only 2 entries exist
    assert _keys(input_slice_entries(case, 1, first, 2, "orthogonal", min_pixels=15)) == [(0, 5), (1, 4)]
    with pytest.raises(ValueError, match="only 2"):
        input_slice_entries(case, 1, first, 3, "orthogonal", min_pixels=15)


def test_orthogonal_skips_an_axis_without_cached_slices():
    case = _sphere_case(axes=(0, 2))
    first = _at(case, 2, 6)
    assert _keys(input_slice_entries(case, 1, first, 2, "orthogonal")) == [(2, 6), (0, 10)]
    with pytest.raises(ValueError, match="only 2"):
        input_slice_entries(case, 1, first, 3, "orthogonal")


def test_parallel_steps_by_spacing_of_first_axis_and_snaps_to_cached_slices_with_the_class():
    # axis 2 has 3 mm spacing: 6 mm -> 2 voxels (axis 0's 1 mm would give 6)
    first = _entry(2, 10, {1: 40})
    slices = [_entry(2, i, {1: 10}) for i in (4, 8, 12, 16)] + [first, _entry(0, 12, {1: 50})]
    case = {"case_id": "p", "spacing_mm": [1.0, 1.0, 3.0], "class_voxel_counts": {"1": 99}, "slices": slices}
    assert _keys(input_slice_entries(case, 1, first, 3, "parallel", spacing_mm=6.0)) == [(2, 10), (2, 12), (2, 8)]
    # snapping: 12 and 8 missing; 11/13 tie for +2 -> 11 (closer to first); for -2, 9 lacks class 1 -> 7
    slices = [first, _entry(2, 7, {1: 5}), _entry(2, 9, {2: 30}), _entry(2, 11, {1: 5}), _entry(2, 13, {1: 5})]
    case["slices"] = slices
    assert _keys(input_slice_entries(case, 1, first, 3, "parallel", spacing_mm=6.0)) == [(2, 10), (2, 11), (2, 7)]
    # for -2 (target 8), 7 and 9 tie: the one closer to first (9) wins over the lower index
    case["slices"] = [first, _entry(2, 7, {1: 5}), _entry(2, 9, {1: 5}), _entry(2, 12, {1: 5})]
    assert _keys(input_slice_entries(case, 1, first, 3, "parallel", spacing_mm=6.0)) == [(2, 10), (2, 12), (2, 9)]
    # a slice is never chosen twice: -2 would snap to 11 again, goes to the next nearest instead
    case["slices"] = [first, _entry(2, 11, {1: 5}), _entry(2, 20, {1: 8})]
    assert _keys(input_slice_entries(case, 1, first, 3, "parallel", spacing_mm=6.0)) == [(2, 10), (2, 11), (2, 20)]
    with pytest.raises(ValueError, match="only 2"):
        input_slice_entries(case, 1, first, 3, "parallel", spacing_mm=6.0, min_pixels=6)


def test_random_is_reproducible_varies_with_seed_and_never_repeats():
    case = _sphere_case()
    first = _at(case, 0, 10)
    draws = [_keys(input_slice_entries(case, 1, first, 3, "random", rng=np.random.default_rng(s)))
             for s in range(20)]
    assert draws[3] == _keys(input_slice_entries(case, 1, first, 3, "random", rng=np.random.default_rng(3)))
    assert len({tuple(d) for d in draws}) > 1
    for d in draws:
        assert d[0] == (0, 10) and len(set(d)) == 3 and (0, 10) not in d[1:]
    assert {d[1][0] for d in draws} != {0}  # other axes are drawn too


def test_k1_returns_first_for_every_policy():
    case = _sphere_case()
    first = _at(case, 1, 12)
    for policy in SLICE_POLICIES:
        got = input_slice_entries(case, 1, first, 1, policy, rng=np.random.default_rng(0))
        assert len(got) == 1 and got[0] is first


def test_errors():
    case = _sphere_case()
    first = _at(case, 0, 10)
    lone = _sphere_case(radius=0, axes=(0,))  # a single cached slice in all
    for policy in SLICE_POLICIES:
        with pytest.raises(ValueError, match="only 1"):
            input_slice_entries(lone, 1, lone["slices"][0], 2, policy, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="orthogonal, parallel, random"):
        input_slice_entries(case, 1, first, 2, "nearest")
    for k in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="1 to 3"):
            input_slice_entries(case, 1, first, k, "orthogonal")
    with pytest.raises(ValueError, match="rng"):
        input_slice_entries(case, 1, first, 2, "random")
    with pytest.raises(ValueError, match="class 2"):
        input_slice_entries(case, 2, first, 2, "orthogonal")  # first has no pixel of class 2
    with pytest.raises(ValueError, match="not a cached slice"):
        input_slice_entries(case, 1, _entry(0, 30, {1: 5}), 2, "orthogonal")  # not an entry of the case


def test_draw_num_slices():
    rng = np.random.default_rng(0)
    assert {draw_num_slices([1], rng) for _ in range(50)} == {1}
    assert draw_num_slices((2, 2), rng) == 2
    draws = [draw_num_slices([1, 3], np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same K
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = [draw_num_slices([1, 3], rng_a) for _ in range(200)]
    assert a == [draw_num_slices([1, 3], rng_b) for _ in range(200)]
    assert set(a) == {1, 2, 3}
    for bad in ([], [0], [4], [3, 1], [1, 2, 3], [1.5], [True], "12", 2, [1, 4]):
        with pytest.raises(ValueError, match="num_slices"):
            draw_num_slices(bad, rng)


def test_module_imports_without_torch():
    code = "import sys, sam3d_med.data.slice_policies; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
