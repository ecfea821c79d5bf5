"""Sizes of the SAM3D sparse-structure stage: the ``sam3d`` preset (official sizes) and ``tiny``.

``tiny`` keeps the architecture (same modules, same parameter names, same token layout) with small
widths, depths and input sizes, and a coarser latent grid (8^3 instead of 16^3, one more VAE
up-sampling stage) so that the output is still the 64^3 occupancy grid. It trains on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError


# The condition embedder's modules in order (DINOv2 on images, DINOv2 on masks, PointPatchEmbed) and
# the inputs each embeds: (crop, full frame); position groups "cropped" (idx_emb 0) and "full" (1).
EMBEDDER_INPUTS = (("image", "rgb_image"), ("mask", "rgb_image_mask"), ("pointmap", "rgb_pointmap"))

# The released Dino wrappers resize every image and mask to this size (ss_generator.yaml's
# ``input_size``); the ViT's stored position embedding is for 518 px and is interpolated at run time.
RELEASED_DINO_INPUT_SIZE = 770


@dataclass
class ViTConfig:
    """DINOv2 ViT with registers (ViT-L/14 reg4 in the official model).

    ``img_size`` is the size the stored position embedding was made for (518 px: 37 x 37 patches,
    ``pos_embed`` (1, 1370, C)); ``input_size`` is what the wrapper resizes its input to (770 in the
    release: 55 x 55 patches, the position embedding interpolated as DINOv2 does, with its
    ``interpolate_antialias`` and ``interpolate_offset``; ``*_reg`` hub models: antialias, offset 0).
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    with_mask_token: bool = True  # DINOv2's mask_token (unused at inference, present in hub weights)
    input_size: int = RELEASED_DINO_INPUT_SIZE
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0

    @property
    def tokens(self) -> int:
        """Tokens per image after the wrapper: CLS + patches (registers dropped)."""
        return 1 + (self.input_size // self.patch_size) ** 2


@dataclass
class PointEmbedConfig:
    input_size: int = 256
    patch_size: int = 8
    embed_dim: int = 512
    num_heads: int = 16
    mlp_ratio: float = 2.0
    remap: str = "linear"  # "linear" or "exp" (the official remapper for camera-space points)

    @property
    def tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2


@dataclass
class FlowConfig:
    """MOT sparse-structure flow transformer."""

    model_channels: int = 1024
    num_blocks: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    latent_channels: int = 8
    resolution: int = 16  # latent grid side: tokens = resolution^3
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = False
    is_shortcut_model: bool = True
    use_checkpoint: bool = False  # gradient checkpointing per block
    # The release converts the blocks to fp16 (``use_fp16: true``): on CUDA, sampling runs them under
    # fp16 autocast; training uses bf16 autocast (no loss scaling needed; see README).
    use_fp16: bool = True


@dataclass
class VAEConfig:
    latent_channels: int = 8
    channels: list[int] = field(default_factory=lambda: [512, 128, 32])  # decoder order; encoder reversed
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2


@dataclass
class SamplerConfig:
    steps: int = 25
    rescale_t: float = 3.0
    cfg_strength: float = 7.0
    cfg_interval: tuple[float, float] = (0.0, 500.0)  # in model time units (t * 1000)
    time_scale: float = 1000.0
    # sampled reconstructions averaged per input (mean probability, seeds seed..seed+samples-1): an
    # estimate of the occupancy's probability under the model rather than one draw (ours, not Meta's)
    samples: int = 1


@dataclass
class TrainingObjectiveConfig:
    """Training-time randomness, as in the official code.

    ``cond_drop_prob``: ClassifierFreeGuidance's ``p_unconditional``, one coin flip per *batch* that
    zeroes every condition token of it. ``modality_dropout_prob`` with ``modality_dropout``: the
    EmbedderFuser's ``dropout_prob``/``drop_modalities_weight``, drawn per *sample*: with that
    probability one of the listed groups of streams (chosen by weight) is zeroed (released: the two
    pointmap streams, p = 0.1)."""

    logit_normal_mean: float = -1.0
    logit_normal_std: float = 1.0
    cond_drop_prob: float = 0.1
    modality_dropout_prob: float = 0.1
    modality_dropout: list = field(default_factory=lambda: [[["pointmap", "rgb_pointmap"], 1.0]])


@dataclass
class ModelConfig:
    name: str = "sam3d"
    image_vit: ViTConfig = field(default_factory=ViTConfig)
    mask_vit: ViTConfig = field(default_factory=ViTConfig)
    point: PointEmbedConfig = field(default_factory=PointEmbedConfig)
    cond_dim: int = 1024  # width of the condition tokens (max of the embedders' widths)
    projection_hidden_multiplier: float = 4.0
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    objective: TrainingObjectiveConfig = field(default_factory=TrainingObjectiveConfig)
    pose_convention: str = "ScaleShiftInvariant"  # ss_generator.yaml module.pose_target_convention

    @property
    def occupancy_resolution(self) -> int:
        return self.flow.resolution * 2 ** (len(self.vae.channels) - 1)

    @property
    def condition_tokens(self) -> int:
        """Condition tokens per sample: crop and full frame of each of the three embedders."""
        return 2 * (self.image_vit.tokens + self.mask_vit.tokens + self.point.tokens)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sam3d_preset() -> ModelConfig:
    return ModelConfig()


def tiny_preset() -> ModelConfig:
    vit = ViTConfig(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, num_register_tokens=4,
                    input_size=56)
    return ModelConfig(
        name="tiny",
        image_vit=vit,
        mask_vit=dataclasses.replace(vit),
        point=PointEmbedConfig(input_size=32, patch_size=8, embed_dim=32, num_heads=4),
        cond_dim=64,
        flow=FlowConfig(model_channels=64, num_blocks=2, num_heads=4, resolution=8),
        # the 64^3 levels dominate a CPU step: few channels there, no ResBlocks between up-samplings
        vae=VAEConfig(channels=[32, 16, 8, 8], num_res_blocks=0, num_res_blocks_middle=1),
        sampler=SamplerConfig(steps=8),
    )


def rehearsal_preset() -> ModelConfig:
    """The rehearsal release's sizes (``sam3d_med.rehearsal``): the release's architecture, small
    enough to pretrain and fine-tune on a CPU. As in the release, the Dino input (84 px) is above the
    size its position embedding is stored for (56 px): 770 / 518 is 1.49, 84 / 56 is 1.5."""
    vit = ViTConfig(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, num_register_tokens=4,
                    input_size=84)
    return ModelConfig(
        name="rehearsal",
        image_vit=vit,
        mask_vit=dataclasses.replace(vit),
        point=PointEmbedConfig(input_size=48, patch_size=8, embed_dim=64, num_heads=4),
        cond_dim=64,
        flow=FlowConfig(model_channels=96, num_blocks=3, num_heads=4, resolution=8),
        # the 64^3 levels dominate a CPU step (and decoder inversion): few channels there
        vae=VAEConfig(channels=[64, 32, 16, 8], num_res_blocks=0, num_res_blocks_middle=1),
    )


PRESETS = {"sam3d": sam3d_preset, "tiny": tiny_preset, "rehearsal": rehearsal_preset}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


