"""Pose latents in the convention of the release ("ScaleShiftInvariant", normalised), both ways.

The pose stream's four latents (one token each) are what the official pose decoder reads
(``sam3d_objects/pipeline/inference_utils.py`` ``pose_decoder`` with ``ScaleShiftInvariant``
``to_instance_pose(normalize=False)``):

- ``6drotation_normalized`` (6): standardised 6-D rotation. r6 = x * ROTATION_6D_STD + ROTATION_6D_MEAN;
  a1 = r6[0:3], a2 = r6[3:6]; b1 = a1 / |a1|, b2 = the part of a2 orthogonal to b1, normalised,
  b3 = b1 x b2; the official matrix [b1 b2 b3] (columns) acts on *row* vectors (pytorch3d):
  p_scene = (s * p_object) @ [b1 b2 b3] + t. In column-vector form, as used here,
  p_scene = M diag(s) p_object + t with M = [b1 b2 b3]^T (rows b1, b2, b3): the 6-D vector holds the
  first two *rows* of M.
- ``scale`` (3): log of the per-axis scale s (the decoder takes exp; its final output is the mean
  of the three, expanded).
- ``translation`` (3): t itself (ScaleShiftInvariant does not standardise it when decoding).
- ``translation_scale`` (1): log of a translation scale that the decoder exponentiates but this
  convention does not use; targets set it to log 1 = 0.
The pose is relative to the normalised pointmap ("scene") frame: metric = scene * scene_scale +
scene_shift, for positions and (times scene_scale) for scales.

So the identity (M = I, s = 1, t = 0) is x_6d = ((1,0,0,0,1,0) - MEAN) / STD, x_scale = 0: the raw
identity (1,0,0,0,1,0) with scale 1 would decode to a 52.6 degree rotation and a scale of e.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .flow_transformer import POSE_STREAM as ROTATION

SUPPORTED_CONVENTIONS = ("ScaleShiftInvariant",)
# Statistics of the release's 6-D rotations (inference_utils.py ROTATION_6D_MEAN / ROTATION_6D_STD).
ROTATION_6D_MEAN = (-0.06366084883674913, 0.008438224692279752, 0.00017084786438302483,
                    0.0007126610473540038, -0.0030916726538816417, 0.5166093753457688)
ROTATION_6D_STD = (0.6656971967514863, 0.6787012271867754, 0.30345010594844524,
                   0.4394504420678794, 0.39817973931717104, 0.6176286868761914)


@dataclass
class Pose:
    """Object cube -> scene: p_scene = rotation @ (scale * p_object) + translation (column vectors).

    rotation (B, 3, 3), translation (B, 3), scale (B, 3); float tensors."""

    rotation: torch.Tensor
    translation: torch.Tensor
    scale: torch.Tensor

    def in_metric_frame(self, scene_scale: torch.Tensor | float = 1.0,
                        scene_shift: torch.Tensor | float = 0.0) -> "Pose":
        """The same pose after the pointmap normalisation is undone (metric = scene * scale + shift)."""
        return Pose(self.rotation, self.translation * scene_scale + scene_shift, self.scale * scene_scale)


def check_convention(name: str) -> None:
    if name not in SUPPORTED_CONVENTIONS:
        raise NotImplementedError(f"pose convention {name!r} (implemented: {', '.join(SUPPORTED_CONVENTIONS)})")


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = dict(device=like.device, dtype=torch.float32)
    return torch.tensor(ROTATION_6D_MEAN, **kwargs), torch.tensor(ROTATION_6D_STD, **kwargs)


def encode_pose(pose: Pose) -> dict[str, torch.Tensor]:
    """Pose -> the four latents, each (B, 1, C), float32."""
    mean, std = _stats(pose.rotation)
    rows = pose.rotation.float()
    raw = torch.cat([rows[:, 0], rows[:, 1]], dim=-1)  # first two rows of M = first two columns of M^T
    latents = {ROTATION: (raw - mean) / std, "translation": pose.translation.float(),
               "scale": torch.log(pose.scale.float()),
               "translation_scale": torch.zeros(rows.shape[0], 1, device=rows.device)}
    return {k: v[:, None, :] for k, v in latents.items()}


def decode_pose(latents: dict[str, torch.Tensor]) -> Pose:
    """The four latents (B, 1, C) -> Pose, exactly as the official decoder (before the scene frame)."""
    x = latents[ROTATION][:, 0].float()
    mean, std = _stats(x)
    r6 = x * std + mean
    b1 = F.normalize(r6[:, 0:3], dim=-1)
    a2 = r6[:, 3:6]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    rotation = torch.stack([b1, b2, b3], dim=1)  # rows: M = (official column matrix)^T
    return Pose(rotation=rotation, translation=latents["translation"][:, 0].float(),
                scale=torch.exp(latents["scale"][:, 0].float()))


def identity_pose(batch: int, device=None) -> Pose:
    return Pose(rotation=torch.eye(3, device=device).expand(batch, 3, 3), translation=torch.zeros(batch, 3, device=device),
                scale=torch.ones(batch, 3, device=device))


def rotation_angle_deg(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation matrices -> (B,) rotation angle in degrees."""
    cos = ((rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))
