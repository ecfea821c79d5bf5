"""Surfaces (triangle meshes in world mm) to label volumes: capping open surfaces and rasterising them.

Cardiac surface models are often open where the valves and veins are cut away (the Strocchi et al.
2020 cavity meshes are: 1-3 boundary loops each). A cavity's volume is the volume its surface
encloses once every boundary loop is closed by a flat cap; ``cap_boundary_loops`` adds each loop's
cap as a fan of triangles to the loop's centroid (the loops are near-planar valve and vein rims).

``rasterise_closed_surface`` then decides inside/outside by ray parity along the grid's third axis on
a grid ``oversample`` times finer than the target (each target voxel holds ``oversample``^3 sample
points at its sub-voxel centres), and returns each target voxel's inside fraction. Parity needs
only a closed surface, not consistent face orientation. Frames: mesh vertices are world RAS+ mm;
``affine`` maps the target grid's voxel [i, j, k, 1] to world RAS+ mm (any orientation and spacing).
"""

from __future__ import annotations

import numpy as np



def close_surface(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(vertices (V', 3), faces (F', 3), number of boundary loops capped).

    Repeated faces (the same three vertices) are kept once. A boundary edge is an edge used by one
    face; boundary edges that chain into simple loops are closed by a new vertex at the loop's
    centroid and one triangle per edge, oriented as the faces beside it. Boundary edges that do not
    form simple loops (next to an edge used by three faces) are left as they are: the rasteriser's
    vote over three ray directions tolerates such small defects."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first)]
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # directed, as in the faces
    _, inverse, counts = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True, return_counts=True)
    boundary = edges[counts[inverse.ravel()] == 1]
    following_of = {int(a): int(b) for a, b in boundary}  # a -> b as its face runs
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    new_vertices, new_faces, loops = [vertices], [faces], 0
    unvisited = {v for v, n in neighbours.items() if len(n) == 2}
    while unvisited:
        start = unvisited.pop()
        loop, previous, current = [start], None, start
        while True:
            a, b = neighbours[current]
            following = b if a == previous else a
            if following == start or following not in unvisited:
                break
            loop.append(following)
            unvisited.discard(following)
            previous, current = current, following
        if following != start or len(loop) < 3:  # not a simple loop: left open
            continue
        centre_index = sum(len(v) for v in new_vertices)
        new_vertices.append(vertices[loop].mean(axis=0, keepdims=True))
        # each cap triangle runs along its boundary edge against the face beside it (b -> a), so the
        # capped surface keeps one orientation and its signed volume stays meaningful
        starts = np.asarray(loop)
        ends = np.asarray([following_of[v] for v in loop])
        new_faces.append(np.stack([ends, starts, np.full_like(starts, centre_index)], axis=1))
        loops += 1
    return np.concatenate(new_vertices), np.concatenate(new_faces), loops


def enclosed_volume_mm3(vertices: np.ndarray, faces: np.ndarray) -> float:
    """|signed volume| of a closed, consistently oriented triangle surface (divergence theorem), mm^3."""
    v = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return float(abs(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum()) / 6.0)


def _parity_along_last_axis(triangles: np.ndarray, fine_shape: np.ndarray) -> np.ndarray:
    """Inside (bool, ``fine_shape``) of sample points at integer coordinates by the parity of the
    surface crossings of a ray from each point towards -axis 2; ``triangles`` (F, 3, 3) in sample
    coordinates. Rays are nudged by a fixed irrational sub-sample offset so that none passes exactly
    through an edge or a vertex lying on grid lines."""
    nudge = np.array([np.sqrt(2) * 1e-4, np.sqrt(3) * 1e-4])
    crossings = np.zeros(tuple(fine_shape), dtype=np.int32)
    for tri in triangles:
        xy, z = tri[:, :2], tri[:, 2]
        lo = np.maximum(np.ceil(xy.min(0) - nudge), 0).astype(int)
        hi = np.minimum(np.floor(xy.max(0) - nudge), fine_shape[:2] - 1).astype(int)
        if (hi < lo).any():
            continue
        a, b = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        a, b = a.ravel(), b.ravel()
        px, py = a + nudge[0], b + nudge[1]
        (x0, y0), (x1, y1), (x2, y2) = xy
        det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(det) < 1e-12:  # seen edge-on: the ray grazes it, no crossing
            continue
        w0 = ((y1 - y2) * (px - x2) + (x2 - x1) * (py - y2)) / det
        w1 = ((y2 - y0) * (px - x2) + (x0 - x2) * (py - y2)) / det
        hit = (w0 >= 0) & (w1 >= 0) & (w0 + w1 <= 1)
        depth = w0[hit] * z[0] + w1[hit] * z[1] + (1 - w0[hit] - w1[hit]) * z[2]
        first_after = np.maximum(np.ceil(depth).astype(int), 0)  # the first sample beyond the crossing
        keep = first_after < fine_shape[2]
        np.add.at(crossings, (a[hit][keep], b[hit][keep], first_after[keep]), 1)
    return np.cumsum(crossings, axis=2) % 2 == 1


def rasterise_closed_surface(vertices_mm: np.ndarray, faces: np.ndarray, affine: np.ndarray, shape_ijk,
                             oversample: int = 3) -> np.ndarray:
    """Inside fraction in [0, 1] of each voxel of the grid (``shape_ijk``, ``affine``: voxel -> world
    RAS+ mm) for a closed surface with vertices in world RAS+ mm; float32 (I, J, K).

    Sub-voxel sample points: voxel c holds points at c + (s + 0.5) / oversample - 0.5, s = 0..n-1,
    along each axis. A point is inside when rays along at least two of the three grid axes cross the
    surface an odd number of times (parity voting, Nooruddin & Turk 2003): a small hole or a stray
    triangle flips the parity of the rays through it along one axis only, so it does not streak."""
    n = int(oversample)
    shape = np.asarray(shape_ijk, dtype=np.int64)
    fine_shape = shape * n
    homogeneous = np.c_[np.asarray(vertices_mm, dtype=np.float64), np.ones(len(vertices_mm))]
    index = (np.linalg.inv(affine) @ homogeneous.T)[:3].T  # target voxel coordinates
    fine = n * (index + 0.5) - 0.5  # sub-sample coordinates: sample s of voxel c at n*c + s
    triangles = fine[np.asarray(faces)]  # (F, 3 vertices, 3 axes)
    votes = np.zeros(tuple(fine_shape), dtype=np.uint8)
    for ray_axis in range(3):
        order = [a for a in range(3) if a != ray_axis] + [ray_axis]  # the ray's axis last
        inside = _parity_along_last_axis(triangles[:, :, order], fine_shape[order])
        votes += np.moveaxis(inside, (0, 1, 2), order).astype(np.uint8)
    inside = (votes >= 2).astype(np.float32)
    return inside.reshape(shape[0], n, shape[1], n, shape[2], n).mean(axis=(1, 3, 5))


def labels_from_fractions(fractions: dict[int, np.ndarray]) -> np.ndarray:
    """A label volume (uint8) from per-label inside fractions: a voxel takes the label with the
    largest fraction when that fraction is at least 0.5 (partial-volume majority)."""
    values = sorted(fractions)
    stack = np.stack([fractions[v] for v in values])
    best = stack.argmax(axis=0)
    label = np.asarray(values, dtype=np.uint8)[best]
    label[stack.max(axis=0) < 0.5] = 0
    return label
