"""DINOv2 vision transformer with register tokens, with DINOv2's parameter names.

Token layout after the blocks: [CLS, registers (R), patches (N)]; the condition embedder keeps
CLS + patches and drops the registers: 1 + 37*37 = 1370 tokens of 1024 for ViT-L/14 at its stored
518 px, 1 + 55*55 = 3026 at the released input size of 770 px (position embedding interpolated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.proj(h.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block (DINOv2/timm names); ``layer_scale`` adds ls1/ls2 (DINOv2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C), patches in row-major order


class DinoVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, cfg.embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, cfg.embed_dim))
        if cfg.with_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embedding for an (h, w) patch grid: the stored one, or its bicubic interpolation
        computed as DINOv2's ``interpolate_pos_encoding`` does (in float32; with ``interpolate_offset``
        > 0 by scale factor (n + offset) / M, else to the exact size; ``interpolate_antialias``)."""
        stored = self.pos_embed.shape[1] - 1
        grid = math.isqrt(stored)
        if (h, w) == (grid, grid):
            return self.pos_embed
        patch_pos = self.pos_embed[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        offset = self.cfg.interpolate_offset
        size = dict(scale_factor=((h + offset) / grid, (w + offset) / grid)) if offset else dict(size=(h, w))
        patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=self.cfg.interpolate_antialias, **size)
        if patch_pos.shape[-2:] != (h, w):
            raise ValueError(f"position embedding interpolated to {tuple(patch_pos.shape[-2:])}, expected {(h, w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([self.pos_embed[:, :1].float(), patch_pos], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1 + N, C): CLS + patch tokens after the last norm."""
        B, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self._pos_embed(H // self.cfg.patch_size, W // self.cfg.patch_size).to(x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return torch.cat([x[:, :1], x[:, 1 + self.cfg.num_register_tokens:]], dim=1)
