"""Condition embedder of the sparse-structure stage (the official ``EmbedderFuser`` layout).

Streams, in this order (token counts for the released sizes, Dino input 770 px):
  module 0, DINOv2 on images:  ``image`` (crop) 3026, ``rgb_image`` (full frame) 3026
  module 1, DINOv2 on masks:   ``mask`` (crop) 3026, ``rgb_image_mask`` (full) 3026
  module 2, PointPatchEmbed:   ``pointmap`` (crop) 1024, ``rgb_pointmap`` (full) 1024
Each stream goes through its module's projection net (LayerNorm + SwiGLU, no bias) to ``cond_dim``
and gets ``idx_emb[0]`` (crop) or ``idx_emb[1]`` (full); the streams are concatenated: 14,152 tokens
(7,528 were the Dino input at its stored 518 px).

In training mode the fuser drops modalities as the official one does (``dropout_prob`` and
``drop_modalities_weight`` of ss_generator.yaml, here ``objective.modality_dropout_prob`` and
``objective.modality_dropout``): per sample, with that probability, one of the listed groups of
streams (chosen by weight; released: the two pointmap streams) has its tokens zeroed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.input_slices import EXTRA_PREFIX
from .config import EMBEDDER_INPUTS, ModelConfig, PointEmbedConfig, ViTConfig
from .vit import Block, DinoVisionTransformer

# (module index, input name, position group: 0 crop, 1 full frame), in token order
STREAMS = tuple((module, name, group) for module, names in enumerate(EMBEDDER_INPUTS) for group, name in enumerate(names))
EXTRA_PRESENT = EXTRA_PREFIX + "present"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SwiGLU(nn.Module):
    """LLaMA-3 feed-forward (``w2(silu(w1 x) * w3 x)``); hidden size 2/3 of the given one, rounded up
    to a multiple of 256 (4 * 1024 -> 2816)."""

    def __init__(self, dim: int, hidden_dim: int, output_dim: int, multiple_of: int = 256):
        super().__init__()
        hidden = int(2 * hidden_dim / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, output_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DinoEmbedder(nn.Module):
    """Resize to the ViT's input size, 1 channel -> 3, ImageNet normalisation, DINOv2 tokens."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.backbone = DinoVisionTransformer(cfg)
        self.embed_dim = cfg.embed_dim
        self.input_size = cfg.input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) in [0, 1] -> (B, 1 + N, C)."""
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.backbone(x)


class PointPatchEmbed(nn.Module):
    """Pointmap (B, 3, H, W) -> one token per patch_size^2 window (B, (S/p)^2, D).

    Points are resized (nearest) to ``input_size``; non-finite points get ``invalid_xyz_token``;
    each window runs one transformer block with its own CLS token, whose output (plus a learned
    window position embedding) is the window's token.
    """

    def __init__(self, cfg: PointEmbedConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        n = cfg.input_size // cfg.patch_size
        self.point_proj = nn.Linear(3, cfg.embed_dim)
        self.invalid_xyz_token = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, n, n))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, 1 + cfg.patch_size ** 2, cfg.embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = nn.ModuleList([Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, layer_scale=False)])
        for p in (self.pos_embed, self.pos_embed_window, self.cls_token, self.invalid_xyz_token):
            nn.init.normal_(p, std=0.02)
        nn.init.xavier_uniform_(self.point_proj.weight, gain=0.02)
        nn.init.zeros_(self.point_proj.bias)

    def _remap(self, xyz: torch.Tensor) -> torch.Tensor:
        if self.cfg.remap == "linear":
            return xyz
        if self.cfg.remap == "exp":
            xy, z = xyz.split([2, 1], dim=-1)
            return torch.cat([xy / (1 + z), torch.log1p(z)], dim=-1)
        raise NotImplementedError(f"point remap {self.cfg.remap!r} is not implemented (have: linear, exp)")

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        p, size = self.cfg.patch_size, self.cfg.input_size
        xyz = F.interpolate(xyz, size=(size, size), mode="nearest").permute(0, 2, 3, 1)  # (B, S, S, 3)
        valid = torch.isfinite(xyz).all(dim=-1, keepdim=True)
        x = self.point_proj(self._remap(torch.where(valid, xyz, torch.zeros_like(xyz))))
        x = torch.where(valid, x, self.invalid_xyz_token.to(x.dtype))
        B, n = x.shape[0], size // p
        windows = x.view(B, n, p, n, p, -1).permute(0, 1, 3, 2, 4, 5).reshape(B * n * n, p * p, -1)
        tokens = torch.cat([self.cls_token.expand(windows.shape[0], -1, -1), windows], dim=1) + self.pos_embed_window
        for block in self.blocks:
            tokens = block(tokens)
        out = tokens[:, 0].reshape(B, n * n, -1)
        pos = self.pos_embed
        if pos.shape[-1] != n:
            pos = F.interpolate(pos, size=(n, n), mode="bilinear", align_corners=False)
        return out + pos.permute(0, 2, 3, 1).reshape(1, n * n, -1)


class ConditionEmbedder(nn.Module):
    """The fuser: ``module_list`` (DINOv2 image, DINOv2 mask, points), ``projection_nets``, ``idx_emb``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.objective = cfg.objective
        self.module_list = nn.ModuleList([DinoEmbedder(cfg.image_vit), DinoEmbedder(cfg.mask_vit),
                                          PointPatchEmbed(cfg.point)])
        self.embed_dim = cfg.cond_dim
        hidden = int(cfg.projection_hidden_multiplier * cfg.cond_dim)
        self.projection_nets = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(m.embed_dim), SwiGLU(m.embed_dim, hidden, cfg.cond_dim)) for m in self.module_list)
        n_groups = 1 + max(group for _, _, group in STREAMS)
        self.idx_emb = nn.Parameter(torch.randn(n_groups + 1, cfg.cond_dim) / math.sqrt(cfg.cond_dim))

    def dropped_streams(self, batch: int, generator: torch.Generator | None = None,
                        device=None) -> dict[str, torch.Tensor]:
        """Training-time modality dropout: input name -> (B,) keep factor (1 kept, 0 dropped)."""
        keep = {name: torch.ones(batch, device=device) for _, name, _ in STREAMS}
        groups = self.objective.modality_dropout
        probability = self.objective.modality_dropout_prob
        if not (self.training and probability > 0 and groups):
            return keep
        weights = torch.tensor([1.0 - probability] + [probability * w / sum(w for _, w in groups) for _, w in groups],
                               device=generator.device if generator is not None else "cpu")
        choice = torch.multinomial(weights, batch, replacement=True, generator=generator).to(device)
        for index, (names, _) in enumerate(groups, start=1):
            for name in names:
                keep[name] = keep[name] * (choice != index).float()
        return keep

    def forward(self, generator: torch.Generator | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Inputs by name (see ``STREAMS``): images (B,3,H,W) and masks (B,1,H,W) in [0,1], pointmaps
        (B,3,H,W) normalised (NaN = no point). Returns condition tokens (B, T, cond_dim).
        ``generator`` draws the training-time modality dropout (the global RNG when None).

        Further input slices (``data.input_slices``): ``extra_<name>`` (B, E, C, H, W) for some of the
        streams and ``extra_present`` (B, E); each further slice's streams are embedded as the first
        slice's are (same modules, same crop/full position embedding: their pointmaps, normalised in
        the first slice's frame, say where each lies) and appended, slice by slice; an absent slice
        (``extra_present`` 0, padding) has zero tokens, as a dropped modality has. Dropout drops a
        stream of every slice together."""
        missing = [name for _, name, _ in STREAMS if name not in inputs]
        if missing:
            raise ValueError(f"condition inputs missing: {missing}")
        batch = inputs[STREAMS[0][1]].shape[0]
        keep = self.dropped_streams(batch, generator, self.idx_emb.device)
        tokens = []
        for module_index, name, group in STREAMS:
            x = self._stream(inputs[name], module_index, group)
            tokens.append(x * keep[name].to(x.dtype).view(-1, 1, 1))
        present = inputs.get(EXTRA_PRESENT)
        extra = [(module_index, name, group) for module_index, name, group in STREAMS if EXTRA_PREFIX + name in inputs]
        # the further slices up to the last one any sample of the batch has (the rest is padding)
        used = 0 if present is None or not (present > 0).any() else int(torch.nonzero((present > 0).any(0)).max()) + 1
        for slice_index in range(used):
            for module_index, name, group in extra:
                x = self._stream(inputs[EXTRA_PREFIX + name][:, slice_index], module_index, group)
                factor = keep[name].to(x.dtype) * present[:, slice_index].to(x.device, x.dtype)
                tokens.append(x * factor.view(-1, 1, 1))
        return torch.cat(tokens, dim=1)

    def _stream(self, x: torch.Tensor, module_index: int, group: int) -> torch.Tensor:
        x = self.projection_nets[module_index](self.module_list[module_index](x))
        return x + self.idx_emb[group].to(x.dtype)
