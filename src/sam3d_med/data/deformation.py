"""Smooth random diffeomorphic deformations: stationary velocity fields (SVF) integrated by scaling
and squaring.

A deformation is the map ``phi(x) = x + u(x)`` on a regular grid of voxels. ``u`` is stored as a
*displacement field* of shape ``(3, I, J, K)``, float64, in **mm**: component ``c`` is the displacement
along the grid's array axis ``c`` (index direction ``i``, ``j`` or ``k``), sampled at every voxel centre.
On a grid whose array axes are the world axes (e.g. a RAS+ canonical grid: affine with a positive
diagonal) the components are world RAS+ millimetres; otherwise rotate them by the grid's direction
cosines (``affine[:3, :3] / spacing``) to get world millimetres. ``spacing_mm`` is the voxel size along
the three array axes (one number for isotropic grids).

The diffeomorphism is the group exponential of a stationary velocity field ``v`` (same layout and units):
``phi = exp(v)``, computed by scaling and squaring, ``exp(v) = exp(v / 2^N)^(2^N)`` with
``exp(v / 2^N) ~ id + v / 2^N`` (Arsigny, Commowick, Pennec, Ayache, "A log-Euclidean framework for
statistics on diffeomorphisms", MICCAI 2006; the same integration as VoxelMorph's ``VecInt`` layer,
Dalca et al. 2018/2019, and ANTs' exponential map of a velocity field). Its inverse is ``exp(-v)``.
Each squaring composes the displacement with itself, ``u <- u + u o (id + u)``, sampling ``u`` at
the moved points by trilinear interpolation (``scipy.ndimage.map_coordinates``, order 1, mode
"nearest": the field is extended by its border values outside the grid).

Warping follows the *pull-back* convention of image registration (as VoxelMorph's SpatialTransformer
and ITK's ResampleImageFilter with a displacement-field transform): the output at voxel ``x`` takes
the input's value at ``phi(x) = x + u(x)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DEFAULT_SQUARINGS = 7


def _spacing3(spacing_mm) -> np.ndarray:
    """Voxel size along the three array axes (mm) from one number or three."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if not np.all(spacing > 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    return spacing


def _check_field(field: np.ndarray, what: str) -> np.ndarray:
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"{what} must have shape (3, I, J, K), got {field.shape}")
    return field


def random_velocity_field(shape_ijk, spacing_mm, rng: np.random.Generator, amplitude_mm: float,
                          smoothness_mm: float) -> np.ndarray:
    """A smooth random stationary velocity field, (3, I, J, K) float64 in mm along the grid's array axes.

    Each component is white Gaussian noise (``rng.standard_normal``, drawn even when ``amplitude_mm``
    is 0 so that later draws from ``rng`` do not depend on it) smoothed by a Gaussian of standard
    deviation ``smoothness_mm`` (``scipy.ndimage.gaussian_filter`` with sigma ``smoothness_mm /
    spacing_mm`` voxels per axis, mode "reflect"), then rescaled so that the field's **RMS magnitude**
    over the grid, ``sqrt(mean_x |v(x)|^2)``, equals ``amplitude_mm``. The displacement of
    ``exp(v)`` has about the same RMS magnitude (a little more where the flow keeps a point in a
    region of like velocity); its largest values are typically 2-3 times the RMS.
    """
    shape = tuple(int(n) for n in shape_ijk)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape_ijk must be three positive sizes, got {shape_ijk!r}")
    if not amplitude_mm >= 0:
        raise ValueError(f"amplitude_mm must be 0 or more, got {amplitude_mm!r}")
    if not smoothness_mm > 0:
        raise ValueError(f"smoothness_mm must be positive, got {smoothness_mm!r}")
    sigma_vox = smoothness_mm / _spacing3(spacing_mm)
    noise = rng.standard_normal((3,) + shape)
    field = np.stack([ndimage.gaussian_filter(noise[c], sigma=sigma_vox, mode="reflect") for c in range(3)])
    rms = float(np.sqrt(np.mean(np.sum(field ** 2, axis=0))))
    if amplitude_mm == 0 or rms == 0:
        return np.zeros_like(field)
    return field * (amplitude_mm / rms)


def moved_voxel_coordinates(displacement_mm: np.ndarray, spacing_mm) -> np.ndarray:
    """(3, I, J, K) voxel coordinates (float, index units) of ``x + u(x)`` for every voxel ``x``."""
    u = _check_field(displacement_mm, "displacement_mm")
    spacing = _spacing3(spacing_mm)
    coords = np.indices(u.shape[1:], dtype=np.float64)
    coords += u / spacing[:, None, None, None]
    return coords


