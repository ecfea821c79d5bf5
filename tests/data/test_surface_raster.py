import numpy as np
import pytest
import trimesh

from sam3d_med.data.phantom import orientation_affine
from sam3d_med.data.surface_raster import (close_surface, enclosed_volume_mm3, labels_from_fractions,
                                           rasterise_closed_surface)
from sam3d_med.data.geometry import voxel_to_world

SHAPE = (24, 24, 24)


def sphere(radius=20.0, centre=(5.0, -3.0, 100.0)):
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return np.asarray(mesh.vertices) + np.asarray(centre), np.asarray(mesh.faces)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR"])
def test_a_sphere_fills_its_volume_at_its_place_in_any_grid_orientation(axcodes):
    vertices, faces = sphere()
    affine = orientation_affine(axcodes, 2.0, SHAPE, (5.0, -3.0, 100.0))
    fraction = rasterise_closed_surface(vertices, faces, affine, SHAPE)
    volume = fraction.sum() * 8.0
    assert volume == pytest.approx(enclosed_volume_mm3(vertices, faces), rel=0.01)
    centroid = voxel_to_world((np.argwhere(fraction >= 0.5)).mean(0), affine)
    assert np.allclose(centroid, (5.0, -3.0, 100.0), atol=0.5)
    assert (fraction[0] == 0).all() and fraction[12, 12, 12] == 1.0


def test_a_cut_away_cap_is_closed_and_the_volume_is_the_capped_one():
    vertices, faces = sphere()
    top = vertices[faces].mean(1)[:, 2] > 100.0 + 16.0  # a valve-like opening: the top cap removed
    open_faces = faces[~top]
    closed_vertices, closed_faces, loops = close_surface(vertices, open_faces)
    assert loops == 1
    mesh = trimesh.Trimesh(closed_vertices, closed_faces)
    assert mesh.is_watertight
    affine = orientation_affine("RAS", 2.0, SHAPE, (5.0, -3.0, 100.0))
    fraction = rasterise_closed_surface(closed_vertices, closed_faces, affine, SHAPE)
    assert fraction.sum() * 8.0 == pytest.approx(enclosed_volume_mm3(closed_vertices, closed_faces), rel=0.015)
    # without the cap, rays through the opening along k see one crossing fewer: the vote of the other
    # two directions keeps the interior (a small opening), and the cap only adds the missing segment
    assert enclosed_volume_mm3(closed_vertices, closed_faces) < enclosed_volume_mm3(vertices, faces)


def test_a_stray_triangle_and_a_repeated_face_do_not_streak():
    vertices, faces = sphere()
    clean = rasterise_closed_surface(vertices, faces, orientation_affine("RAS", 2.0, SHAPE, (5, -3, 100)), SHAPE)
    far = len(vertices)
    stray_vertices = np.vstack([vertices, [[5.0, -3.0, 150.0]]])  # a fin from the surface to a far point
    stray_faces = np.vstack([faces, faces[:1], [[faces[0, 0], faces[0, 1], far]]])
    v, f, _ = close_surface(stray_vertices, stray_faces)
    dirty = rasterise_closed_surface(v, f, orientation_affine("RAS", 2.0, SHAPE, (5, -3, 100)), SHAPE)
    assert np.abs(dirty - clean).sum() * 8.0 < 0.01 * clean.sum() * 8.0


def test_labels_take_the_majority_label_of_at_least_half_a_voxel():
    a = np.array([[[0.6, 0.4, 0.2]]], dtype=np.float32)
    b = np.array([[[0.3, 0.5, 0.2]]], dtype=np.float32)
    assert labels_from_fractions({1: a, 4: b}).tolist() == [[[1, 4, 0]]]
