"""The MOT ("mixture of transformers") sparse-structure flow transformer, official parameter names.

Latents (``LATENT_SPECS``): ``shape`` (B, R^3, 8) on the R^3 latent grid (R = 16 officially), and
four pose latents of one token each. ``latent_mapping[name]`` projects each to the model width and
adds its position embedding ``pos_emb``: the fixed sinusoid over the grid for ``shape`` (a buffer),
a learned vector for each pose latent (a parameter, as the official ``LearntPositionEmbedder``). The four pose tokens are concatenated into one stream named
``6drotation_normalized`` (``POSE_STREAM``); so the blocks see two streams, ``shape`` (R^3 tokens)
and the pose stream (4 tokens), each with its own weights (ModuleDicts keyed by stream name):

- self-attention: ``shape`` attends to itself only; the pose stream attends to pose and (detached)
  shape tokens; per-head RMS norm of q and k;
- cross-attention of each stream to the condition tokens;
- MLP (GELU tanh); adaLN modulation (shift, scale, gate for attention and MLP) from the timestep
  embedding (+ shortcut ``d`` embedding), shared by both streams.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import FlowConfig

SHAPE = "shape"
POSE_STREAM = "6drotation_normalized"
# name -> (channels, tokens); the token count of "shape" is resolution^3
LATENT_SPECS = {SHAPE: (None, None), "6drotation_normalized": (6, 1), "translation": (3, 1),
                "scale": (3, 1), "translation_scale": (1, 1)}
POSE_MEMBERS = ("6drotation_normalized", "translation", "scale", "translation_scale")
STREAMS = (SHAPE, POSE_STREAM)


def layer_norm_float32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm`` applied in float32 whatever the dtype of ``x`` and of its own weights (bf16 frozen
    weights included), returned in the dtype of ``x``."""
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).type(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (stable under bf16/fp16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_float32(self, x)


def sinusoidal_embedding(positions: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, D) integer positions -> (N, channels): per coordinate [sin, cos] of positions x freqs."""
    n, d = positions.shape
    freq_dim = channels // d // 2
    freqs = 1.0 / (10000 ** (torch.arange(freq_dim, dtype=torch.float32) / freq_dim))
    angles = torch.outer(positions.reshape(-1).float(), freqs)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(n, -1)
    return F.pad(emb, (0, channels - emb.shape[1]))


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) model time (t * 1000) -> (B, hidden)."""
        half = self.frequency_size // 2
        freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.reshape(-1, 1).float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class Latent(nn.Module):
    """One latent's input/output projection and its position embedding ``pos_emb`` (tokens, width):
    a learned parameter when ``learned``, else a fixed buffer."""

    def __init__(self, channels: int, model_channels: int, pos_emb: torch.Tensor, learned: bool = False):
        super().__init__()
        self.input_layer = nn.Linear(channels, model_channels)
        self.out_layer = nn.Linear(model_channels, channels)
        if learned:
            self.pos_emb = nn.Parameter(pos_emb)
        else:
            self.register_buffer("pos_emb", pos_emb)
        for layer in (self.input_layer, self.out_layer):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_layer(x) + self.pos_emb[None].to(x.dtype)

    def to_output(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.layer_norm(h, h.shape[-1:]))


class MultiHeadRMSNorm(nn.Module):
    def __init__(self, head_dim: int, heads: int):
        super().__init__()
        self.scale = head_dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H, D)
        return (F.normalize(x, dim=-1) * self.gamma * self.scale).to(x.dtype)


def _sdpa(q, k, v):
    """(B, L, H, D) layout in and out."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class CrossAttention(nn.Module):
    def __init__(self, channels: int, ctx_channels: int, num_heads: int, qk_rms_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(ctx_channels, channels * 2)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(channels // num_heads, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q = self.to_q(x).reshape(B, L, self.num_heads, -1)
        k, v = self.to_kv(context).reshape(B, context.shape[1], 2, self.num_heads, -1).unbind(dim=2)
        if hasattr(self, "q_rms_norm"):
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        return self.to_out(_sdpa(q, k, v).reshape(B, L, C))


class MOTSelfAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int, qk_rms_norm: bool):
        super().__init__()
        if not qk_rms_norm:
            raise NotImplementedError("MOT self-attention without qk RMS norm (the official model uses it)")
        self.num_heads = num_heads
        head_dim = channels // num_heads
        self.to_qkv = nn.ModuleDict({s: nn.Linear(channels, channels * 3) for s in STREAMS})
        self.q_rms_norm = nn.ModuleDict({s: MultiHeadRMSNorm(head_dim, num_heads) for s in STREAMS})
        self.k_rms_norm = nn.ModuleDict({s: MultiHeadRMSNorm(head_dim, num_heads) for s in STREAMS})
        self.to_out = nn.ModuleDict({s: nn.Linear(channels, channels) for s in STREAMS})

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        q, k, v = {}, {}, {}
        for s in STREAMS:
            B, L, _ = x[s].shape
            q[s], k[s], v[s] = self.to_qkv[s](x[s]).reshape(B, L, 3, self.num_heads, -1).unbind(dim=2)
            q[s], k[s] = self.q_rms_norm[s](q[s]), self.k_rms_norm[s](k[s])
        out = {SHAPE: _sdpa(q[SHAPE], k[SHAPE], v[SHAPE])}
        # pose queries see pose and shape keys; shape keys are detached (pose does not train shape)
        out[POSE_STREAM] = _sdpa(q[POSE_STREAM], torch.cat([k[POSE_STREAM], k[SHAPE].detach()], dim=1),
                                 torch.cat([v[POSE_STREAM], v[SHAPE].detach()], dim=1))
        return {s: self.to_out[s](out[s].reshape(*x[s].shape)) for s in STREAMS}


class FeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, int(channels * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(channels * mlp_ratio), channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class MOTBlock(nn.Module):
    def __init__(self, channels: int, ctx_channels: int, cfg: FlowConfig):
        super().__init__()
        self.use_checkpoint = cfg.use_checkpoint
        self.norm1 = nn.ModuleDict({s: LayerNorm32(channels, elementwise_affine=False, eps=1e-6) for s in STREAMS})
        self.norm2 = nn.ModuleDict({s: LayerNorm32(channels, elementwise_affine=True, eps=1e-6) for s in STREAMS})
        self.norm3 = nn.ModuleDict({s: LayerNorm32(channels, elementwise_affine=False, eps=1e-6) for s in STREAMS})
        self.self_attn = MOTSelfAttention(channels, cfg.num_heads, cfg.qk_rms_norm)
        self.cross_attn = nn.ModuleDict(
            {s: CrossAttention(channels, ctx_channels, cfg.num_heads, cfg.qk_rms_norm_cross) for s in STREAMS})
        self.mlp = nn.ModuleDict({s: FeedForwardNet(channels, cfg.mlp_ratio) for s in STREAMS})
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def _forward(self, x, mod, context):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(mod).unsqueeze(1).chunk(6, dim=-1)
        h = {s: self.norm1[s](x[s]) * (1 + scale_msa) + shift_msa for s in STREAMS}
        h = self.self_attn(h)
        x = {s: x[s] + h[s] * gate_msa for s in STREAMS}
        x = {s: x[s] + self.cross_attn[s](self.norm2[s](x[s]), context) for s in STREAMS}
        h = {s: self.mlp[s](self.norm3[s](x[s]) * (1 + scale_mlp) + shift_mlp) for s in STREAMS}
        return {s: x[s] + h[s] * gate_mlp for s in STREAMS}

    def forward(self, x, mod, context):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, mod, context, use_reentrant=False)
        return self._forward(x, mod, context)


class SparseStructureFlow(nn.Module):
    """``reverse_fn.backbone`` of the official generator: latents dict -> velocity dict."""

    def __init__(self, cfg: FlowConfig, cond_channels: int):
        super().__init__()
        self.cfg = cfg
        C = cfg.model_channels
        r = cfg.resolution
        grid = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        mapping = {SHAPE: Latent(cfg.latent_channels, C, sinusoidal_embedding(grid, C))}
        for name in POSE_MEMBERS:
            channels, tokens = LATENT_SPECS[name]
            mapping[name] = Latent(channels, C, torch.randn(tokens, C), learned=True)
        self.latent_mapping = nn.ModuleDict(mapping)
        self.t_embedder = TimestepEmbedder(C)
        if cfg.is_shortcut_model:
            self.d_embedder = TimestepEmbedder(C)
        self.blocks = nn.ModuleList(MOTBlock(C, cond_channels, cfg) for _ in range(cfg.num_blocks))
        for block in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

    def latent_shapes(self) -> dict[str, tuple[int, int]]:
        """name -> (tokens, channels) of each latent."""
        return {name: tuple(m.pos_emb.shape[:1]) + (m.input_layer.in_features,) for name, m in self.latent_mapping.items()}

    def forward(self, latents: dict[str, torch.Tensor], t: torch.Tensor, cond: torch.Tensor,
                d: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """latents: name -> (B, tokens, channels); t, d: (B,) model time; cond: (B, T, cond_channels)."""
        emb = self.t_embedder(t)
        if d is not None and hasattr(self, "d_embedder"):
            emb = emb + self.d_embedder(d)
        h = {name: self.latent_mapping[name].to_input(latents[name]) for name in self.latent_mapping}
        x = {SHAPE: h[SHAPE], POSE_STREAM: torch.cat([h[name] for name in POSE_MEMBERS], dim=1)}
        for block in self.blocks:
            x = block(x, emb.to(x[SHAPE].dtype), cond.to(x[SHAPE].dtype))
        out = {SHAPE: x[SHAPE]}
        start = 0
        for name in POSE_MEMBERS:
            n = self.latent_mapping[name].pos_emb.shape[0]
            out[name] = x[POSE_STREAM][:, start:start + n]
            start += n
        return {name: self.latent_mapping[name].to_output(out[name]) for name in self.latent_mapping}
