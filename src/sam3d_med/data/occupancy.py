"""What the sparse-structure occupancy holds: the structure's solid, or its surface shell, and back.

SAM 3D Objects' own data marks the voxels a mesh's *surface* passes through (the official
``voxelize_mesh``: an Open3D voxel grid of the mesh in [-0.5, 0.5]^3), and its inference can prune a
decoded occupancy to its surface voxels (``prune_sparse_structure``); our targets were solids. Which
of the two the released encoder/decoder represent better is a fact of the real files
(``sam3d-med check-release`` measures it); ``data.occupancy`` chooses:

- ``solid``: the structure's voxels;
- ``surface``: its one-voxel shell, the voxels of the solid with a face neighbour outside it (the
  inner boundary, 6-neighbourhood; cells beyond the grid count as outside). A decoded shell becomes a
  solid again by ``fill_shell`` (ray parity), so metrics, NIfTI and meshes stay on solids.

Arrays are boolean (..., I, J, K) in any frame (the object cube or a scan grid); the last three axes
are the grid's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..settings import OCCUPANCY_KINDS  # noqa: F401 (data.occupancy's choices, declared with the setting)
FILL_LOGIT = 10.0  # logit given to cells filled in by ``solid_logits_from_shell`` (p = 1 - 4.5e-5)


def check_occupancy(kind: str) -> str:
    if kind not in OCCUPANCY_KINDS:
        from ..errors import ConfigError

        raise ConfigError(f"data.occupancy must be one of {', '.join(OCCUPANCY_KINDS)} (got {kind!r})")
    return kind


def surface_shell(solid: torch.Tensor) -> torch.Tensor:
    """bool (..., I, J, K): the voxels of ``solid`` with at least one of their 6 face neighbours outside
    it (beyond the grid counts as outside)."""
    solid = solid.bool()
    outside = F.pad((~solid).to(torch.uint8), (1, 1, 1, 1, 1, 1), value=1).bool()
    c = slice(1, -1)
    neighbour_outside = (outside[..., :-2, c, c] | outside[..., 2:, c, c] | outside[..., c, :-2, c]
                         | outside[..., c, 2:, c] | outside[..., c, c, :-2] | outside[..., c, c, 2:])
    return solid & neighbour_outside


def occupancy_of(solid: torch.Tensor, kind: str) -> torch.Tensor:
    """``solid`` as the occupancy kind ``kind`` holds it (bool, same shape)."""
    return surface_shell(solid) if check_occupancy(kind) == "surface" else solid.bool()


def fill_shell(shell: torch.Tensor) -> torch.Tensor:
    """A solid (bool (..., I, J, K)) from a surface shell: the shell plus every cell that ray parity
    calls inside. Along each grid axis, in both directions, the runs of consecutive shell cells
    between a cell and the grid's edge are counted; an odd count is a vote for inside. A cell is
    inside with at least 4 of the 6 votes (a ray that grazes the surface, whose run is not a crossing,
    is outvoted). A wall with two surfaces (the myocardium around its cavity) stays a wall: the ray
    through the cavity crosses the wall's outer and inner shell, an even count, where the two shells
    are apart (a wall at least 3 cells thick along the ray); a flood fill would close the cavity."""
    shell = shell.bool()
    votes = torch.zeros(shell.shape, dtype=torch.int16, device=shell.device)
    for dim in (-3, -2, -1):
        n = shell.shape[dim]
        before = torch.cat([torch.zeros_like(shell.narrow(dim, 0, 1)), shell.narrow(dim, 0, n - 1)], dim=dim)
        after = torch.cat([shell.narrow(dim, 1, n - 1), torch.zeros_like(shell.narrow(dim, 0, 1))], dim=dim)
        starts = (shell & ~before).to(torch.int32)
        ends = (shell & ~after).to(torch.int32)
        runs_before = starts.cumsum(dim)  # runs begun at or before the cell: for a cell off the shell, before it
        runs_after = ends.flip(dim).cumsum(dim).flip(dim)
        votes += (runs_before % 2).to(torch.int16) + (runs_after % 2).to(torch.int16)
    return shell | (votes >= 4)


def solid_logits_from_shell(logits: torch.Tensor) -> torch.Tensor:
    """Occupancy logits of a decoded shell (..., I, J, K) -> logits of its solid: the cells that
    ``fill_shell`` adds get at least ``FILL_LOGIT``, the others keep theirs."""
    shell = logits > 0
    filled = fill_shell(shell) & ~shell
    return torch.where(filled, logits.clamp(min=FILL_LOGIT), logits)
