"""Flow matching on the sparse-structure latents: training objective and Euler sampler.

Convention (as in SAM3D): x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) noise and x1 the data, t in
[0, 1]; the network predicts the velocity x1 - x0 and is called with model time t * 1000.
Training draws t from a logit-normal (sigmoid of N(mean, std)) and, with probability
``cond_drop_prob``, zeroes the condition of the whole batch: one coin flip per batch, as the official
ClassifierFreeGuidance does in training (that is what the unconditional branch of guidance sees). Sampling integrates from t = 0 to 1 with Euler steps on the warped time grid
t' = t / (1 + (r - 1)(1 - t)) (more steps near the noise end for r > 1), with guidance
v = (1 + w) v_cond - w v_uncond applied while model time lies inside ``cfg_interval``. The shortcut
step size d is 0 (its embedding is still added).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SamplerConfig, TrainingObjectiveConfig


@dataclass
class FlowLossOutput:
    loss: torch.Tensor
    per_latent: dict[str, torch.Tensor]
    t: torch.Tensor  # (B,) in [0, 1]
    x1_estimate: dict[str, torch.Tensor]  # one-step estimate of the data, x_t + (1 - t) v_pred


def sample_logit_normal(batch: int, cfg: TrainingObjectiveConfig, generator=None, device=None) -> torch.Tensor:
    z = torch.randn(batch, generator=generator, device=device) * cfg.logit_normal_std + cfg.logit_normal_mean
    return torch.sigmoid(z)


def flow_matching_loss(backbone, x1: dict[str, torch.Tensor], cond: torch.Tensor, cfg: TrainingObjectiveConfig,
                       time_scale: float = 1000.0, weights: dict[str, float] | None = None,
                       generator: torch.Generator | None = None) -> FlowLossOutput:
    """Mean squared velocity error, averaged per latent then weighted (default: all weights 1)."""
    some = next(iter(x1.values()))
    B, device = some.shape[0], some.device
    t = sample_logit_normal(B, cfg, generator, device)
    unconditional = torch.rand(1, generator=generator, device=device) < cfg.cond_drop_prob
    cond = cond * (~unconditional).to(cond.dtype)
    x0 = {k: torch.randn(v.shape, generator=generator, device=device, dtype=v.dtype) for k, v in x1.items()}
    tb = {k: t.view(B, *([1] * (v.dim() - 1))).to(v.dtype) for k, v in x1.items()}
    x_t = {k: (1 - tb[k]) * x0[k] + tb[k] * x1[k] for k in x1}
    pred = backbone(x_t, t * time_scale, cond, d=torch.zeros_like(t))
    weights = weights or {}
    per_latent = {k: ((pred[k].float() - (x1[k] - x0[k]).float()) ** 2).mean() for k in x1}
    total_weight = sum(weights.get(k, 1.0) for k in x1)
    loss = sum(weights.get(k, 1.0) * v for k, v in per_latent.items()) / total_weight
    estimate = {k: x_t[k] + (1 - tb[k]) * pred[k] for k in x1}
    return FlowLossOutput(loss=loss, per_latent=per_latent, t=t, x1_estimate=estimate)


def _noise(latent_shapes: dict[str, tuple[int, int]], batch: int, seed: int, device) -> dict[str, torch.Tensor]:
    """Seeded float32 noise per latent (drawn on the CPU: the same numbers on any device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return {k: torch.randn((batch, *s), generator=generator).to(device=device) for k, s in latent_shapes.items()}


@torch.no_grad()
def one_step_latents(backbone, cond: torch.Tensor, latent_shapes: dict[str, tuple[int, int]], cfg: SamplerConfig,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """The one-step estimate of the data from pure noise: x0 + v(x0, t = 0) (conditional, unguided).
    What the network predicts where the task is hardest: nothing of the answer is in its input."""
    B, device = cond.shape[0], cond.device
    x0 = _noise(latent_shapes, B, seed, device)
    zero = torch.zeros(B, device=device)
    v = backbone(x0, zero, cond, d=zero)
    return {k: x0[k] + v[k].to(x0[k].dtype) for k in x0}


def time_grid(steps: int, rescale_t: float) -> torch.Tensor:
    t = torch.linspace(0.0, 1.0, steps + 1)
    return t / (1 + (rescale_t - 1) * (1 - t))


@torch.no_grad()
def sample_latents(backbone, cond: torch.Tensor, latent_shapes: dict[str, tuple[int, int]], cfg: SamplerConfig,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Euler integration from noise (seeded, deterministic) to latents, with guidance.

    ``latent_shapes``: name -> (tokens, channels). Returns name -> (B, tokens, channels).
    """
    B, device = cond.shape[0], cond.device
    x = _noise(latent_shapes, B, seed, device)  # float32 state, any model precision
    uncond = torch.zeros_like(cond)
    grid = time_grid(cfg.steps, cfg.rescale_t).tolist()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        model_t = torch.full((B,), t0 * cfg.time_scale, device=device)
        d = torch.zeros(B, device=device)
        lo, hi = cfg.cfg_interval
        if cfg.cfg_strength > 0 and lo <= t0 * cfg.time_scale <= hi:
            both = backbone({k: torch.cat([v, v]) for k, v in x.items()}, torch.cat([model_t, model_t]),
                            torch.cat([cond, uncond]), d=torch.cat([d, d]))
            w = cfg.cfg_strength
            v = {k: (1 + w) * out[:B] - w * out[B:] for k, out in both.items()}
        else:
            v = backbone(x, model_t, cond, d=d)
        x = {k: x[k] + (t1 - t0) * v[k].to(x[k].dtype) for k in x}
    return x
