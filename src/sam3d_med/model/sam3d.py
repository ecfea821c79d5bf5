"""The sparse-structure stage as one module: condition embedder, flow transformer, VAE.

``SparseStructureModel`` holds the four official components under the names used by the official
files: ``condition_embedder`` (``_base_models.condition_embedder.*`` in ss_generator.ckpt),
``generator`` (``_base_models.generator.reverse_fn.backbone.*``), ``decoder`` (ss_decoder.ckpt) and
``encoder`` (ss_encoder.ckpt, released by Meta on 2026-06-01). A model built from a snapshot from
before then (0-byte encoder placeholders) has ``encoder = None`` and its flow targets come from
decoder inversion (``train.latent_targets``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.input_slices import EXTRA_PREFIX
from ..data.occupancy import solid_logits_from_shell
from .condition import STREAMS, ConditionEmbedder
from .config import ModelConfig, get_preset
from ..errors import ConfigError
from .flow_matching import one_step_latents, sample_latents
from .flow_transformer import POSE_MEMBERS, SHAPE, SparseStructureFlow
from .pose import Pose, check_convention, decode_pose, encode_pose, identity_pose
from .vae import SparseStructureDecoder, SparseStructureEncoder, latent_cube_to_tokens, tokens_to_latent_cube

CONDITION_INPUTS = tuple(name for _, name, _ in STREAMS)


def condition_of(batch: dict) -> dict:
    """The condition embedder's inputs in ``batch``: the first slice's streams and, when the batch has
    further input slices, their ``extra_*`` streams and ``extra_present``."""
    return {k: v for k, v in batch.items() if k in CONDITION_INPUTS or k.startswith(EXTRA_PREFIX)}


def precision_region(dtype: torch.dtype, enabled: bool, device_type: str = "cuda"):
    """An autocast region to ``dtype`` that ignores autocast's cast cache. Autocast keeps its casts of
    trainable leaf weights (the LoRA adapters) until the outermost region ends, keyed by the weight and
    not by the dtype: inside a caller's bf16 region (training's validation) an fp16 region (the flow,
    as the release runs it) would be handed the bf16 casts and fail ("expected mat1 and mat2 to have
    the same dtype", found on an H100)."""
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)


class SparseStructureModel(nn.Module):
    def __init__(self, cfg: ModelConfig, with_encoder: bool = True):
        super().__init__()
        self.cfg = cfg
        check_convention(cfg.pose_convention)
        self.condition_embedder = ConditionEmbedder(cfg)
        self.generator = SparseStructureFlow(cfg.flow, cfg.cond_dim)
        self.decoder = SparseStructureDecoder(cfg.vae)
        self.encoder = SparseStructureEncoder(cfg.vae) if with_encoder else None
        # what the decoded occupancy holds (``data.occupancy``): "solid", or "surface", a shell that
        # ``generate`` fills back into a solid (``data.occupancy.fill_shell``)
        self.occupancy = "solid"

    @classmethod
    def from_preset(cls, name: str, device: str | torch.device | None = None) -> "SparseStructureModel":
        with torch.device(device or "cpu"):
            return cls(get_preset(name))

    def latent_targets(self, occupancy: torch.Tensor | None = None, shape_latents: torch.Tensor | None = None,
                       pose: Pose | None = None) -> dict[str, torch.Tensor]:
        """Flow targets: shape tokens and the four pose latents in the release's normalised convention.

        Shape tokens come from ``shape_latents`` (B, C, R, R, R) when given (decoder-inversion targets),
        else from the SS encoder's mean of ``occupancy`` (B, 1, N, N, N). ``pose``: the object's pose in
        the normalised pointmap frame (object frame); None: the identity (volume frame: the shape
        grid is the scan's grid)."""
        if shape_latents is None:
            if self.encoder is None:
                raise ConfigError("this model has no SS encoder (its weights folder holds a 0-byte placeholder, "
                                  "as snapshots from before 2026-06-01 do): flow targets must come from decoder "
                                  "inversion (train.latent_targets)")
            with torch.no_grad():
                shape_latents = self.encoder(occupancy)
        targets = {SHAPE: latent_cube_to_tokens(shape_latents.float())}
        B = shape_latents.shape[0]
        targets.update(encode_pose(pose if pose is not None else identity_pose(B, device=shape_latents.device)))
        return targets

    def decode_shape(self, shape_tokens: torch.Tensor) -> torch.Tensor:
        """(B, R^3, 8) -> occupancy logits (B, 1, N, N, N)."""
        return self.decoder(tokens_to_latent_cube(shape_tokens))

    @torch.no_grad()
    def sample(self, condition_inputs: dict[str, torch.Tensor], seed: int = 0, sampler=None,
               one_step: bool = False) -> dict[str, torch.Tensor]:
        """Condition inputs -> the latents (name -> (B, tokens, channels), float32), by guided sampling
        from seeded noise; with ``one_step`` the one-step estimate from that noise instead,
        x0 + v(x0, t = 0) (conditional velocity, no guidance).

        On CUDA the embedder runs under bf16 autocast and the flow blocks under fp16 autocast when the
        release says ``use_fp16`` (as the official pipeline runs them), else bf16; the sampler's state
        stays float32. On a CPU everything is float32."""
        cuda = self.decoder.input_layer.weight.is_cuda
        flow_dtype = torch.float16 if self.cfg.flow.use_fp16 else torch.bfloat16
        sampler = sampler or self.cfg.sampler
        with precision_region(torch.bfloat16, cuda):
            cond = self.condition_embedder(**condition_of(condition_inputs))
        with precision_region(flow_dtype, cuda):
            if one_step:
                return one_step_latents(self.generator, cond, self.generator.latent_shapes(), sampler, seed)
            return sample_latents(self.generator, cond, self.generator.latent_shapes(), sampler, seed)

    @torch.no_grad()
    def generate(self, condition_inputs: dict[str, torch.Tensor], seed: int = 0, sampler=None,
                 one_step: bool = False) -> tuple[torch.Tensor, Pose]:
        """Condition inputs -> (occupancy logits (B, 1, N, N, N) float32 of the solid, pose decoded in the
        normalised pointmap frame): ``sample``, then the decoder (bf16 autocast on CUDA) and the pose
        decoder; a model whose occupancy is the ``surface`` shell has its decoded shell filled."""
        latents = self.sample(condition_inputs, seed, sampler, one_step)
        with precision_region(torch.bfloat16, self.decoder.input_layer.weight.is_cuda):
            logits = self.decode_shape(latents[SHAPE]).float()
        if self.occupancy == "surface":
            logits = solid_logits_from_shell(logits)
        return logits, decode_pose({name: latents[name] for name in POSE_MEMBERS})

    def reconstruct(self, condition_inputs: dict[str, torch.Tensor], seed: int = 0, sampler=None) -> torch.Tensor:
        """Condition inputs -> occupancy logits (B, 1, N, N, N), float32 (``generate`` without the pose)."""
        return self.generate(condition_inputs, seed, sampler)[0]


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
    if model.encoder is not None:
        out["ss_encoder"] = count(model.encoder)
    return out
