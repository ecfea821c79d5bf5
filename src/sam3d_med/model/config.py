"""Sizes of the SAM3D sparse-structure stage: the ``sam3d`` preset (official sizes) and ``tiny``.

``tiny`` keeps the architecture (same modules, same parameter names, same token layout) with small
widths, depths and input sizes, and a coarser latent grid (8^3 instead of 16^3, one more VAE
up-sampling stage) so that the output is still the 64^3 occupancy grid. It trains on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConfigError


@dataclass
class ViTConfig:
    """DINOv2 ViT with registers (ViT-L/14 reg4 at 518 px in the official model)."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    with_mask_token: bool = True  # DINOv2's mask_token (unused at inference, present in hub weights)


@dataclass
class PointEmbedConfig:
    input_size: int = 256
    patch_size: int = 8
    embed_dim: int = 512
    num_heads: int = 16
    mlp_ratio: float = 2.0
    remap: str = "linear"  # "linear" or "exp" (the official remapper for camera-space points)


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


@dataclass
class TrainingObjectiveConfig:
    logit_normal_mean: float = -1.0
    logit_normal_std: float = 1.0
    cond_drop_prob: float = 0.1


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

    @property
    def occupancy_resolution(self) -> int:
        return self.flow.resolution * 2 ** (len(self.vae.channels) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sam3d_preset() -> ModelConfig:
    return ModelConfig()


def tiny_preset() -> ModelConfig:
    vit = ViTConfig(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, num_register_tokens=4)
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


PRESETS = {"sam3d": sam3d_preset, "tiny": tiny_preset}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def _find(mapping, *keys):
    """First value found for any of ``keys`` anywhere in a nested YAML mapping (depth-first)."""
    if isinstance(mapping, dict):
        for key in keys:
            if key in mapping and not isinstance(mapping[key], (dict, list)):
                return mapping[key]
        for value in mapping.values():
            found = _find(value, *keys)
            if found is not None:
                return found
    elif isinstance(mapping, list):
        for value in mapping:
            found = _find(value, *keys)
            if found is not None:
                return found
    return None


def apply_official_yaml(config: ModelConfig, folder: str | Path) -> list[str]:
    """Update ``config`` from the official YAML files in ``folder`` when they are present.

    Reads the flow transformer's sizes from ``ss_generator.yaml`` and the sampler settings from
    ``pipeline.yaml`` (by key name, wherever they sit in the file). Returns what was changed, for
    the log. Keys that are absent leave the preset's value.
    """
    folder = Path(folder)
    changed = []

    def load(name):
        path = folder / name
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    generator = load("ss_generator.yaml")
    if generator is not None:
        for attr, keys in {"model_channels": ("model_channels",), "num_blocks": ("num_blocks",),
                           "num_heads": ("num_heads",), "mlp_ratio": ("mlp_ratio",),
                           "qk_rms_norm": ("qk_rms_norm",), "qk_rms_norm_cross": ("qk_rms_norm_cross",),
                           "latent_channels": ("in_channels",)}.items():
            value = _find(generator, *keys)
            if value is not None and value != getattr(config.flow, attr):
                setattr(config.flow, attr, type(getattr(config.flow, attr))(value))
                changed.append(f"flow.{attr}={value}")
    pipeline = load("pipeline.yaml")
    if pipeline is not None:
        for attr, key in {"steps": "ss_inference_steps", "rescale_t": "ss_rescale_t",
                          "cfg_strength": "ss_cfg_strength"}.items():
            value = _find(pipeline, key)
            if value is not None and value != getattr(config.sampler, attr):
                setattr(config.sampler, attr, type(getattr(config.sampler, attr))(value))
                changed.append(f"sampler.{attr}={value}")
        interval = pipeline.get("ss_cfg_interval") if isinstance(pipeline, dict) else None
        if isinstance(interval, list) and len(interval) == 2:
            config.sampler.cfg_interval = (float(interval[0]), float(interval[1]))
            changed.append(f"sampler.cfg_interval={interval}")
    return changed
