import numpy as np
import pytest
from matplotlib.figure import Figure

from sam3d_med.data.surfaces import mask_surface_mesh, signed_distance_mm
from sam3d_med.viz.palette import AGREE, FALSE_NEGATIVE, FALSE_POSITIVE, WRONG_CLASS, class_colour, error_codes
from sam3d_med.viz.render import _camera_direction, mesh_views_figure
from sam3d_med.viz.slices import (_plane, comparison_figure, display_slices, draw_slice, labels_from_logits,
                                  save_figure, view_name)
from tests.conftest import assert_png_not_blank, ellipsoid_mask

RAS_3MM = np.diag([3.0, 3.0, 3.0, 1.0])


def test_error_codes_cover_every_case():
    true = np.array([0, 0, 1, 1, 2, 0])
    pred = np.array([0, 1, 1, 0, 1, 0])
    assert error_codes(pred, true).tolist() == [0, FALSE_POSITIVE, AGREE, FALSE_NEGATIVE, WRONG_CLASS, 0]


def test_labels_from_logits_takes_the_most_confident_positive_class():
    logits = {1: np.array([2.0, -1.0, 0.5, -3.0]), 3: np.array([1.0, 0.5, 1.5, -0.1])}
    assert labels_from_logits(logits).tolist() == [1, 3, 3, 0]


def test_display_slices_spread_through_the_structure_and_keep_the_input_slice():
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[20:41, 10:30, 30:50] = 2
    chosen = display_slices(labels, per_axis=3, include=(2, 31))
    assert [a for a, _ in chosen] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(20 <= i <= 40 for a, i in chosen if a == 0)
    assert (2, 31) in chosen


def test_panels_show_the_patient_right_on_the_right_and_anterior_up():
    """The display plane is [q, p] for imshow(origin="lower"): columns follow i (towards R on a RAS+
    grid), rows follow j (towards A) in an axial view; the panel's letters say so."""
    volume = np.zeros((8, 6, 4))
    volume[7, 5, 2] = 1.0  # far right, far anterior
    plane = _plane(volume, 2, 2)
    assert plane.shape == (6, 8) and plane[5, 7] == 1.0  # top row (origin lower), last column
    assert view_name(RAS_3MM, 2) == "axial" and view_name(RAS_3MM, 0) == "sagittal"
    fig = Figure()
    ax = fig.add_subplot()
    draw_slice(ax, volume, RAS_3MM, 2, 2)
    letters = {t.get_text(): t.get_position() for t in ax.texts}
    assert letters["R"][0] > letters["L"][0] and letters["A"][1] > letters["P"][1]
    lps = np.diag([-3.0, -3.0, 3.0, 1.0])  # an LPS grid: the same code names the edges the other way round
    ax = fig.add_subplot()
    draw_slice(ax, volume, lps, 2, 2)
    letters = {t.get_text(): t.get_position() for t in ax.texts}
    assert letters["L"][0] > letters["R"][0] and letters["P"][1] > letters["A"][1]


def test_comparison_figure_is_drawn(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (64, 64, 64)).astype(np.float32)
    truth = np.zeros((64, 64, 64), np.uint8)
    truth[ellipsoid_mask((64, 64, 64), (30, 32, 30), (10, 8, 12))] = 2
    pred = np.zeros_like(truth)
    pred[ellipsoid_mask((64, 64, 64), (33, 32, 30), (10, 8, 12))] = 2
    fig = comparison_figure(image, RAS_3MM, pred, {2: "left_ventricle"}, true_labels_ijk=truth, input_slice=(2, 30),
                            title="test")
    assert len(fig.axes) == 4 * 9
    pixels = assert_png_not_blank(save_figure(fig, tmp_path / "grid.png"), min_size=(1000, 600))
    # the error colours are on the figure: false positives (magenta) and false negatives (cyan) exist
    rgb = np.round(pixels[..., :3] * 255).astype(int).reshape(-1, 3)
    assert (np.all(rgb == [255, 0, 255], axis=1)).any() and (np.all(rgb == [0, 217, 255], axis=1)).any()


def test_mesh_renders(tmp_path):
    mask = ellipsoid_mask((40, 40, 40), (20, 20, 20), (6, 8, 12))
    mesh = mask_surface_mesh(signed_distance_mm(mask, np.array([3.0, 3.0, 3.0])), RAS_3MM)
    fig = mesh_views_figure([("truth", [(mesh, class_colour(1))]), ("prediction", [])], title="t")
    assert len(fig.axes) == 8
    assert_png_not_blank(save_figure(fig, tmp_path / "views.png"), min_size=(500, 900), min_drawn=0.02)
    assert np.allclose(_camera_direction(0, 90), [0, 1, 0], atol=1e-12)  # "anterior": the camera stands at +y


@pytest.mark.parametrize("bad", [{}])
def test_labels_from_logits_needs_a_class(bad):
    with pytest.raises(ValueError):
        labels_from_logits(bad)


def test_display_simplification_keeps_the_shape_within_budget():
    import trimesh

    from sam3d_med.viz.report import simplified_for_display

    sphere = trimesh.creation.icosphere(subdivisions=6, radius=40.0)  # 81,920 faces, radius in mm
    vertices, faces = simplified_for_display(sphere.vertices, sphere.faces, max_faces=5000)
    assert 500 < len(faces) <= 5000 and faces.max() == len(vertices) - 1 and faces.min() == 0
    radii = np.linalg.norm(vertices, axis=1)
    assert np.all(np.abs(radii - 40.0) < 4.0)  # still the same sphere, to a few mm
    same_v, same_f = simplified_for_display(sphere.vertices, sphere.faces, max_faces=10**6)
    assert len(same_f) == len(sphere.faces)  # under budget: untouched
