"""Target frames: what the flow's sparse structure is a picture of, as values behind one registry.

- ``object`` (default; SAM3D as built): the structure in its own cube (``object_frame``), placed in
  the scan by a predicted pose. Pointmaps normalised as the official preprocessor does (ObjectCentricSSI
  with the scene scale, ``object_frame.normalisation_of_slice``).
- ``volume`` (the earlier formulation, kept for comparison): the scan's n^3 grid itself, identity pose;
  a case whose grid is not n^3 is seen through the n^3 window around its structures (``volume_window``).
  The crop's pointmap is normalised object-centrically over its masked pixels, the full frame's is in
  volume grid coordinates in [-1, 1].

Each frame owns, and nothing else asks its name: the condition pointmaps (``condition_pointmaps``),
the part of the case grid a sample sees (``window``) and its extra targets (``sample_targets``), the
flow's target occupancies and their cache identity (``target_solids``, ``cache_identity``), the loss's
targets (``loss_targets``), placement on a grid (``grid_points``, ``place``) and the way back to the
case grid (``to_case_grid``). ``placed_by_pose``: the prediction has a pose (fitted to the input slices
and used by the slice-consistency loss in the cube). Importing this module loads neither torch nor
scipy (the settings read the registry before torch loads).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


class TargetFrame:
    name = ""
    description = ""
    placed_by_pose = False
    windowed = False  # the decoder's grid is an n^3 window of the scan (``window``)
    several_slices = False  # conditions on several input slices (one normalisation for all of them)

    def __repr__(self) -> str:
        return f"<target frame {self.name}>"

    def __str__(self) -> str:
        return self.name


class ObjectFrame(TargetFrame):
    name = "object"
    description = "the structure in its own cube, placed by the predicted pose"
    placed_by_pose = True
    several_slices = True

    def condition_pointmaps(self, crop_points, crop_mask, full_points, slice_points, slice_mask, affine, shape_ijk):
        """Both views' pointmaps (3, S, S) normalised by the moments of the input slice(s) as they are
        (``slice_points`` (3, H, W) world mm, ``slice_mask`` (H, W), before any augmentation):
        (pointmap, rgb_pointmap, shift (3,) mm, scale () mm); world mm = pointmap * scale + shift."""
        import torch

        from .object_frame import normalisation_of_slice

        shift_mm, scale_mm = normalisation_of_slice(np.asarray(slice_points), np.asarray(slice_mask))
        shift = torch.tensor(shift_mm, dtype=torch.float32)
        scale = torch.tensor(scale_mm, dtype=torch.float32)
        return (crop_points - shift[:, None, None]) / scale, (full_points - shift[:, None, None]) / scale, shift, scale

    def window(self, sdf, side: int, case_id: str):
        return None  # the cube follows the structure: the whole case grid is seen

    def sample_targets(self, cube, sdf_volume, affine, resolution: int, slice_points, slice_mask) -> dict:
        """The cube's targets: ``cube_centre_mm``, ``cube_side_mm``, ``cube_sdf`` (1, n, n, n) mm,
        ``cube_occupancy``, and the input slice as it is (``slice_points``, ``slice_mask``)."""
        import torch

        from .object_frame import cube_sdf_mm

        cube_sdf = torch.from_numpy(cube_sdf_mm(sdf_volume, affine, cube, resolution))[None]
        return dict(cube_centre_mm=torch.tensor(cube.centre_mm, dtype=torch.float32),
                    cube_side_mm=torch.tensor(cube.side_mm, dtype=torch.float32),
                    cube_sdf=cube_sdf, cube_occupancy=(cube_sdf < 0).float(),
                    slice_points=slice_points, slice_mask=slice_mask)

    def target_solids(self, sdf: np.ndarray, affine: np.ndarray, resolution: int, cube_margin: float,
                      case_id: str) -> np.ndarray:
        """(C, n, n, n) bool: each class in its own cube (a class absent from the case: all False)."""
        from .object_frame import cube_sdf_mm, object_cube

        out = np.zeros((sdf.shape[0],) + (resolution,) * 3, dtype=bool)
        for k in range(sdf.shape[0]):
            if (sdf[k] < 0).any():
                out[k] = cube_sdf_mm(sdf[k], affine, object_cube(sdf[k] < 0, affine, cube_margin), resolution) < 0
        return out

    def cache_identity(self, cube_margin: float) -> dict:
        return {"frame": self.name, "cube_margin": cube_margin}

    def loss_targets(self, batch: dict):
        """(occupancy, sdf) the decoder's output is compared with: the cube's."""
        return batch["cube_occupancy"], batch["cube_sdf"]

    def grid_points(self, shape_ijk, affine: np.ndarray, device=None):
        """(1, I, J, K, 3) world mm of the grid's voxel centres, where the cube is sampled."""
        from .geometry import grid_points_mm

        return grid_points_mm(shape_ijk, affine, device)

    def grid_points_of_affines(self, affines, shape_ijk):
        """(B, I, J, K, 3) world mm of the voxel centres of grids (``affines`` (B, 4, 4))."""
        from .geometry import grid_points_of_affines

        return grid_points_of_affines(affines, shape_ijk)

    def place(self, cube_logits, pose_world, grid_points):
        """(B, I, J, K) logits: the cubes sampled at the grid's points by their world poses."""
        from .object_frame import place_cubes_on_grid

        return place_cubes_on_grid(cube_logits, pose_world.rotation, pose_world.translation, pose_world.scale,
                                   grid_points.to(cube_logits.device))

    def to_case_grid(self, values, window, outside):
        return values  # placed on the case grid already


