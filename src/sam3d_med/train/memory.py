"""How much GPU memory a training step needs, estimated on the meta device (no memory, no weights).

peak(batch) = static + batch x per_sample, where
- static: the frozen weights in bf16, the trained parameters in float32 with their gradients and
  AdamW's two moments;
- per_sample: the bytes autograd saves for the backward pass of one sample (bf16 under autocast),
  with attention counted as the GPU's memory-efficient kernels keep it (q, k, v, output, a float32
  log-sum-exp per query; never the queries x keys matrix); with gradient checkpointing, what is
  saved outside the blocks plus the per-block inputs, plus the working set of the block being
  recomputed during its backward: ``TRANSIENT_BLOCKS`` blocks' worth of saved activations (its
  recomputed activations, the gradients flowing through them, autocast's bf16 copies).

Checked against one H100 (benchmarks/RESULTS.md, release sizes, Dino at 770 px, crop 256, LoRA rank
8): without checkpointing 13.5 / 23.9 / 44.6 GiB estimated vs 12.4 / 21.5 / 39.7 measured at batch
1 / 2 / 4; with checkpointing 5.5 / 7.7 / 12.2 estimated vs 5.6 / 8.0 / 12.7 measured. Counting
only one recomputed block (1.5 GiB per sample instead of the measured 2.4) under-estimated the
checkpointed runs by up to 28%; the working set of the recomputed block is what the saved-tensor
count cannot see, and 3 blocks' worth is what the measurement shows (the one figure fitted to it).
``SAFETY`` on every decision covers allocator fragmentation and kernels' workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.input_slices import EXTRA_PREFIX, MAX_SLICES, STREAMS_OF_EXTRA_SLICES
from ..model.sam3d import CONDITION_INPUTS, SparseStructureModel

GiB = 2**30
SAFETY = 1.35  # estimate x SAFETY must fit (fragmentation, workspaces, other processes' contexts)
TRANSIENT_BLOCKS = 3  # a checkpointed block's backward working set, in blocks' saved activations (see above)


@dataclass
class MemoryEstimate:
    static_bytes: float
    per_sample_bytes: float  # without gradient checkpointing
    per_sample_checkpointed_bytes: float

    def peak(self, batch: int, checkpointing: bool) -> float:
        per = self.per_sample_checkpointed_bytes if checkpointing else self.per_sample_bytes
        return self.static_bytes + batch * per

    def largest_batch(self, budget_bytes: float, checkpointing: bool = True) -> int:
        per = self.per_sample_checkpointed_bytes if checkpointing else self.per_sample_bytes
        return max(0, int((budget_bytes / SAFETY - self.static_bytes) // per))


class _MemoryEfficientAttention(torch.autograd.Function):
    """Attention saving for backward what the memory-efficient kernels save (see module doc)."""

    @staticmethod
    def forward(ctx, q, k, v):
        with torch.no_grad():
            out = _SDPA(q, k, v)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
        return out


_SDPA = torch.nn.functional.scaled_dot_product_attention


def saved_bytes(objective, batch: dict) -> float:
    """Bytes autograd saves during ``objective(batch)`` (parameters excluded; at most 2 bytes per
    element: bf16 under autocast), with memory-efficient attention."""
    saved = [0]

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            saved[0] += t.numel() * min(t.element_size(), 2)
        return t

    torch.nn.functional.scaled_dot_product_attention = lambda q, k, v, **kw: _MemoryEfficientAttention.apply(q, k, v)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            objective(batch)
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA
    return float(saved[0])


def static_bytes(model: SparseStructureModel) -> float:
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in trained)
    return frozen * 2.0 + sum(p.numel() for p in trained) * 4.0 * 4  # bf16 frozen; fp32 weight, grad, 2 moments


def synthetic_batch(model: SparseStructureModel, batch: int, crop: int, device="cpu", num_slices: int = 1,
                    extra_slice_streams: str = "all") -> dict[str, torch.Tensor]:
    """A training batch of the right keys and shapes for both target frames (random crops of
    ``crop`` px, a sphere as the structure, random shape latents): for estimates and benchmarks.
    ``num_slices`` > 1: every sample with that many input slices (``extra_slice_streams``' streams)."""
    g = torch.Generator().manual_seed(0)
    cfg = model.cfg
    side = cfg.occupancy_resolution
    out = {k: torch.rand(batch, 1 if "mask" in k else 3, crop, crop, generator=g) for k in CONDITION_INPUTS}
    for k in ("mask", "rgb_image_mask"):
        out[k] = (out[k] > 0.5).float()
    if num_slices > 1:
        for k in STREAMS_OF_EXTRA_SLICES[extra_slice_streams]:
            out[EXTRA_PREFIX + k] = out[k][:, None].expand(batch, MAX_SLICES - 1, *out[k].shape[1:]).clone()
        out[EXTRA_PREFIX + "present"] = (torch.arange(MAX_SLICES - 1) < num_slices - 1).float().expand(batch, -1).clone()
    grid = torch.stack(torch.meshgrid(*[torch.arange(side, dtype=torch.float32)] * 3, indexing="ij"))
    sdf = (grid - side / 2).norm(dim=0) * 3.0 - 30.0  # a sphere of 10 voxels, mm
    volume = dict(sdf=sdf.expand(batch, 1, side, side, side).clone(),
                  occupancy=(sdf < 0).float().expand(batch, 1, side, side, side).clone())
    # the object frame's targets: the same sphere in its cube, the slice through its centre
    plane = torch.meshgrid(*[torch.linspace(-96, 96, side)] * 2, indexing="ij")
    out.update(volume, cube_sdf=volume["sdf"], cube_occupancy=volume["occupancy"],
               cube_centre_mm=torch.zeros(batch, 3), cube_side_mm=torch.full((batch,), 66.0),
               pointmap_shift=torch.zeros(batch, 3), pointmap_scale=torch.full((batch,), 90.0),
               slice_points=torch.stack(plane + (torch.zeros(side, side),)).expand(batch, 3, side, side).clone(),
               slice_mask=(sdf[..., side // 2] < 0).float().expand(batch, 1, side, side).clone(),
               axis=torch.full((batch,), 2), slice_idx=torch.full((batch,), side // 2),
               shape_latent=torch.randn(batch, cfg.flow.latent_channels, *(cfg.flow.resolution,) * 3, generator=g))
    # the input slice's axis and index, and which further slices are there, are read as numbers
    # (indexing, how many slices to embed), so on the meta device they stay real
    keep = ("axis", "slice_idx", EXTRA_PREFIX + "present") if str(device) == "meta" else ()
    return {k: v if k in keep else v.to(device) for k, v in out.items()}


def estimate_training_memory(meta_model: SparseStructureModel, objective_factory, batch_factory) -> MemoryEstimate:
    """``meta_model``: the model as it will train (adapters applied), on the meta device;
    ``objective_factory(model)`` -> the training objective; ``batch_factory(batch_size)`` -> a batch
    of meta tensors."""
    blocks = meta_model.generator.blocks
    previous = [b.use_checkpoint for b in blocks]
    try:
        for b in blocks:
            b.use_checkpoint = False
        full = saved_bytes(objective_factory(meta_model), batch_factory(1))
        for b in blocks:
            b.use_checkpoint = True
        checkpointed = saved_bytes(objective_factory(meta_model), batch_factory(1))
    finally:
        for b, use in zip(blocks, previous):
            b.use_checkpoint = use
    one_block = (full - checkpointed) / max(1, len(blocks))
    # with few blocks (small presets) the working-set term would exceed what checkpointing saves
    return MemoryEstimate(static_bytes(meta_model), full, min(full, checkpointed + TRANSIENT_BLOCKS * one_block))
