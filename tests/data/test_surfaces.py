import io

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from sam3d_med.data.geometry import world_to_voxel
from sam3d_med.data.phantom import orientation_affine
from sam3d_med.data.surfaces import (distance_to_background_mm, mask_surface_mesh, mesh_obj_text, signed_distance_mm,
                                    voxel_volume_mm3)
from tests.conftest import ellipsoid_mask


def test_sdf_sign_and_millimetre_units():
    mask = ellipsoid_mask(semi_axes=(8, 8, 8), centre=(20, 20, 20))
    sdf = signed_distance_mm(mask, np.array([3.0, 3.0, 3.0]))
    assert sdf.dtype == np.float32
    assert np.all(sdf[mask] < 0) and np.all(sdf[~mask] > 0)
    # centre: the nearest outside voxel of a voxelised radius-8 sphere is at offset (8, 1, 0),
    # sqrt(65) voxels of 3 mm away
    assert sdf[20, 20, 20] == pytest.approx(-3.0 * np.sqrt(65.0), abs=1e-4)
    # a point 5 voxels beyond the surface along i: nearest inside voxel centre is 5 voxels away = 15 mm
    assert sdf[33, 20, 20] == pytest.approx(15.0, abs=1e-4)
    # anisotropic spacing is honoured: distances along j scale with spacing_j
    aniso = signed_distance_mm(mask, np.array([1.0, 2.0, 1.0]))
    assert aniso[20, 33, 20] == pytest.approx(10.0, abs=1e-4)


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (0.8, 1.5, 2.5)])
def test_distance_to_background_equals_scipy_transform(spacing):
    rng = np.random.default_rng(1)
    mask = ndimage.binary_dilation(rng.random((17, 23, 11)) > 0.97, iterations=2)
    ours = distance_to_background_mm(mask, spacing)
    np.testing.assert_array_equal(ours, ndimage.distance_transform_edt(mask, sampling=spacing))
    assert ours.shape == mask.shape and np.all(ours[~mask] == 0) and ours.max() > 2 * min(spacing)


def test_sdf_of_empty_and_full_masks():
    empty = signed_distance_mm(np.zeros((4, 4, 4), bool), np.ones(3))
    assert np.all(empty > 0) and np.all(np.isfinite(empty))
    full = signed_distance_mm(np.ones((4, 4, 4), bool), np.ones(3))
    assert np.all(full < 0)


@pytest.mark.parametrize("axcodes", ["RAS", "LAS", "LPS"])  # LAS: a mirroring affine (det < 0)
def test_mesh_is_watertight_outward_and_in_world_mm(axcodes):
    affine = orientation_affine(axcodes, 3.0, (40, 40, 40), (15.0, -60.0, 210.0), oblique_deg=12)
    mask = ellipsoid_mask()
    mesh = mask_surface_mesh(signed_distance_mm(mask, np.full(3, 3.0)), affine)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(voxel_volume_mm3(mask, affine), rel=0.03)
    # vertex normals point away from the centroid
    outward = np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices - mesh.vertices.mean(0))
    assert (outward > 0).mean() > 0.99
    # vertices lie on the mask boundary in voxel space: within one voxel of the mask's bounding box
    ijk = world_to_voxel(np.asarray(mesh.vertices), affine)
    occupied = np.argwhere(mask)
    assert np.all(ijk >= occupied.min(0) - 1) and np.all(ijk <= occupied.max(0) + 1)


def test_mesh_of_empty_mask_is_none():
    assert mask_surface_mesh(signed_distance_mm(np.zeros((5, 5, 5), bool), np.ones(3)), np.eye(4)) is None


def test_obj_text_reads_back_exactly_with_trimesh():
    affine = orientation_affine("LAS", 3.0, (40, 40, 40), (15.0, -60.0, 210.0), oblique_deg=12)
    mesh = mask_surface_mesh(signed_distance_mm(ellipsoid_mask(), np.full(3, 3.0)), affine)
    back = trimesh.load(io.BytesIO(mesh_obj_text(mesh).encode()), file_type="obj", process=False)
    assert np.array_equal(back.faces, mesh.faces)
    assert np.abs(back.vertices - mesh.vertices).max() <= 5e-6  # 5 decimals of a mm
    assert back.is_watertight and back.volume == pytest.approx(mesh.volume, rel=1e-6)
