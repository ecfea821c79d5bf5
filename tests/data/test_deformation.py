import numpy as np
import pytest

from sam3d_med.data.deformation import (
    compose_displacements,
    integrate_velocity,
    jacobian_determinant,
    random_velocity_field,
    warp_labels,
)
from sam3d_med.data.template_phantom import DEFAULT_AMPLITUDE_MM, DEFAULT_SMOOTHNESS_MM


def _norm(field):
    return np.linalg.norm(field, axis=0)


def test_velocity_field_has_the_requested_rms_and_is_smooth_and_reproducible():
    v = random_velocity_field((24, 20, 16), 3.0, np.random.default_rng(1), 5.0, 20.0)
    assert v.shape == (3, 24, 20, 16) and v.dtype == np.float64
    assert np.sqrt(np.mean(np.sum(v ** 2, axis=0))) == pytest.approx(5.0, rel=1e-9)
    # smooth: neighbouring voxels (3 mm apart) nearly equal for a 20 mm correlation length
    assert np.corrcoef(v[0, 1:].ravel(), v[0, :-1].ravel())[0, 1] > 0.95
    assert np.array_equal(v, random_velocity_field((24, 20, 16), 3.0, np.random.default_rng(1), 5.0, 20.0))
    rough = random_velocity_field((24, 20, 16), 3.0, np.random.default_rng(1), 5.0, 1.0)
    assert np.corrcoef(rough[0, 1:].ravel(), rough[0, :-1].ravel())[0, 1] < 0.5
    assert not random_velocity_field((8, 8, 8), 3.0, np.random.default_rng(1), 0.0, 20.0).any()


@pytest.mark.parametrize("seed", range(3))
def test_default_deformation_does_not_fold_on_the_phantom_grid(seed):
    v = random_velocity_field((64, 64, 64), 3.0, np.random.default_rng(seed), DEFAULT_AMPLITUDE_MM,
                              DEFAULT_SMOOTHNESS_MM)
    u = integrate_velocity(v, 3.0)
    jac = jacobian_determinant(u, 3.0)
    assert jac.min() > 0, jac.min()
    assert _norm(u).max() > DEFAULT_AMPLITUDE_MM  # it does move things


def test_an_absurd_deformation_does_fold():
    """The folding check is not vacuous: 60 mm RMS at 3 mm correlation folds space."""
    v = random_velocity_field((32, 32, 32), 3.0, np.random.default_rng(0), 60.0, 3.0)
    assert (jacobian_determinant(integrate_velocity(v, 3.0), 3.0) <= 0).any()


def test_exp_of_minus_v_inverts_exp_of_v():
    amplitude = DEFAULT_AMPLITUDE_MM
    v = random_velocity_field((32, 32, 32), 3.0, np.random.default_rng(4), amplitude, DEFAULT_SMOOTHNESS_MM)
    forward, backward = integrate_velocity(v, 3.0), integrate_velocity(-v, 3.0)
    assert _norm(forward).max() > 2 * amplitude
    for residual in (compose_displacements(backward, forward, 3.0), compose_displacements(forward, backward, 3.0)):
        assert _norm(residual).max() < 0.25 * amplitude  # the border, where the field is extended, included
        assert _norm(residual)[4:-4, 4:-4, 4:-4].max() < 0.05 * amplitude
    # the naive inverse, -u, is far worse: the composition really is checked
    naive = compose_displacements(-forward, forward, 3.0)
    assert _norm(naive)[4:-4, 4:-4, 4:-4].max() > 5 * _norm(compose_displacements(backward, forward, 3.0))[4:-4, 4:-4, 4:-4].max()


def test_constant_velocity_integrates_to_the_same_translation():
    v = np.broadcast_to(np.array([1.5, -2.0, 0.7])[:, None, None, None], (3, 10, 11, 12)).copy()
    np.testing.assert_allclose(integrate_velocity(v, (1.0, 2.0, 3.0)), v, atol=1e-9)


def test_linear_velocity_integrates_to_the_exponential_not_to_itself():
    """v(x) = a (x - c) flows to x -> c + e^a (x - c): scaling and squaring gives e^a - 1, not a."""
    a, spacing = 0.2, 2.0
    shape = (32, 32, 32)
    x = np.indices(shape, dtype=np.float64) * spacing
    c = (np.array(shape) - 1)[:, None, None, None] * spacing / 2
    u = integrate_velocity(a * (x - c), spacing)
    inner = (slice(None),) + (slice(8, 24),) * 3  # points whose path stays in the grid
    np.testing.assert_allclose(u[inner], (np.exp(a) - 1.0) * (x - c)[inner], atol=1e-3 * 16 * spacing)
    assert np.abs(u[inner] - a * (x - c)[inner]).max() > 0.3


def test_jacobian_determinant_of_a_linear_map():
    matrix = np.array([[0.1, 0.05, 0.0], [-0.2, 0.3, 0.1], [0.0, 0.02, -0.4]])
    spacing = (1.0, 2.0, 1.5)
    x = np.indices((9, 10, 11), dtype=np.float64) * np.array(spacing)[:, None, None, None]
    u = np.einsum("ca,aijk->cijk", matrix, x)
    jac = jacobian_determinant(u, spacing)
    np.testing.assert_allclose(jac, np.linalg.det(np.eye(3) + matrix), rtol=1e-10)
    assert jacobian_determinant(np.zeros((3, 4, 4, 4)), 1.0).min() == 1.0


def test_warp_labels_pulls_back_in_mm_per_axis():
    label = np.zeros((8, 9, 10), dtype=np.uint8)
    label[2:4, 3:5, 4:6] = 3
    spacing = (1.0, 2.0, 3.0)
    u = np.zeros((3,) + label.shape)
    u[1] = 4.0  # mm along j: 2 voxels of 2 mm
    out = warp_labels(label, u, spacing)
    assert out.dtype == np.uint8
    expected = np.zeros_like(label)
    expected[2:4, 1:3, 4:6] = 3  # output x takes the label at x + u(x): the object moves by -u
    assert np.array_equal(out, expected)
    u[1] = 0.0
    u[2] = -3.0 * 20  # everything pulled from outside the grid: background
    assert not warp_labels(label, u, spacing).any()
