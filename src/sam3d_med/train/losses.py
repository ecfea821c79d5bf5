"""The fine-tuning objective.

For a batch of (slice, class) samples with ground-truth occupancy O (B,1,N,N,N), signed distance
D (mm) and input slice (axis a_b, index s_b):

    L = w_flow * L_flow + w_mask * L_mask + w_sdf * L_sdf + w_vae * L_vae

- L_flow: flow matching on the SS latents (``model.flow_matching.flow_matching_loss``): the mean
  over latents of mean((v_pred - (x1 - x0))^2), where x1 = (shape tokens of O: the SS encoder's mean,
  or without a released encoder the cached decoder-inversion latent (``train.latent_targets``);
  the identity pose in the release's normalised convention (``model.pose``)) and x0 ~ N(0, I), at
  t ~ logit-normal, the whole batch's condition dropped with p = 0.1 and the pointmap streams of a
  sample with p = 0.1 (the official CFG and modality dropout).
- L_mask: consistency at the input slice. The one-step data estimate x1_hat = x_t + (1 - t) v_pred
  is decoded to occupancy logits Z = decoder(x1_hat.shape); the reconstruction must reproduce the
  input mask: volume frame, L_mask = mean_b BCE(Z_b restricted to slice s_b along axis a_b, O_b on
  that slice); object frame, Z is sampled (trilinear) at the input slice's voxel centres mapped into
  the true object cube, x = (p - centre) / side, and compared with the slice's mask there.
- L_sdf: 3-D loss between Z and the ground truth (object frame: the structure's occupancy and
  signed distance at the cube's cells), weighted towards the surface, plus soft Dice
  (structures fill ~1-3 % of the volume; BCE alone is content with an empty prediction):
  L_sdf = sum_v w_v BCE(Z_v, O_v) / sum_v w_v + 1 - (2 sum sigma(Z) O + 1) / (sum sigma(Z) + sum O + 1),
  with w_v = 1 + exp(-|D_v| / tau), tau = ``sdf_tau_mm``.
- L_vae (only when the VAE itself trains, e.g. the tiny model from scratch): the same volume loss
  between decoder(z) and O for z = encoder(O), plus ``vae_latent_l2`` * mean(z^2), which keeps the
  latents (the flow's targets) near unit scale as the KL term of a VAE would.
The 3-D terms (L_mask, L_sdf, L_vae) decode full volumes, the dominant cost on a CPU; with
``decode_samples = k`` they use the first k samples of each (shuffled) batch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.object_frame import sample_cube
from ..data.frames import TargetFrame, target_frame
from ..data.occupancy import surface_shell
from ..model.flow_matching import flow_matching_loss
from ..model.flow_transformer import SHAPE
from ..model.pose import Pose
from ..model.sam3d import CONDITION_INPUTS as CONDITION_KEYS  # noqa: F401 (imported from here by the benchmarks)
from ..model.sam3d import condition_of
from ..model.sam3d import SparseStructureModel
from ..settings import LossWeights  # the config's loss group, checked as built




def surface_weighted_bce(logits: torch.Tensor, occupancy: torch.Tensor, sdf_mm: torch.Tensor, tau_mm: float) -> torch.Tensor:
    weight = 1.0 + torch.exp(-sdf_mm.abs() / tau_mm)
    bce = F.binary_cross_entropy_with_logits(logits.float(), occupancy.float(), reduction="none")
    return (weight * bce).sum() / weight.sum()


def soft_dice_loss(logits: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits.float()).flatten(1)
    o = occupancy.float().flatten(1)
    return (1 - (2 * (p * o).sum(1) + 1) / (p.sum(1) + o.sum(1) + 1)).mean()


def volume_loss(logits, occupancy, sdf_mm, tau_mm):
    return surface_weighted_bce(logits, occupancy, sdf_mm, tau_mm) + soft_dice_loss(logits, occupancy)


def slice_consistency_bce(logits: torch.Tensor, occupancy: torch.Tensor, axis: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mean BCE between each sample's logits and occupancy on its own input slice."""
    losses = []
    for b in range(logits.shape[0]):
        a, s = int(axis[b]), int(index[b])
        losses.append(F.binary_cross_entropy_with_logits(logits[b, 0].float().select(a, s), occupancy[b, 0].float().select(a, s)))
    return torch.stack(losses).mean()


def slice_consistency_in_cube(cube_logits: torch.Tensor, slice_points_mm: torch.Tensor, slice_mask: torch.Tensor,
                              centre_mm: torch.Tensor, side_mm: torch.Tensor) -> torch.Tensor:
    """Mean BCE between cube logits (B, 1, n, n, n) sampled at the input slice's voxel centres
    (B, 3, H, W) world mm, mapped into the true cube, and the slice's mask (B, 1, H, W)."""
    points = slice_points_mm.flatten(2).transpose(1, 2).float()  # (B, HW, 3)
    valid = torch.isfinite(points).all(-1)
    cube_points = (torch.nan_to_num(points) - centre_mm[:, None].float()) / side_mm.float().view(-1, 1, 1)
    sampled = sample_cube(cube_logits.float(), cube_points)
    bce = F.binary_cross_entropy_with_logits(sampled, slice_mask.flatten(1).float(), reduction="none")
    return (bce * valid).sum() / valid.sum().clamp(min=1)


