import numpy as np
import pytest

from sam3d_med.eval.slice_baselines import (InputPlane, extruded, shape_based_interpolation,
                                            signed_distance_mm, visual_hull)


def runner_extrude(occupancy, extent, axis, slice_idx):
    """A copy of ``TrainingPriors.extrude`` (runner.py), with ``self.extent[cls][axis]`` as ``extent``."""
    plane = np.take(occupancy, slice_idx, axis=axis)
    lo = max(0, slice_idx - extent // 2)
    hi = min(occupancy.shape[axis], lo + extent)
    out = np.zeros_like(occupancy, dtype=bool)
    index = [slice(None)] * 3
    index[axis] = slice(lo, hi)
    out[tuple(index)] = np.expand_dims(plane, axis)
    return out


def ball(shape, centre, radii):
    grid = np.indices(shape).transpose(1, 2, 3, 0) - np.asarray(centre, dtype=float)
    return ((grid / np.asarray(radii, dtype=float)) ** 2).sum(-1) <= 1.0


def plane_of(occ, axis, index):
    return InputPlane(axis, index, np.take(occ, index, axis=axis))


def dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


BLOB = ball((12, 10, 8), (6, 5, 4), (6.5, 5.5, 4.5)) & ~ball((12, 10, 8), (8, 6, 4), (2, 2, 5))  # reaches every face


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("index,extent", [(5, 4), (5, 5), (0, 3), (1, 6), (-1, 4), (-2, 7), (3, 50), (4, 1)])
def test_one_plane_equals_runner_extrude(axis, index, extent):
    index %= BLOB.shape[axis]  # negative: from the grid's high edge
    plane = plane_of(BLOB, axis, index)
    assert plane.mask.any()
    expected = runner_extrude(BLOB, extent, axis, index)
    extents = [1, 1, 1]
    extents[axis] = extent
    assert np.array_equal(extruded(plane, BLOB.shape, extent), expected)
    assert np.array_equal(visual_hull([plane], BLOB.shape, extents), expected)
    assert np.array_equal(shape_based_interpolation([plane], BLOB.shape, (1.0, 2.0, 3.0), extent), expected)


def test_visual_hull_of_three_orthogonal_sphere_planes():
    sphere = ball((40, 40, 40), (20, 20, 20), (10, 10, 10))
    planes = [plane_of(sphere, axis, 20) for axis in range(3)]
    hull = visual_hull(planes, sphere.shape, (21, 21, 21))  # the sphere's diameter in voxels
    slabs = np.ones_like(sphere)
    for axis in range(3):
        slabs &= extruded(InputPlane(axis, 20, np.ones((40, 40), bool)), sphere.shape, 21)
    assert not (sphere & slabs & ~hull).any()  # silhouettes of a convex body: a superset
    assert dice(hull, sphere) > dice(extruded(planes[2], sphere.shape, 21), sphere) + 0.1
    assert dice(hull, sphere) > 0.9


def test_visual_hull_same_axis_intersects():
    a, b = plane_of(BLOB, 0, 4), plane_of(BLOB, 0, 6)
    assert np.array_equal(visual_hull([a, b], BLOB.shape, (5, 1, 1)),
                          extruded(a, BLOB.shape, 5) & extruded(b, BLOB.shape, 5))


def nearest_plane_copy(planes, shape, axis):
    out = np.zeros(shape, dtype=bool)
    stack = np.moveaxis(out, axis, 0)
    for k in range(planes[0].index, planes[-1].index + 1):
        stack[k] = min(planes, key=lambda p: abs(p.index - k)).mask
    return out


@pytest.mark.parametrize("kind,min_dice", [("cone", 0.95), ("ellipsoid", 0.93)])
def test_interpolation_beats_nearest_plane_between_planes(kind, min_dice):
    shape, axis = (36, 32, 30), 0
    if kind == "cone":  # radius 3 at i = 4 to 14 at i = 30
        i, j, k = np.indices(shape)
        truth = (np.hypot(j - 16, k - 15) <= 3 + (i - 4) * 11 / 26) & (i >= 4) & (i <= 30)
        planes = [plane_of(truth, axis, 6), plane_of(truth, axis, 28)]
    else:
        truth = ball(shape, (18, 16, 15), (14, 10, 12))
        planes = [plane_of(truth, axis, 7), plane_of(truth, axis, 16)]  # off-centre: unequal sections
    lo, hi = planes[0].index, planes[-1].index + 1
    sbi = shape_based_interpolation(planes, shape, (1.0, 1.0, 1.0), 1)[lo:hi]
    copy = nearest_plane_copy(planes, shape, axis)[lo:hi]
    assert dice(sbi, truth[lo:hi]) > dice(copy, truth[lo:hi]) + 0.02
    assert dice(sbi, truth[lo:hi]) > min_dice


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_input_planes_are_reproduced_exactly(axis):
    rng = np.random.default_rng(axis)
    shape = (20, 18, 16)
    masks = [rng.random(shape[:axis] + shape[axis + 1:]) < p for p in (0.3, 0.6)]
    masks.append(np.zeros_like(masks[0]))  # an empty plane
    masks.append(np.ones_like(masks[0]))  # a full one
    planes = [InputPlane(axis, idx, m) for idx, m in zip((12, 2, 7, 15), masks)]  # unsorted on purpose
    out = shape_based_interpolation(planes, shape, (0.8, 1.5, 2.5), 30)
    for p in planes:
        assert np.array_equal(np.take(out, p.index, axis=axis), p.mask)
    # outside the planes' span: the outermost masks, over the extent (30 - 14 = 16 extra: 8 below, 8 above)
    assert np.array_equal(np.take(out, 0, axis=axis), masks[1])
    assert np.array_equal(np.take(out, shape[axis] - 1, axis=axis), masks[3])
    assert np.array_equal(shape_based_interpolation(planes, shape, (0.8, 1.5, 2.5), 14),
                          shape_based_interpolation(planes, shape, (0.8, 1.5, 2.5), 1))


def test_extension_beyond_planes_follows_extrude_rule():
    masks = [np.take(BLOB, 3, 0), np.take(BLOB, 6, 0)]
    out = shape_based_interpolation([InputPlane(0, 3, masks[0]), InputPlane(0, 6, masks[1])], BLOB.shape,
                                    (1.0, 1.0, 1.0), 9)
    occupied = np.flatnonzero(out.any(axis=(1, 2)))
    assert occupied.tolist() == list(range(0, 9))  # span 4, 5 extra: 3 below (clipped to 0, shifted up), 2 above


def test_empty_plane_shrinks_the_shape():
    disc = ball((1, 30, 30), (0, 15, 15), (1, 9, 9))[0]
    planes = [InputPlane(2, 4, disc), InputPlane(2, 14, np.zeros_like(disc))]
    out = shape_based_interpolation(planes, (30, 30, 20), (1.0, 1.0, 1.0), 1)
    areas = out[:, :, 4:15].sum(axis=(0, 1))
    assert np.all(np.diff(areas) <= 0) and areas[0] == disc.sum() and areas[-1] == 0
    assert areas[1] < areas[0] and areas[5] < areas[0] / 2  # shrinks, not copied up to the empty plane
    assert (signed_distance_mm(np.zeros_like(disc), (1.0, 1.0)) > 0).all()
    assert np.isfinite(signed_distance_mm(np.ones_like(disc), (1.0, 1.0))).all()
    assert (signed_distance_mm(np.ones_like(disc), (1.0, 1.0)) < 0).all()


def test_signed_distance_is_in_mm_with_the_in_plane_spacing():
    mask = np.zeros((5, 6), bool)
    mask[0, 0] = True
    u, v = np.indices(mask.shape)
    expected = np.hypot(2.0 * u, 3.0 * v)
    expected[0, 0] = -2.0  # inside: to the nearest outside pixel centre, one 2 mm step away
    np.testing.assert_allclose(signed_distance_mm(mask, (2.0, 3.0)), expected)


def brute_force_signed_distance_mm(mask, spacing):
    """Signed distance by exhaustive search over pixel centres (mm), negative inside."""
    centres = np.indices(mask.shape).reshape(2, -1).T * np.asarray(spacing)
    pairwise = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    flat = mask.ravel()
    to_inside, to_outside = pairwise[:, flat].min(axis=1), pairwise[:, ~flat].min(axis=1)
    return np.where(flat, -to_outside, to_inside).reshape(mask.shape)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_interpolation_matches_brute_force_in_mm(axis):
    # a bar along one in-plane axis and one along the other: where the two meet, the result depends on
    # the in-plane spacing (1, 2 or 3 mm per axis), so a pixel metric or a wrong axis's spacing fails
    spacing = (1.0, 2.0, 3.0)
    shape = [12, 11, 10]
    shape[axis] = 8
    in_plane = [a for a in range(3) if a != axis]
    size = (shape[in_plane[0]], shape[in_plane[1]])
    first, second = np.zeros(size, bool), np.zeros(size, bool)
    first[2:10, 4:7] = True
    second[4:7, 1:9] = True
    second[0, 0] = True
    out = shape_based_interpolation([InputPlane(axis, 2, first), InputPlane(axis, 5, second)], shape, spacing, 1)
    da, db = (brute_force_signed_distance_mm(m, np.asarray(spacing)[in_plane]) for m in (first, second))
    for index, t in ((3, 1 / 3), (4, 2 / 3)):
        value = (1 - t) * da + t * db
        section = np.take(out, index, axis=axis)
        assert section[value < -1e-9].all() and not section[value > 1e-9].any()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_midway_between_discs_of_5_and_9_mm_has_radius_7_mm(axis):
    spacing = (1.0, 2.0, 3.0)
    shape = (31, 31, 31)
    in_plane = [a for a in range(3) if a != axis]
    pix = np.asarray(spacing)[in_plane]
    u, v = np.indices((shape[in_plane[0]], shape[in_plane[1]]))
    radius_mm = np.hypot((u - 15) * pix[0], (v - 15) * pix[1])
    planes = [InputPlane(axis, 10, radius_mm <= 5.0), InputPlane(axis, 20, radius_mm <= 9.0)]
    midway = np.take(shape_based_interpolation(planes, shape, spacing, 1), 15, axis=axis)
    tolerance = pix.max()  # within a voxel
    assert midway[radius_mm <= 7.0 - tolerance].all()
    assert not midway[radius_mm >= 7.0 + tolerance].any()
    area_radius = np.sqrt(midway.sum() * pix.prod() / np.pi)
    assert abs(area_radius - 7.0) < pix.min()


def test_errors():
    mask = np.zeros((10, 8), bool)
    with pytest.raises(ValueError, match="axis"):
        InputPlane(3, 0, mask)
    with pytest.raises(ValueError, match="2-D boolean"):
        InputPlane(0, 0, mask.astype(np.uint8))
    with pytest.raises(ValueError, match="2-D boolean"):
        InputPlane(0, 0, np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="at least one"):
        visual_hull([], (4, 10, 8), (1, 1, 1))
    with pytest.raises(ValueError, match="at least one"):
        shape_based_interpolation([], (4, 10, 8), (1.0, 1.0, 1.0), 1)
    square = np.zeros((10, 10), bool)
    with pytest.raises(ValueError, match="one axis"):
        shape_based_interpolation([InputPlane(0, 1, square), InputPlane(1, 2, square)], (10, 10, 10), (1, 1, 1), 3)
    with pytest.raises(ValueError, match="distinct"):
        shape_based_interpolation([InputPlane(0, 1, square), InputPlane(0, 1, square)], (10, 10, 10), (1, 1, 1), 3)
    with pytest.raises(ValueError, match="does not match"):
        extruded(InputPlane(0, 1, mask), (4, 8, 10), 3)
    with pytest.raises(ValueError, match="outside"):
        extruded(InputPlane(0, 4, mask), (4, 10, 8), 3)
    with pytest.raises(ValueError, match="at least one voxel"):
        extruded(InputPlane(0, 1, mask), (4, 10, 8), 0)
