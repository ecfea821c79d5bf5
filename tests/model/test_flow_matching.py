import dataclasses

import torch

from sam3d_med.model.flow_matching import flow_matching_loss, sample_latents, time_grid
from sam3d_med.model.flow_transformer import SHAPE
from tests.model.conftest import condition_inputs


def test_time_grid_warps_towards_the_noise_end():
    grid = time_grid(25, 3.0)
    assert grid[0] == 0 and grid[-1] == 1 and torch.all(grid[1:] > grid[:-1])
    assert torch.isclose(time_grid(2, 3.0)[1], torch.tensor(0.25))  # 0.5 / (1 + 2 * 0.5)
    assert torch.allclose(time_grid(4, 1.0), torch.linspace(0, 1, 5))


def test_sampling_is_seeded_and_deterministic(tiny_model):
    cond = tiny_model.condition_embedder(**condition_inputs())
    shapes = tiny_model.generator.latent_shapes()
    cfg = tiny_model.cfg.sampler
    a = sample_latents(tiny_model.generator, cond, shapes, cfg, seed=3)
    b = sample_latents(tiny_model.generator, cond, shapes, cfg, seed=3)
    c = sample_latents(tiny_model.generator, cond, shapes, cfg, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[SHAPE], c[SHAPE])


def test_guidance_is_applied_only_inside_its_interval(tiny_model):
    cond = tiny_model.condition_embedder(**condition_inputs())
    shapes = tiny_model.generator.latent_shapes()
    base = dataclasses.replace(tiny_model.cfg.sampler, steps=4)
    no_guidance = sample_latents(tiny_model.generator, cond, shapes, dataclasses.replace(base, cfg_strength=0.0))
    outside = sample_latents(tiny_model.generator, cond, shapes, dataclasses.replace(base, cfg_interval=(2000.0, 3000.0)))
    inside = sample_latents(tiny_model.generator, cond, shapes, base)
    assert torch.allclose(no_guidance[SHAPE], outside[SHAPE])
    assert not torch.allclose(no_guidance[SHAPE], inside[SHAPE])


def test_loss_targets_and_training_reduce_it(tiny_model):
    """The objective is learnable: a few steps on one example lower the (seeded) loss."""
    torch.manual_seed(0)
    tiny_model.train()
    inputs = condition_inputs(batch=2)
    occupancy = torch.zeros(2, 1, 64, 64, 64)
    occupancy[:, :, 20:40, 24:44, 16:48] = 1.0
    targets = tiny_model.latent_targets(occupancy)
    assert targets["6drotation_normalized"].shape == (2, 1, 6)
    params = [p for n, p in tiny_model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def loss_value(seed):
        out = flow_matching_loss(tiny_model.generator, targets, tiny_model.condition_embedder(**inputs),
                                 tiny_model.cfg.objective, generator=torch.Generator().manual_seed(seed))
        return out

    with torch.no_grad():
        before = sum(float(loss_value(s).loss) for s in range(4))
    for step in range(30):
        optimizer.zero_grad()
        loss_value(100 + step).loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = sum(float(loss_value(s).loss) for s in range(4))
    assert after < 0.7 * before