class VolumeFrame(TargetFrame):
    name = "volume"
    description = "the scan's own grid, identity pose"
    placed_by_pose = False
    windowed = True

    def condition_pointmaps(self, crop_points, crop_mask, full_points, slice_points, slice_mask, affine, shape_ijk):
        """The crop's pointmap object-centric over its masked pixels, the full frame's in volume grid
        coordinates in [-1, 1] per axis: (pointmap, rgb_pointmap, shift (3,) mm, scale () mm)."""
        import torch

        from .dataset import object_centric

        inv = torch.from_numpy(np.linalg.inv(affine)).float()
        ijk = torch.einsum("ab,bhw->ahw", inv[:3, :3], full_points) + inv[:3, 3, None, None]
        grid = 2 * ijk / torch.tensor(shape_ijk, dtype=torch.float32)[:, None, None].sub(1) - 1
        points, shift, scale = object_centric(crop_points, crop_mask)
        return points, grid, shift, scale

    def window(self, sdf, side: int, case_id: str):
        """The decoder's ``side``^3 window of the case around all its structures (``volume_window``)."""
        from .dataset import case_volume_window

        return case_volume_window(sdf, side, case_id)

    def sample_targets(self, cube, sdf_volume, affine, resolution, slice_points, slice_mask) -> dict:
        return {}

    def target_solids(self, sdf, affine, resolution, cube_margin, case_id) -> np.ndarray:
        """(C, n, n, n) bool: the classes on the case's n^3 window (its grid when n^3)."""
        return self.window(sdf, resolution, case_id).take(sdf < 0, False)

    def cache_identity(self, cube_margin: float) -> dict:
        return {"frame": self.name}

    def loss_targets(self, batch: dict):
        return batch["occupancy"], batch["sdf"]

    def grid_points(self, shape_ijk, affine, device=None):
        return None  # the decoder's grid is the window itself

    def grid_points_of_affines(self, affines, shape_ijk):
        return None

    def place(self, logits, pose_world, grid_points):
        return logits[:, 0]

    def to_case_grid(self, values, window, outside):
        """From the case's n^3 window back onto its grid (the same grid when n^3)."""
        return values if window is None else window.put_back(values, outside)


FRAMES: dict[str, TargetFrame] = {frame.name: frame for frame in (ObjectFrame(), VolumeFrame())}
FRAME_NAMES = tuple(FRAMES)


def target_frame(frame: str | TargetFrame) -> TargetFrame:
    """The registered frame of that name (a frame is returned as it is); ``ConfigError`` naming the
    setting and the registered names otherwise."""
    if isinstance(frame, TargetFrame):
        return frame
    if frame not in FRAMES:
        raise ConfigError(f"must be one of {', '.join(FRAMES)}", parameter="data.target_frame", value=frame)
    return FRAMES[frame]
