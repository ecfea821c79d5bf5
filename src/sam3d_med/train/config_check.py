"""Checks of a training configuration that need no heavy import: run before torch is loaded, so a
mistyped value or a missing folder is one line within a second, not after seconds of imports."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, InputError

CHOICES = {"data.epoch": ("pairs", "slices"),
           "data.target_frame": ("object", "volume"), "training.gradient_checkpointing": ("auto", True, False),
           "latent_targets.init": ("generator", "zero"), "latent_targets.source": ("auto", "encoder", "inversion"),
           "data.occupancy": ("solid", "surface")}
POSITIVE_INTEGERS = ("training.epochs", "training.batch_size", "training.grad_accum_steps", "data.min_pixels",
                     "latent_targets.steps", "latent_targets.batch_size")
POSITIVE_NUMBERS = ("training.learning_rate",)


def check_training_config(cfg: DictConfig) -> None:
    """Raise ConfigError/InputError (one line naming the key) for what is wrong before training starts."""
    from ..preflight import device_option

    device_option(str(OmegaConf.select(cfg, "device")), "device=")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(str(a).lower() for a in allowed)}")
    for key in POSITIVE_INTEGERS:
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}={value!r}: must be a whole number >= 1")
    for key in POSITIVE_NUMBERS:
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"{key}={value!r}: must be a number > 0")
    if OmegaConf.select(cfg, "lora.enabled") and not OmegaConf.select(cfg, "training.train_base"):
        rank = OmegaConf.select(cfg, "lora.rank")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"lora.rank={rank!r}: must be a whole number >= 1")
    fraction = OmegaConf.select(cfg, "data.val_fraction")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise ConfigError(f"data.val_fraction={fraction!r}: must be in [0, 1)")
    resume = OmegaConf.select(cfg, "training.resume")
    if resume and not Path(resume).is_file():
        raise InputError(f"training.resume={resume}: no such checkpoint file")
    from ..data.manifest import load_manifest  # json only

    load_manifest(OmegaConf.select(cfg, "data.slice_cache_dir"))
    if OmegaConf.select(cfg, "model.checkpoint_dir"):
        from ..model.release_files import require_weights_folder

        require_weights_folder(OmegaConf.select(cfg, "model.checkpoint_dir"))