def sample_at_moved_points(field: np.ndarray, displacement_mm: np.ndarray, spacing_mm) -> np.ndarray:
    """``field o (id + u)``: each component of ``field`` (C, I, J, K) sampled at ``x + u(x)``, by
    trilinear interpolation, values beyond the grid taken from its border (mode "nearest")."""
    coords = moved_voxel_coordinates(displacement_mm, spacing_mm)
    field = np.asarray(field, dtype=np.float64)
    return np.stack([ndimage.map_coordinates(field[c], coords, order=1, mode="nearest") for c in range(field.shape[0])])


def compose_displacements(outer_mm: np.ndarray, inner_mm: np.ndarray, spacing_mm) -> np.ndarray:
    """Displacement (3, I, J, K, mm) of ``phi_outer o phi_inner``: ``x -> x + w(x)`` with
    ``w(x) = inner(x) + outer(x + inner(x))`` (the inner map is applied first)."""
    inner = _check_field(inner_mm, "inner_mm")
    return inner + sample_at_moved_points(_check_field(outer_mm, "outer_mm"), inner, spacing_mm)


def integrate_velocity(velocity_mm: np.ndarray, spacing_mm, squarings: int = DEFAULT_SQUARINGS) -> np.ndarray:
    """Displacement ``u`` (3, I, J, K) float64, mm, of ``phi = exp(v)`` by scaling and squaring.

    ``u_0 = v / 2^squarings``, then ``squarings`` times ``u <- compose_displacements(u, u)``
    (Arsigny et al. 2006; VoxelMorph's ``VecInt``, 7 steps by default as there). ``exp(-v)`` is the
    inverse of ``exp(v)`` up to the interpolation error.
    """
    v = _check_field(velocity_mm, "velocity_mm")
    if int(squarings) < 0:
        raise ValueError(f"squarings must be 0 or more, got {squarings!r}")
    u = v / float(2 ** int(squarings))
    for _ in range(int(squarings)):
        u = compose_displacements(u, u, spacing_mm)
    return u


def jacobian_determinant(displacement_mm: np.ndarray, spacing_mm) -> np.ndarray:
    """(I, J, K) determinant of the Jacobian of ``x -> x + u(x)``: ``det(I + du/dx)``.

    Derivatives by central differences (one-sided at the border) of the mm displacement over the mm
    voxel size (``np.gradient``), so the result is dimensionless: the local volume ratio (output
    volume element per input volume element); <= 0 where the map folds.
    """
    u = _check_field(displacement_mm, "displacement_mm")
    spacing = _spacing3(spacing_mm)
    # jac[c][a] = d u_c / d x_a, plus the identity
    jac = [[g + (1.0 if a == c else 0.0) for a, g in enumerate(np.gradient(u[c], *spacing))] for c in range(3)]
    return (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))


def warp_labels(label_ijk: np.ndarray, displacement_mm: np.ndarray, spacing_mm, background: int = 0) -> np.ndarray:
    """Label map warped by pull-back, nearest neighbour: output voxel ``x`` takes the label of the
    voxel nearest to ``x + u(x)`` (``background`` where that point is outside the grid by more than
    half a voxel). Same shape and dtype as ``label_ijk``; no new label values are created."""
    label = np.asarray(label_ijk)
    coords = moved_voxel_coordinates(displacement_mm, spacing_mm)
    if coords.shape[1:] != label.shape:
        raise ValueError(f"displacement grid {coords.shape[1:]} does not match the label grid {label.shape}")
    return take_nearest(label, coords, background)


def take_nearest(volume: np.ndarray, coords: np.ndarray, background=0) -> np.ndarray:
    """``volume`` sampled at voxel coordinates ``coords`` (3, ...) by nearest neighbour (rounding,
    half to even); ``background`` outside the volume. Exact for label maps (no interpolation)."""
    index = np.rint(coords).astype(np.intp)
    inside = np.ones(index.shape[1:], dtype=bool)
    for axis in range(3):
        inside &= (index[axis] >= 0) & (index[axis] < volume.shape[axis])
    out = np.full(index.shape[1:], background, dtype=volume.dtype)
    out[inside] = volume[index[0][inside], index[1][inside], index[2][inside]]
    return out
