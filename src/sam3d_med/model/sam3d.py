"""The sparse-structure stage as one module: condition embedder, flow transformer, VAE.

``SparseStructureModel`` holds the four official components under the names used by the official
files: ``condition_embedder`` (``_base_models.condition_embedder.*`` in ss_generator.ckpt),
``generator`` (``_base_models.generator.reverse_fn.backbone.*``), ``decoder`` (ss_decoder.ckpt) and
``encoder`` (ss_encoder.safetensors).
"""

from __future__ import annotations

import torch
from torch import nn

from .condition import ConditionEmbedder
from .config import ModelConfig, get_preset
from .flow_matching import sample_latents
from .flow_transformer import POSE_MEMBERS, SHAPE, SparseStructureFlow
from .vae import SparseStructureDecoder, SparseStructureEncoder, latent_cube_to_tokens, tokens_to_latent_cube

# Pose targets for volumes already in their canonical frame: identity rotation (first two columns of
# I as the 6-D representation), no translation, unit scale.
CANONICAL_POSE = {"6drotation_normalized": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "translation": (0.0, 0.0, 0.0),
                  "scale": (1.0, 1.0, 1.0), "translation_scale": (1.0,)}


class SparseStructureModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.condition_embedder = ConditionEmbedder(cfg)
        self.generator = SparseStructureFlow(cfg.flow, cfg.cond_dim)
        self.decoder = SparseStructureDecoder(cfg.vae)
        self.encoder = SparseStructureEncoder(cfg.vae)

    @classmethod
    def from_preset(cls, name: str, device: str | torch.device | None = None) -> "SparseStructureModel":
        with torch.device(device or "cpu"):
            return cls(get_preset(name))

    def latent_targets(self, occupancy: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, N, N, N) occupancy -> flow targets: shape tokens (encoder mean) + canonical pose."""
        with torch.no_grad():
            cube = self.encoder(occupancy)
        B = occupancy.shape[0]
        targets = {SHAPE: latent_cube_to_tokens(cube)}
        for name in POSE_MEMBERS:
            value = torch.tensor(CANONICAL_POSE[name], device=cube.device, dtype=cube.dtype)
            targets[name] = value.view(1, 1, -1).expand(B, 1, -1).contiguous()
        return targets

    def decode_shape(self, shape_tokens: torch.Tensor) -> torch.Tensor:
        """(B, R^3, 8) -> occupancy logits (B, 1, N, N, N)."""
        return self.decoder(tokens_to_latent_cube(shape_tokens))

    @torch.no_grad()
    def reconstruct(self, condition_inputs: dict[str, torch.Tensor], seed: int = 0,
                    sampler=None) -> torch.Tensor:
        """Condition inputs -> occupancy logits (B, 1, N, N, N) by guided sampling."""
        cond = self.condition_embedder(**condition_inputs)
        latents = sample_latents(self.generator, cond, self.generator.latent_shapes(), sampler or self.cfg.sampler, seed)
        return self.decode_shape(latents[SHAPE])


def parameter_counts(model: SparseStructureModel) -> dict[str, int]:
    """Parameters per module (meta-device models included: no memory needed)."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    embedders = model.condition_embedder.module_list
    out = {
        "ss_generator/condition_embedder/image_dino": count(embedders[0]),
        "ss_generator/condition_embedder/mask_dino": count(embedders[1]),
        "ss_generator/condition_embedder/point_patch_embed": count(embedders[2]),
    }
    out["ss_generator/condition_embedder/projection_nets+idx_emb"] = count(model.condition_embedder) - sum(out.values())
    out["ss_generator/flow_transformer"] = count(model.generator)
    out["ss_generator (total)"] = count(model.condition_embedder) + count(model.generator)
    out["ss_decoder"] = count(model.decoder)
    out["ss_encoder"] = count(model.encoder)
    return out
