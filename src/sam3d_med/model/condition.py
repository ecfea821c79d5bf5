"""Condition embedder of the sparse-structure stage (the official ``EmbedderFuser`` layout).

Streams, in this order (token counts for the official sizes):
  module 0, DINOv2 on images:  ``image`` (crop) 1370, ``rgb_image`` (full frame) 1370
  module 1, DINOv2 on masks:   ``mask`` (crop) 1370, ``rgb_image_mask`` (full) 1370
  module 2, PointPatchEmbed:   ``pointmap`` (crop) 1024, ``rgb_pointmap`` (full) 1024
Each stream goes through its module's projection net (LayerNorm + SwiGLU, no bias) to ``cond_dim``
and gets ``idx_emb[0]`` (crop) or ``idx_emb[1]`` (full); the streams are concatenated: 7528 tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, PointEmbedConfig, ViTConfig
from .vit import Block, DinoVisionTransformer

STREAMS = (  # (module index, input name, position group)
    (0, "image", 0), (0, "rgb_image", 1),
    (1, "mask", 0), (1, "rgb_image_mask", 1),
    (2, "pointmap", 0), (2, "rgb_pointmap", 1),
)
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
        self.input_size = cfg.img_size
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
        self.module_list = nn.ModuleList([DinoEmbedder(cfg.image_vit), DinoEmbedder(cfg.mask_vit),
                                          PointPatchEmbed(cfg.point)])
        self.embed_dim = cfg.cond_dim
        hidden = int(cfg.projection_hidden_multiplier * cfg.cond_dim)
        self.projection_nets = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(m.embed_dim), SwiGLU(m.embed_dim, hidden, cfg.cond_dim)) for m in self.module_list)
        n_groups = 1 + max(group for _, _, group in STREAMS)
        self.idx_emb = nn.Parameter(torch.randn(n_groups + 1, cfg.cond_dim) / math.sqrt(cfg.cond_dim))

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Inputs by name (see ``STREAMS``): images (B,3,H,W) and masks (B,1,H,W) in [0,1], pointmaps
        (B,3,H,W) normalised (NaN = no point). Returns condition tokens (B, T, cond_dim)."""
        missing = [name for _, name, _ in STREAMS if name not in inputs]
        if missing:
            raise ValueError(f"condition inputs missing: {missing}")
        tokens = []
        for module_index, name, group in STREAMS:
            x = self.projection_nets[module_index](self.module_list[module_index](inputs[name]))
            tokens.append(x + self.idx_emb[group].to(x.dtype))
        return torch.cat(tokens, dim=1)
