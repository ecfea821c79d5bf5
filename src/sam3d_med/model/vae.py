"""Sparse-structure VAE (official names): occupancy (B,1,64,64,64) <-> latent (B,8,16,16,16).

Decoder: input conv -> middle ResBlocks -> per level ResBlocks + (conv + 3-D pixel shuffle x2)
up-sampling -> LayerNorm(channels), SiLU, conv -> occupancy logits. Encoder mirrors it with strided
convolutions and outputs mean and log-variance (the latent is the mean unless sampled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .flow_transformer import layer_norm_float32


class ChannelLayerNorm32(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, D, H, W), computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_float32(self, x.movedim(1, -1)).movedim(-1, 1)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C*f^3, D, H, W) -> (B, C, D*f, H*f, W*f); channel order (C, fd, fh, fw)."""
    B, C, D, H, W = x.shape
    c = C // factor ** 3
    x = x.reshape(B, c, factor, factor, factor, D, H, W).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, c, D * factor, H * factor, W * factor)


class ResBlock3d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _levels(channels: list[int], num_res_blocks: int, transition) -> nn.ModuleList:
    """Per level: ``num_res_blocks`` ResBlocks, then ``transition(c, next_c)`` between levels."""
    blocks = []
    for i, c in enumerate(channels):
        blocks += [ResBlock3d(c) for _ in range(num_res_blocks)]
        if i < len(channels) - 1:
            blocks.append(transition(c, channels[i + 1]))
    return nn.ModuleList(blocks)


class SparseStructureDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig, out_channels: int = 1):
        super().__init__()
        ch = cfg.channels
        self.input_layer = nn.Conv3d(cfg.latent_channels, ch[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(ch[0]) for _ in range(cfg.num_res_blocks_middle)])
        self.blocks = _levels(ch, cfg.num_res_blocks, UpsampleBlock3d)
        self.out_layer = nn.Sequential(ChannelLayerNorm32(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], out_channels, 3, padding=1))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 8, R, R, R) -> occupancy logits (B, 1, R*2^(L-1), ...)."""
        h = self.middle_block(self.input_layer(latent))
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h)


class SparseStructureEncoder(nn.Module):
    def __init__(self, cfg: VAEConfig, in_channels: int = 1):
        super().__init__()
        ch = list(reversed(cfg.channels))
        self.input_layer = nn.Conv3d(in_channels, ch[0], 3, padding=1)
        self.blocks = _levels(ch, cfg.num_res_blocks, DownsampleBlock3d)
        self.middle_block = nn.Sequential(*[ResBlock3d(ch[-1]) for _ in range(cfg.num_res_blocks_middle)])
        self.out_layer = nn.Sequential(ChannelLayerNorm32(ch[-1]), nn.SiLU(),
                                       nn.Conv3d(ch[-1], cfg.latent_channels * 2, 3, padding=1))

    def forward(self, occupancy: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, N, N, N) occupancy in [0, 1] -> latent (B, 8, N/2^(L-1), ...) (mean unless sampled)."""
        h = self.input_layer(occupancy.float())
        for block in self.blocks:
            h = block(h)
        mean, logvar = self.out_layer(self.middle_block(h)).chunk(2, dim=1)
        if not sample_posterior:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise


def latent_cube_to_tokens(cube: torch.Tensor) -> torch.Tensor:
    """(B, C, R, R, R) -> (B, R^3, C), tokens in [i, j, k] row-major order (the shape grid order)."""
    return cube.flatten(2).transpose(1, 2)


def tokens_to_latent_cube(tokens: torch.Tensor) -> torch.Tensor:
    """(B, R^3, C) -> (B, C, R, R, R); inverse of ``latent_cube_to_tokens``."""
    B, T, C = tokens.shape
    r = round(T ** (1 / 3))
    if r ** 3 != T:
        raise ValueError(f"{T} tokens do not form a cube")
    return tokens.transpose(1, 2).reshape(B, C, r, r, r)
