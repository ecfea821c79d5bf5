import pytest
import torch

from sam3d_med.model.sam3d import SparseStructureModel


def condition_inputs(batch: int = 2, size: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(batch, 3, size, size, generator=g), "rgb_image": torch.rand(batch, 3, size, size, generator=g),
        "mask": (torch.rand(batch, 1, size, size, generator=g) > 0.5).float(),
        "rgb_image_mask": (torch.rand(batch, 1, size, size, generator=g) > 0.5).float(),
        "pointmap": torch.randn(batch, 3, size, size, generator=g), "rgb_pointmap": torch.randn(batch, 3, size, size, generator=g),
    }


def random_latents(model: SparseStructureModel, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, *s, generator=g) for k, s in model.generator.latent_shapes().items()}


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = SparseStructureModel.from_preset("tiny")
    # adaLN-zero makes every block the identity at initialisation; perturb so tests see real blocks
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.eval()