def shell_section(cube_shell: torch.Tensor, slice_points_mm: torch.Tensor, centre_mm: torch.Tensor,
                  side_mm: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: which of the input slice's voxel centres (B, 3, H, W) world mm fall in the shell
    of the true cube (B, 1, n, n, n): trilinear samples of the shell's cells >= 0.5 (beyond the cube: 0)."""
    B, _, H, W = slice_points_mm.shape
    points = slice_points_mm.flatten(2).transpose(1, 2).float()
    cube_points = (torch.nan_to_num(points) - centre_mm[:, None].float()) / side_mm.float().view(-1, 1, 1)
    sampled = sample_cube(cube_shell.float(), cube_points, outside=0.0)
    return (sampled >= 0.5).float().reshape(B, 1, H, W)


def object_pose_target(batch: dict[str, torch.Tensor]) -> Pose:
    """The true object cube's pose in the sample's normalised pointmap frame (``data.object_frame``):
    rotation I, translation (centre - shift) / scale, scale side / scale on every axis."""
    scale = batch["pointmap_scale"].float().reshape(-1, 1)
    translation = (batch["cube_centre_mm"].float() - batch["pointmap_shift"].float()) / scale
    B = translation.shape[0]
    return Pose(rotation=torch.eye(3, device=translation.device).expand(B, 3, 3),
                translation=translation, scale=(batch["cube_side_mm"].float().reshape(-1, 1) / scale).expand(B, 3))


class TrainingObjective(torch.nn.Module):
    """Wraps the model so that one ``forward(batch)`` returns the loss terms (one module for DDP)."""

    def __init__(self, model: SparseStructureModel, weights: LossWeights, frame: str | TargetFrame = "object"):
        super().__init__()
        self.model = model
        self.weights = weights
        self.frame = target_frame(frame)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        model, w = self.model, self.weights
        occupancy, sdf = self.frame.loss_targets(batch)  # the cube's (placed by its pose), or the scan grid's
        pose = object_pose_target(batch) if self.frame.placed_by_pose else None
        surface = getattr(model, "occupancy", "solid") == "surface"
        if surface:  # the decoder makes the structure's shell (data.occupancy=surface)
            occupancy = surface_shell(occupancy > 0.5).to(occupancy.dtype)
        frozen = not any(p.requires_grad for p in model.condition_embedder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # frozen: no activations kept
            cond = model.condition_embedder(**condition_of(batch))
        targets = model.latent_targets(occupancy, shape_latents=batch.get("shape_latent"), pose=pose)
        flow = flow_matching_loss(model.generator, targets, cond, model.cfg.objective,
                                  time_scale=model.cfg.sampler.time_scale, generator=generator)
        terms = {"flow": flow.loss}
        k = w.decode_samples or occupancy.shape[0]
        occupancy, sdf = occupancy[:k], sdf[:k]
        if w.w_mask_loss or w.w_sdf_loss:
            logits = model.decode_shape(flow.x1_estimate[SHAPE][:k])
            if w.w_mask_loss and self.frame.placed_by_pose:
                # the input slice's section of what the decoder makes: the mask, or where a shell cuts the slice
                slice_target = batch["slice_mask"][:k] if not surface else shell_section(
                    occupancy, batch["slice_points"][:k], batch["cube_centre_mm"][:k], batch["cube_side_mm"][:k])
                terms["mask"] = slice_consistency_in_cube(logits, batch["slice_points"][:k], slice_target,
                                                          batch["cube_centre_mm"][:k], batch["cube_side_mm"][:k])
            elif w.w_mask_loss:
                terms["mask"] = slice_consistency_bce(logits, occupancy, batch["axis"][:k], batch["slice_idx"][:k])
            if w.w_sdf_loss:
                terms["sdf"] = volume_loss(logits, occupancy, sdf, w.sdf_tau_mm)
        if w.w_vae_loss:
            latent = model.encoder(occupancy)
            terms["vae"] = volume_loss(model.decoder(latent), occupancy, sdf, w.sdf_tau_mm) \
                + w.vae_latent_l2 * latent.float().square().mean()
        scale = {"flow": w.w_flow, "mask": w.w_mask_loss, "sdf": w.w_sdf_loss, "vae": w.w_vae_loss}
        terms["total"] = sum(scale[k] * v for k, v in terms.items())
        return terms


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of boolean volumes (B, ...); 1 when both are empty."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1e-8), torch.ones_like(total))

