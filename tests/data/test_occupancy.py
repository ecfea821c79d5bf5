"""Solid and surface occupancies (data.occupancy) and the ray-parity fill that makes a shell solid again."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sam3d_med.data.dataset import load_manifest
from sam3d_med.data.occupancy import FILL_LOGIT, fill_shell, occupancy_of, solid_logits_from_shell, surface_shell
from sam3d_med.errors import ConfigError
from sam3d_med.train.latent_targets import case_occupancies

CENTRE = 31.5


def ball(radius: float, n: int = 64) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
    return ((grid - CENTRE) ** 2).sum(0) <= radius ** 2


def test_shell_is_the_solids_inner_boundary():
    solid = ball(12)
    shell = surface_shell(solid)
    eroded = torch.from_numpy(ndimage.binary_erosion(solid.numpy(), border_value=0))  # 6-neighbourhood
    assert torch.equal(shell, solid & ~eroded)
    # a structure touching the grid's edge has its shell there too (beyond the grid is outside)
    block = torch.zeros(8, 8, 8, dtype=torch.bool)
    block[:4] = True
    assert surface_shell(block)[0].all() and not surface_shell(block)[1, 1:-1, 1:-1].any()
    assert torch.equal(occupancy_of(solid, "solid"), solid) and torch.equal(occupancy_of(solid, "surface"), shell)
    with pytest.raises(ConfigError, match="data.occupancy must be one of solid, surface"):
        occupancy_of(solid, "shell")


@pytest.mark.parametrize("radius", [5, 12, 25])
def test_fill_gives_back_a_sphere(radius):
    solid = ball(radius)
    assert torch.equal(fill_shell(surface_shell(solid)), solid)


def test_a_closed_wall_stays_a_wall():
    """A hollow ball (a wall with an outer and an inner surface, 4 cells thick): the fill keeps the
    cavity empty, where a flood fill of holes would close it."""
    wall = ball(25) & ~ball(21)
    filled = fill_shell(surface_shell(wall))
    assert torch.equal(filled, wall)
    assert ndimage.binary_fill_holes(surface_shell(wall).numpy()).sum() == ball(25).sum()


def test_fill_gives_back_the_phantoms_structures_and_its_myocardium(cache_dir):
    """Every structure of a phantom case, the myocardium (a wall around the left ventricle) included, in
    its own object cube and on the scan's grid: shell -> fill is the solid again (Dice >= 0.999)."""
    case = load_manifest(cache_dir)["cases"][0]
    for frame in ("object", "volume"):
        solids = torch.from_numpy(case_occupancies(cache_dir, case, frame, 64))
        shells = torch.from_numpy(case_occupancies(cache_dir, case, frame, 64, occupancy="surface"))
        assert torch.equal(shells, surface_shell(solids))
        for k in range(solids.shape[0]):
            if not solids[k].any():
                continue
            filled = fill_shell(shells[k])
            dice = 2 * (filled & solids[k]).sum() / (filled.sum() + solids[k].sum())
            assert dice >= 0.999, (frame, k + 1, float(dice))
            assert shells[k].sum() < 0.7 * solids[k].sum()  # a shell, not the solid
    myocardium = torch.from_numpy(case_occupancies(cache_dir, case, "object", 64))[4]
    assert (fill_shell(surface_shell(myocardium)) ^ myocardium).sum() <= 0.001 * myocardium.sum()


def test_decoded_shell_logits_become_solid_logits():
    solid = ball(10)
    shell = surface_shell(solid)
    logits = torch.where(shell, 3.0, -4.0)[None, None]
    filled = solid_logits_from_shell(logits)
    assert torch.equal(filled[0, 0] > 0, solid)
    assert torch.equal(filled[0, 0][shell], logits[0, 0][shell])  # the shell keeps its own logits
    assert (filled[0, 0][solid & ~shell] == FILL_LOGIT).all() and (filled[0, 0][~solid] == -4.0).all()
    assert np.isfinite(filled.numpy()).all()
