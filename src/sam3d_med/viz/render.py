"""Mesh renders without OpenGL: matplotlib's 3-D axes, flat shading from the face normals.

Meshes are in world mm (RAS+). Viewpoints name where the camera stands (matplotlib's elevation and
azimuth about the world z axis; azimuth 0 = camera on +x = the patient's right, 90 = anterior).
"""

from __future__ import annotations

import numpy as np
import trimesh
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

# name -> (elevation, azimuth) in degrees
VIEWPOINTS = {
    "anterior": (0.0, 90.0),
    "left": (0.0, 180.0),
    "superior": (90.0, -90.0),
    "oblique": (25.0, 55.0),
}


def _camera_direction(elevation: float, azimuth: float) -> np.ndarray:
    e, a = np.radians(elevation), np.radians(azimuth)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def _shaded(mesh: trimesh.Trimesh, rgb, towards_camera: np.ndarray) -> np.ndarray:
    """Per-face RGB: ambient + diffuse light from the camera (a head light)."""
    lambert = np.clip(mesh.face_normals @ towards_camera, 0.0, 1.0)
    return np.clip(np.asarray(rgb)[None, :] * (0.35 + 0.65 * lambert)[:, None], 0.0, 1.0)


def draw_meshes(ax, meshes: list[tuple[trimesh.Trimesh, tuple]], elevation: float, azimuth: float,
                bounds: np.ndarray | None = None) -> None:
    """Draw (mesh, rgb) pairs on a 3-D axes as one collection (so faces of all meshes are depth
    sorted together), equal scale on the three axes within ``bounds`` (2, 3) mm."""
    towards = _camera_direction(elevation, azimuth)
    if meshes:
        polygons = np.concatenate([m.vertices[m.faces] for m, _ in meshes])
        colours = np.concatenate([_shaded(m, rgb, towards) for m, rgb in meshes])
        ax.add_collection3d(Poly3DCollection(polygons, facecolors=colours, edgecolors="none"))
    if bounds is None:
        bounds = common_bounds([m for m, _ in meshes])
    centre, half = bounds.mean(axis=0), (bounds[1] - bounds[0]).max() / 2
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=elevation, azim=azimuth)
    ax.set_axis_off()


def common_bounds(meshes: list[trimesh.Trimesh]) -> np.ndarray:
    """(2, 3) mm box around all meshes, grown by 5 %; a unit box when there is none."""
    if not meshes:
        return np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    lo = np.min([m.bounds[0] for m in meshes], axis=0)
    hi = np.max([m.bounds[1] for m in meshes], axis=0)
    pad = 0.05 * (hi - lo).max()
    return np.stack([lo - pad, hi + pad])


def mesh_views_figure(columns: list[tuple[str, list[tuple[trimesh.Trimesh, tuple]]]],
                      viewpoints: dict[str, tuple[float, float]] = VIEWPOINTS, title: str = "",
                      legend: list | None = None) -> Figure:
    """A grid of renders: one row per viewpoint, one column per (name, [(mesh, rgb), ...]) entry;
    every panel has the same scale, so columns can be compared (e.g. truth beside prediction)."""
    bounds = common_bounds([m for _, group in columns for m, _ in group])
    fig = Figure(figsize=(3.0 * len(columns) + 0.4, 2.8 * len(viewpoints) + 0.8))
    for row, (view, (elevation, azimuth)) in enumerate(viewpoints.items()):
        for col, (name, group) in enumerate(columns):
            ax = fig.add_subplot(len(viewpoints), len(columns), row * len(columns) + col + 1, projection="3d")
            draw_meshes(ax, group, elevation, azimuth, bounds)
            ax.set_title(f"{name}: {view}" if name else view, fontsize=9)
            if not group:
                ax.text2D(0.5, 0.5, "(empty)", transform=ax.transAxes, ha="center")
    if legend:
        fig.legend(handles=legend, loc="lower center", ncol=min(5, len(legend)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93 if title else 0.97, bottom=0.06 if legend else 0.01,
                        wspace=0.0, hspace=0.1)
    return fig
